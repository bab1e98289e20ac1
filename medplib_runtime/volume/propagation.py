"""3D propagation: a mask on one slice → the structure through the volume, slice by slice.

Uses only the Runtime protocol (local or remote alike). From the seed slice it walks up and
then down the axis. Each slice is prompted with boxes around the previous slice's mask
(padded by 10 %, 30 % and 60 % of its size: structures grow between thick slices) and the
mask the decoder scores best is taken; the next slice's embedding is prefetched while this
one decodes, so the walk costs about one encoder pass per slice. A direction stops at the
volume's edge or when the structure ends:

* ``empty``: the new mask is empty;
* ``growth``: its area jumped past ``max_growth`` × the previous slice's (a leak into a neighbour);
* ``drift``: its overlap (IoU) with the previous slice's mask fell below ``min_overlap``;
* ``low_score``: the decoder's predicted IoU fell below ``min_score``;
* ``intensity``: its mean intensity left the seed's by more than ``intensity_tolerance`` × the
  seed's standard deviation (a different tissue);
* ``inconsistent``: prompting the previous slice back from the new mask does not give the
  previous mask again (IoU < ``min_back_overlap``).

The thresholds were chosen on the three pyradiomics cases (docs/volumes.md has the numbers).
The rejected slice is not written. Cancel (a threading.Event) raises Cancelled and returns
nothing partial; ``progress(done, estimate)`` is called after every slice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, MedplibError
from ..protocol import Runtime
from ..schemas import Box, Prompt, SegmentRequest, SliceRef


class Cancelled(MedplibError):
    """The user cancelled; nothing was returned or written."""


@dataclass(frozen=True)
class PropagationSettings:
    paddings: tuple[float, ...] = (0.1, 0.3, 0.6)  # candidate box paddings (fraction of the mask's size)
    max_growth: float = 3.0
    min_overlap: float = 0.0
    min_score: float = 0.0
    intensity_tolerance: float = 2.5
    min_back_overlap: float = 0.5
    max_slices: int | None = None  # per direction; None = to the edge
    threshold: float | None = None  # mask threshold (None: the preset's)


@dataclass(frozen=True)
class SliceStep:
    index: int
    voxels: int
    score: float
    overlap: float  # IoU with the previous slice's mask
    kept: bool
    reason: str = ""  # why a direction stopped here ("" for kept slices)


@dataclass(frozen=True)
class PropagationResult:
    """``mask`` ``uint8`` 0/1 of the volume's shape; ``steps`` in walking order; ``stopped`` per
    direction ("up" = increasing index): the reason, or "edge"."""

    mask: np.ndarray
    axis: int
    seed_index: int
    steps: tuple[SliceStep, ...]
    stopped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def slices(self) -> tuple[int, ...]:
        return tuple(sorted({self.seed_index} | {s.index for s in self.steps if s.kept}))


def propagate(runtime: Runtime, volume: np.ndarray, *, axis: int, seed_index: int, seed_mask: np.ndarray,
              modality: str = "auto", settings: PropagationSettings = PropagationSettings(),
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None) -> PropagationResult:
    """Propagate ``seed_mask`` (a 2D mask on slice ``seed_index`` along ``axis``) through ``volume`` (z, y, x)."""
    t0 = time.perf_counter()
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"propagation needs a 3D (z, y, x) volume; got shape {volume.shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2; got {axis}")
    n = volume.shape[axis]
    if not 0 <= seed_index < n:
        raise InputError(f"seed slice {seed_index} is out of range: axis {axis} has {n} slices (0–{n - 1})")
    seed = np.asarray(seed_mask) != 0
    plane = tuple(s for i, s in enumerate(volume.shape) if i != axis)
    if seed.shape != plane:
        raise InputError(f"seed mask has shape {seed.shape}, but slices along axis {axis} are {plane}")
    if not seed.any():
        raise InputError(f"the seed mask on slice {seed_index} is empty: segment or paint the structure first")
    key = runtime.set_image(volume, modality=modality)
    seed_values = np.moveaxis(volume, axis, 0)[seed_index][seed].astype(np.float64)
    reference = (float(seed_values.mean()), float(seed_values.std()) + 1e-6)
    out = np.zeros(volume.shape, np.uint8)
    np.moveaxis(out, axis, 0)[seed_index] = seed
    steps: list[SliceStep] = []
    stopped: dict[str, str] = {}
    estimate = max(1, int(np.ceil(n / 2)))  # refined as directions end
    done = 0
    for direction, step in (("up", 1), ("down", -1)):
        previous, index, walked = seed, seed_index + step, 0
        while True:
            if not 0 <= index < n:
                stopped[direction] = "edge"
                break
            if settings.max_slices is not None and walked >= settings.max_slices:
                stopped[direction] = "max_slices"
                break
            if cancel is not None and cancel.is_set():
                raise Cancelled("propagation cancelled: nothing was written")
            if 0 <= index + step < n:  # embed the next slice while this one decodes
                runtime.prefetch(key, SliceRef(axis, index + step), radius=0)
            mask, score = _best_candidate(runtime, key, SliceRef(axis, index), previous, settings)
            plane = np.moveaxis(volume, axis, 0)[index]
            verdict, overlap = _verdict(mask, previous, score, plane, reference, settings)
            if not verdict and settings.min_back_overlap > 0:
                back = _segment(runtime, key, SliceRef(axis, index - step), _box(mask, settings.paddings[0]),
                                settings)[0]
                if _iou(back, previous) < settings.min_back_overlap:
                    verdict = "inconsistent"
            steps.append(SliceStep(index, int(mask.sum()), float(score), overlap, verdict == "", verdict))
            done += 1
            if progress is not None:
                progress(done, max(estimate, done + 1))
            if verdict:
                stopped[direction] = verdict
                break
            np.moveaxis(out, axis, 0)[index] = mask
            previous, index, walked = mask, index + step, walked + 1
        estimate = done + max(1, seed_index if direction == "up" else 0)
    if cancel is not None and cancel.is_set():
        raise Cancelled("propagation cancelled: nothing was written")
    if progress is not None:
        progress(done, done)
    return PropagationResult(out, axis, seed_index, tuple(steps), stopped, time.perf_counter() - t0)


def _box(mask: np.ndarray, pad: float) -> Box:
    """The mask's bounding box, padded by ``pad`` × its size (at least 2 voxels), inside the slice."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    pr = max(2.0, pad * (rows.max() - rows.min() + 1))
    pc = max(2.0, pad * (cols.max() - cols.min() + 1))
    return Box(max(0.0, rows.min() - pr), max(0.0, cols.min() - pc), min(h - 1.0, rows.max() + pr),
               min(w - 1.0, cols.max() + pc))


