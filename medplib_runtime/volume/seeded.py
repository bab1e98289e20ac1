"""Seeded 3D segmentation: masks drawn on a few slices → the structure through the volume.

Slices of ``seeds`` that hold ``label`` are seeds and are kept exactly as drawn. Each gap between
two seed slices is filled by shape-based interpolation (interpolation.py) and then refined by the
model: the interpolated mask's box prompts the slice, and the model's mask is kept only when it
agrees with the interpolation (IoU ≥ ``min_agreement``), otherwise the interpolation stays and the
slice's confidence drops under the "unsure" bar. Beyond the outermost seeds the guarded walk of
propagation.py goes on (up from the top seed, down from the bottom one), with the intensity
reference taken from all seeds and the stops that hold only past the outermost seed (``taper``: the
structure ends by shrinking; ``seed_intensity``: it looks like the seeds, their 10–90 % range).
``correct_and_continue`` takes a corrected slice and redoes only what depends on it.

Confidence per slice: seeds 1.0; a refined gap slice sqrt(score_term × agreement) with
score_term = clip((decoder IoU − 0.5) / 0.4, 0, 1); a gap slice that kept the interpolation
0.5 × agreement / min_agreement (< 0.5, so always unsure); walked slices as propagation.py says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..protocol import Runtime
from ..schemas import SliceRef
from .interpolation import interpolate_between
from .propagation import (BeyondSeeds, Cancelled, PropagationSettings, _box, _iou, _segment, propagate,
                          slice_mask)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SeededSettings:
    walk: PropagationSettings = PropagationSettings()  # beyond the outermost seeds
    refine: bool = True  # False: gaps keep the pure interpolation (no model calls)
    # the interpolated mask's box, padded: 0.3 won on every gap slice of brain1 and lung2 (2D Dice
    # 0.86–0.97 vs 0.63–0.96 for the interpolation itself) and the decoder scored it best there
    refine_paddings: tuple[float, ...] = (0.15, 0.3)
    # IoU(model, interpolation) to keep the model's mask: lung2's gaps 0.85–0.93; brain1's, between
    # an atypically small seed and a large one, 0.51 (model 2D Dice 0.86, interpolation 0.63)
    min_agreement: float = 0.45


@dataclass(frozen=True)
class SeededResult:
    """``mask`` ``uint8`` 0/1 of the volume's shape. Per written slice: ``source`` ('seed',
    'interpolated' or 'propagated') and ``confidence`` in [0, 1]; ``refined``: gap slices where the
    model's mask replaced the interpolation; ``unsure``: slices to check (low confidence, or where
    a walk stopped for want of it); ``stopped``: per walked direction ("up" = increasing index)."""

    mask: np.ndarray
    axis: int
    label: int
    source: dict[int, str]
    confidence: dict[int, float]
    unsure: tuple[int, ...] = ()
    refined: tuple[int, ...] = ()
    stopped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def slices(self) -> tuple[int, ...]:
        return tuple(sorted(self.source))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted(i for i, s in self.source.items() if s == "seed"))


def seed_slices(seeds: np.ndarray, shape: tuple[int, ...], label: int | None, axis: int) -> tuple[int, dict]:
    """``(label, {slice index: 2D bool mask})`` of the seeds, or InputError with one line."""
    seeds = np.asarray(seeds)
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2; got {axis}")
    if seeds.shape != tuple(shape):
        raise InputError(f"the seeds have shape {seeds.shape} but the image {tuple(shape)}: draw them on this image")
    if seeds.dtype.kind == "f" and not np.all(np.isfinite(seeds) & (seeds == np.round(seeds))):
        raise InputError("the seeds are not a label volume (non-integer values)")
    ids = [int(i) for i in np.unique(seeds) if i != 0]
    if not ids:
        raise InputError("the seeds are empty: paint the structure on at least one slice")
    if label is None:
        if len(ids) > 1:
            raise InputError(f"the seeds hold labels {', '.join(map(str, ids))}: pick one (--label N)")
        label = ids[0]
    if label not in ids:
        raise InputError(f"label {label} is not in the seeds; they hold label(s) {', '.join(map(str, ids))}")
    per_slice = np.moveaxis(seeds == label, axis, 0)
    return label, {int(i): per_slice[i].copy() for i in np.nonzero(per_slice.any(axis=(1, 2)))[0]}


def propagate_from_seeds(runtime: Runtime, volume: np.ndarray, seeds: np.ndarray, *, label: int | None = None,
                         axis: int = 0, settings: SeededSettings = SeededSettings(), modality: str = "auto",
                         progress: Progress | None = None, cancel: threading.Event | None = None) -> SeededResult:
    """The structure ``label`` of ``seeds`` (a label volume of ``volume``'s shape) through ``volume``."""
    t0 = time.perf_counter()
    volume = _check_volume(volume)
    label, drawn = seed_slices(seeds, volume.shape, label, axis)
    job = _Job(runtime, volume, axis, label, settings, modality, progress, cancel)
    for index, mask in drawn.items():
        job.put(index, mask, "seed", 1.0)
    order = sorted(drawn)
    job.total = sum(b - a - 1 for a, b in zip(order, order[1:])) + volume.shape[axis] // 2
    for a, b in zip(order, order[1:]):
        job.fill_gap(a, b)
    job.walk(order[-1], "up")
    job.walk(order[0], "down")
    return job.result(time.perf_counter() - t0)


def correct_and_continue(runtime: Runtime, volume: np.ndarray, previous: SeededResult, index: int,
                         mask: np.ndarray, *, settings: SeededSettings = SeededSettings(), modality: str = "auto",
                         progress: Progress | None = None, cancel: threading.Event | None = None) -> SeededResult:
    """``previous`` with slice ``index`` replaced by ``mask`` (drawn: it becomes a seed), and only
    what depends on it redone: beyond the seeds, the walk from ``index`` outwards (an empty ``mask``
    ends the structure there); between seeds, the two gaps next to ``index``."""
    t0 = time.perf_counter()
    volume = _check_volume(volume)
    axis = previous.axis
    n = volume.shape[axis]
    if previous.mask.shape != volume.shape:
        raise InputError(f"the previous result has shape {previous.mask.shape} but the image {volume.shape}")
    if not 0 <= index < n:
        raise InputError(f"slice {index} is out of range: axis {axis} has {n} slices (0–{n - 1})")
    mask = slice_mask(mask, volume.shape, axis, "the corrected mask")
    job = _Job(runtime, volume, axis, previous.label, settings, modality, progress, cancel)
    job.load(previous)
    seeds = previous.seeds
    lo, hi = seeds[0], seeds[-1]
    beyond = "up" if index > hi else "down" if index < lo else ""
    if not mask.any() and not beyond:
        raise InputError(f"slice {index} lies between seeds {lo} and {hi}: an empty correction there would split "
                         "the structure; paint the slice instead")
    if beyond:  # everything past the corrected slice came from the old walk: drop it
        job.clear(range(index, n) if beyond == "up" else range(0, index + 1))
        job.stopped.pop(beyond, None)
    if not mask.any():
        job.stopped[beyond] = "corrected"
        return job.result(time.perf_counter() - t0)
    job.put(index, mask, "seed", 1.0)
    if beyond:
        job.total = n // 2
        written = [i for i in job.source if (i < index if beyond == "up" else i > index)]
        near = max(written) if beyond == "up" else min(written)
        if abs(index - near) > 1:  # painted past where the old walk stopped: bridge the gap
            job.fill_gap(min(near, index), max(near, index))
        job.walk(index, beyond)
    else:
        below = max([s for s in seeds if s < index], default=None)
        above = min([s for s in seeds if s > index], default=None)
        job.total = (index - below - 1 if below is not None else 0) + (above - index - 1 if above is not None else 0)
        if below is not None:
            job.fill_gap(below, index)
        if above is not None:
            job.fill_gap(index, above)
    return job.result(time.perf_counter() - t0)


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"seeded propagation needs a 3D (z, y, x) volume; got shape {volume.shape}")
    return volume


class _Job:
    """The result under construction (one call's mutable state; results themselves are frozen)."""

    def __init__(self, runtime, volume, axis, label, settings, modality, progress, cancel) -> None:
        self.runtime, self.volume, self.axis, self.label = runtime, volume, axis, label
        self.settings, self.modality, self.progress, self.cancel = settings, modality, progress, cancel
        self.mask = np.zeros(volume.shape, np.uint8)
        self.slices = np.moveaxis(self.mask, axis, 0)  # a view: writes land in self.mask
        self.source: dict[int, str] = {}
        self.confidence: dict[int, float] = {}
        self.unsure: set[int] = set()
        self.refined: set[int] = set()
        self.stopped: dict[str, str] = {}
        self.done, self.total = 0, 1
        self._key: str | None = None

    def load(self, previous: SeededResult) -> None:
        self.mask[...] = previous.mask
        self.source, self.confidence = dict(previous.source), dict(previous.confidence)
        self.unsure, self.refined = set(previous.unsure), set(previous.refined)
        self.stopped = dict(previous.stopped)

    def put(self, index: int, mask: np.ndarray, source: str, confidence: float, unsure: bool = False) -> None:
        self.slices[index] = mask
        self.source[index], self.confidence[index] = source, float(confidence)
        self.unsure.discard(index)
        self.refined.discard(index)
        if unsure:
            self.unsure.add(index)

    def clear(self, indices) -> None:
        for i in indices:
            self.slices[i] = 0
            self.source.pop(i, None), self.confidence.pop(i, None)
            self.unsure.discard(i), self.refined.discard(i)

    def tick(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("propagation cancelled: nothing was written")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done + 1))

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = self.runtime.set_image(self.volume, modality=self.modality)
        return self._key

    def seed_values(self) -> np.ndarray:
        """The intensities under all seeds."""
        drawn = [i for i, s in self.source.items() if s == "seed"]
        return np.moveaxis(self.volume, self.axis, 0)[drawn][self.slices[drawn] != 0].astype(np.float64)

    def reference(self) -> tuple[float, float]:
        """Mean and std intensity under all seeds (a steadier reference than one slice)."""
        values = self.seed_values()
        return float(values.mean()), float(values.std())

    def fill_gap(self, a: int, b: int) -> None:
        """Slices strictly between seeds ``a`` < ``b``: interpolated, then refined by the model."""
        s = self.settings
        guesses = interpolate_between(self.slices[a] != 0, self.slices[b] != 0, b - a - 1)
        for offset, guess in enumerate(guesses, start=1):
            i = a + offset
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("propagation cancelled: nothing was written")
            if not s.refine or not guess.any():
                self.put(i, guess, "interpolated", 0.5, unsure=True)
                self.tick()
                continue
            if i + 1 < b:  # embed the next gap slice while this one decodes
                self.runtime.prefetch(self.key, SliceRef(self.axis, i + 1), radius=0)
            model, score = max((_segment(self.runtime, self.key, SliceRef(self.axis, i), _box(guess, pad), s.walk)
                                for pad in s.refine_paddings), key=lambda c: c[1])
            agreement = _iou(model, guess)
            if agreement >= s.min_agreement:
                confidence = float(np.sqrt(min(1.0, max(0.0, (score - 0.5) / 0.4)) * agreement))
                self.put(i, model, "interpolated", confidence, confidence < s.walk.unsure_below)
                self.refined.add(i)
            else:  # the model disagrees with the drawn shapes: trust the drawing, flag the slice
                self.put(i, guess, "interpolated", 0.5 * agreement / s.min_agreement, unsure=True)
            self.tick()

    def walk(self, start: int, direction: str) -> None:
        """The guarded walk from seed ``start`` outwards, in one direction."""
        base = self.done

        def relay(done: int, estimate: int) -> None:
            self.done = base + done
            if self.progress is not None:
                self.progress(self.done, max(self.total, base + estimate))

        walked = propagate(self.runtime, self.volume, axis=self.axis, seed_index=start,
                           seed_mask=self.slices[start] != 0, modality=self.modality, settings=self.settings.walk,
                           progress=relay, cancel=self.cancel, directions=(direction,), reference=self.reference(),
                           beyond_seeds=BeyondSeeds.of(self.seed_values(), self.settings.walk))
        unsure = set(walked.unsure)
        for step in walked.steps:
            if step.kept:
                self.put(step.index, np.take(walked.mask, step.index, axis=self.axis), "propagated",
                         step.confidence, step.index in unsure)
        self.unsure |= {i for i in unsure if i not in self.source}  # where it stopped, unsure
        self.stopped[direction] = walked.stopped[direction]

    def result(self, seconds: float) -> SeededResult:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("propagation cancelled: nothing was written")
        if self.progress is not None:
            self.progress(self.done, self.done)
        return SeededResult(self.mask, self.axis, self.label, dict(sorted(self.source.items())),
                            dict(sorted(self.confidence.items())), tuple(sorted(self.unsure)),
                            tuple(sorted(self.refined)), dict(self.stopped), seconds)