def _segment(runtime: Runtime, key: str, ref: SliceRef, box: Box, settings: PropagationSettings):
    result = runtime.segment(SegmentRequest(key, ref, Prompt(box=box), threshold=settings.threshold))
    return result.mask != 0, float(result.score)


def _best_candidate(runtime: Runtime, key: str, ref: SliceRef, previous: np.ndarray,
                    settings: PropagationSettings) -> tuple[np.ndarray, float]:
    """The candidate box (one per padding) whose mask the decoder scores best."""
    return max((_segment(runtime, key, ref, _box(previous, pad), settings) for pad in settings.paddings),
               key=lambda candidate: candidate[1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _verdict(mask: np.ndarray, previous: np.ndarray, score: float, plane: np.ndarray,
             reference: tuple[float, float], s: PropagationSettings) -> tuple[str, float]:
    area, before = int(mask.sum()), int(previous.sum())
    overlap = _iou(mask, previous)
    if area == 0:
        return "empty", overlap
    if area > s.max_growth * before:
        return "growth", overlap
    if overlap < s.min_overlap:
        return "drift", overlap
    if score < s.min_score:
        return "low_score", overlap
    mean, std = reference
    if abs(float(plane[mask].astype(np.float64).mean()) - mean) > s.intensity_tolerance * std:
        return "intensity", overlap
    return "", overlap
