"""3D propagation: a mask on one slice → the structure through the volume, slice by slice.

Uses only the Runtime protocol (local or remote alike). From the seed slice it walks up and
then down the axis. Each slice is prompted with boxes around the previous slice's mask
(padded by 10 %, 30 % and 60 % of its size: structures grow between thick slices) and the
mask the decoder scores best is taken; the next slice's embedding is prefetched while this
one decodes, so the walk costs about one encoder pass per slice. A direction stops at the
volume's edge or when the structure ends (the rejected slice is not written):

* ``empty``: the new mask is empty;
* ``growth``: its area jumped past ``max_growth`` × the previous slice's (a leak into a neighbour);
* ``seed_growth``: its area passed ``max_seed_growth`` × the seed's (a slow leak, slice by slice);
* ``drift``: its overlap (IoU) with the previous slice's mask fell below ``min_overlap``;
* ``low_score``: the decoder's predicted IoU fell below ``min_score``;
* ``intensity``: its mean intensity left the seed's by more than ``intensity_tolerance`` × the
  seed's standard deviation (a different tissue);
* ``inconsistent``: prompting the previous slice back from the new mask does not give the
  previous mask again (IoU < ``min_back_overlap``);
* ``unsure``: the slice's confidence (below) fell under ``min_confidence``.

Beyond the outermost of several drawn seeds (``beyond_seeds``, seeded.py's walks) the user has shown
where the structure lies, so the walk is leaving it: two more stops, checked after the above.

* ``taper``: a structure ends by shrinking. The new mask must (nearly) nest inside the previous one,
  its voxels outside the previous mask at most ``taper_tolerance`` × the previous area, and its area
  at most (1 + ``taper_tolerance``) × the outermost seed's. A cross-section that grows or slides
  sideways past the seeds is a neighbour. Listed as unsure: if the seeds did not reach the
  structure's ends, it may go on there;
* ``seed_intensity``: the median intensity under the new mask left the seeds' central range (their
  voxels' ``seed_percentiles``). User-drawn seeds say what the structure looks like; a median is not
  moved by the few partial-volume voxels of a tip, and a range, unlike mean ± k std, is not widened
  by a heterogeneous lesion's spread (brain MR).

Confidence per slice, in [0, 1] (``slice_confidence``): a weighted geometric mean of four agreements,

    score  = clip((decoder IoU − 0.5) / 0.4, 0, 1)
    back   = IoU(previous mask, previous slice re-segmented from the new mask's box)
    area   = clip(1 − |ln(area / previous area)| / ln(max_growth), 0, 1)
    inten  = clip(1 − |mean − seed mean| / (intensity_tolerance × seed std), 0, 1)
    confidence = (score · back · area · inten^½) ** (1/3.5)

so any one signal at zero makes the slice unsure. Intensity weighs half: it has its own hard stop,
and partial volume at a structure's tip moves the mean (a synthetic ellipsoid's last good slice:
z = −2.2) without the mask being wrong. Kept slices under ``unsure_below`` are flagged
(``SliceStep.unsure``, ``PropagationResult.unsure``) for the user to check; a slice under
``min_confidence`` ends the walk. Thresholds were tuned on brain1, lung2 and breast1 only
(scripts/volume_eval.py prints the numbers; brain2 and lung1 are held out). Cancel (a threading.Event)
raises Cancelled and returns nothing partial; ``progress(done, estimate)`` is called after every slice.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import Cancelled, InputError
from ..protocol import Runtime
from ..schemas import Box, Prompt, SegmentRequest, SliceRef


@dataclass(frozen=True)
class PropagationSettings:
    paddings: tuple[float, ...] = (0.1, 0.3, 0.6)  # candidate box paddings (fraction of the mask's size)
    # tuned on brain1, lung2, breast1 (walks with the rules off; scripts/volume_eval.py measures the
    # result, brain2 and lung1 held out); the margins are thin: read them as tuned, not validated
    max_growth: float = 3.0
    max_seed_growth: float = 3.0  # legit: ≤ 1.3 from a largest cross-section; leaks: 4–60
    min_overlap: float = 0.15  # legit ≥ 0.24; a jump to another structure: 0.03
    min_score: float = 0.745  # inside a lesion ≥ 0.765; the first slice past its end: 0.57–0.79
    intensity_tolerance: float = 2.5
    min_back_overlap: float = 0.5
    min_confidence: float = 0.65  # below: stop ("unsure"); lung2's lesion slices ≥ 0.78, brain1's first
    #   slice past the lesion 0.62, the ellipsoid's tip 0.70, breast1's 10: 0.60
    unsure_below: float = 0.85  # below: kept but flagged for review
    # beyond the outermost seed (seeded walks only); brain1, lung2, breast1 walked past seeds at the
    # quartiles and at the ends (scripts/volume_eval.py --protocols past): voxels outside the previous
    # mask / its area on the structure ≤ 0.08 (≤ 0.12 from one box), past its end where a mask grows
    # or slides ≥ 0.26 (wrong ones from one box ≥ 0.24); area / the outer seed's on the structure ≤ 0.77
    taper_tolerance: float = 0.2
    # seeds' voxel percentiles a walked slice's median must stay within: the structure's slices past
    # the seeds 757 in brain1's 663–1054, 13–44 in lung2's −60–58
    seed_percentiles: tuple[float, float] | None = (10.0, 90.0)
    max_slices: int | None = None  # per direction; None = to the edge
    threshold: float | None = None  # mask threshold (None: the preset's)

    @classmethod
    def unguarded(cls, **overrides) -> "PropagationSettings":
        """Every stop rule off (speed benches walk a fixed number of slices); same candidates and decodes."""
        off = dict(max_growth=math.inf, max_seed_growth=math.inf, min_overlap=0.0, min_score=0.0,
                   intensity_tolerance=math.inf, min_back_overlap=0.0, min_confidence=0.0,
                   taper_tolerance=math.inf, seed_percentiles=None)
        return cls(**(off | overrides))


@dataclass(frozen=True)
class SliceStep:
    index: int
    voxels: int
    score: float
    overlap: float  # IoU with the previous slice's mask
    kept: bool
    reason: str = ""  # why a direction stopped here ("" for kept slices)
    confidence: float = 1.0  # slice_confidence(), in [0, 1]
    unsure: bool = False  # confidence < settings.unsure_below
    back_overlap: float = 1.0  # the consistency IoU that went into the confidence
    seed_ratio: float = 1.0  # area / the seed's area
    intensity_z: float = 0.0  # (mean − seed mean) / seed std


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

    @property
    def confidence(self) -> dict[int, float]:
        """Per written slice (the seed: 1.0)."""
        return {self.seed_index: 1.0} | {s.index: s.confidence for s in self.steps if s.kept}

    @property
    def unsure(self) -> tuple[int, ...]:
        """Slices to check: kept ones flagged unsure, where a walk stopped for want of confidence, and
        every ``taper`` stop, however confident (the structure may go on there; nothing was written:
        seeds that did not reach a structure's widest part stop there too)."""
        soft = {"unsure", "low_score", "inconsistent", "drift"}
        return tuple(sorted({s.index for s in self.steps
                             if (s.unsure and (s.kept or s.reason in soft)) or s.reason == "taper"}))


@dataclass(frozen=True)
class BeyondSeeds:
    """A walk past the outermost of the drawn seeds: ``low``–``high``, the seeds' central intensity range
    (``PropagationSettings.seed_percentiles`` of their voxels; None: not checked)."""

    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, values: np.ndarray, settings: PropagationSettings) -> "BeyondSeeds":
        """From the intensities under all seeds."""
        if settings.seed_percentiles is None or values.size == 0:
            return cls()
        low, high = np.percentile(values.astype(np.float64), settings.seed_percentiles)
        return cls(float(low), float(high))


def slice_mask(mask: np.ndarray, shape: tuple[int, ...], axis: int, what: str) -> np.ndarray:
    """``mask`` as a boolean slice of a ``shape`` volume along ``axis``, or InputError naming ``what``."""
    mask = np.asarray(mask) != 0
    plane = tuple(s for i, s in enumerate(shape) if i != axis)
    if mask.shape != plane:
        raise InputError(f"{what} has shape {mask.shape}, but slices along axis {axis} are {plane}")
    return mask


def slice_confidence(score: float, back: float, ratio: float, z: float, s: PropagationSettings) -> float:
    """The documented per-slice confidence (module docstring), in [0, 1]."""
    parts = (
        min(1.0, max(0.0, (score - 0.5) / 0.4)),
        min(1.0, max(0.0, back)),
        min(1.0, max(0.0, 1 - abs(math.log(max(ratio, 1e-6))) / math.log(max(s.max_growth, 1.01)))),
        min(1.0, max(0.0, 1 - abs(z) / s.intensity_tolerance)) if math.isfinite(s.intensity_tolerance) else 1.0,
    )
    weights = (1.0, 1.0, 1.0, 0.5)
    return float(np.prod([p ** w for p, w in zip(parts, weights)]) ** (1 / sum(weights)))


def propagate(runtime: Runtime, volume: np.ndarray, *, axis: int, seed_index: int, seed_mask: np.ndarray,
              modality: str = "auto", settings: PropagationSettings = PropagationSettings(),
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None, directions: tuple[str, ...] = ("up", "down"),
              reference: tuple[float, float] | None = None,
              beyond_seeds: BeyondSeeds | None = None) -> PropagationResult:
    """Propagate ``seed_mask`` (a 2D mask on slice ``seed_index`` along ``axis``) through ``volume`` (z, y, x).

    ``directions``: which of "up" (increasing index) and "down" to walk. ``reference``: the
    structure's (mean, std) intensity, when known from more than the seed slice (seeded walks).
    ``beyond_seeds``: the seed is the outermost of several drawn ones, so the ``taper`` and
    ``seed_intensity`` stops apply (one box: the structure may grow either way, they do not)."""
    t0 = time.perf_counter()
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"propagation needs a 3D (z, y, x) volume; got shape {volume.shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2; got {axis}")
    n = volume.shape[axis]
    if not 0 <= seed_index < n:
        raise InputError(f"seed slice {seed_index} is out of range: axis {axis} has {n} slices (0–{n - 1})")
    seed = slice_mask(seed_mask, volume.shape, axis, "seed mask")
    if not seed.any():
        raise InputError(f"the seed mask on slice {seed_index} is empty: segment or paint the structure first")
    unknown = set(directions) - {"up", "down"}
    if unknown or not directions:
        raise InputError(f"directions must be 'up' and/or 'down'; got {directions}")
    key = runtime.set_image(volume, modality=modality)
    slices = np.moveaxis(volume, axis, 0)
    if reference is None:
        values = slices[seed_index][seed].astype(np.float64)
        reference = (float(values.mean()), float(values.std()))
    reference = (reference[0], reference[1] + 1e-6)
    out = np.zeros(volume.shape, np.uint8)
    np.moveaxis(out, axis, 0)[seed_index] = seed
    steps: list[SliceStep] = []
    stopped: dict[str, str] = {}
    estimate = max(1, int(np.ceil(n / 2)))  # refined as directions end
    done = 0
    for direction, step in (("up", 1), ("down", -1)):
        if direction not in directions:
            continue
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
            limit = min(settings.max_growth * previous.sum(), settings.max_seed_growth * seed.sum())
            mask, score = _best_candidate(runtime, key, SliceRef(axis, index), previous, settings, limit)
            s = _judge(runtime, key, SliceRef(axis, index), step, mask, score, previous, seed, slices[index],
                       reference, settings, beyond_seeds)
            steps.append(s)
            done += 1
            if progress is not None:
                progress(done, max(estimate, done + 1))
            if not s.kept:
                stopped[direction] = s.reason
                break
            np.moveaxis(out, axis, 0)[index] = mask
            previous, index, walked = mask, index + step, walked + 1
        estimate = done + max(1, seed_index if direction == "up" else 0)
    if cancel is not None and cancel.is_set():
        raise Cancelled("propagation cancelled: nothing was written")
    if progress is not None:
        progress(done, done)
    return PropagationResult(out, axis, seed_index, tuple(steps), stopped, time.perf_counter() - t0)


def _judge(runtime: Runtime, key: str, ref: SliceRef, step: int, mask: np.ndarray, score: float,
           previous: np.ndarray, seed: np.ndarray, plane: np.ndarray, reference: tuple[float, float],
           s: PropagationSettings, beyond_seeds: BeyondSeeds | None = None) -> SliceStep:
    """The new slice's features, confidence and verdict ("" = keep)."""
    area, before = int(mask.sum()), int(previous.sum())
    overlap = _iou(mask, previous)
    if area == 0:
        return SliceStep(ref.index, 0, score, overlap, False, "empty", 0.0, True, 0.0, 0.0, 0.0)
    back = 1.0
    if s.min_back_overlap > 0 or s.min_confidence > 0 or s.unsure_below > 0:
        back = _iou(_segment(runtime, key, SliceRef(ref.axis, ref.index - step), _box(mask, s.paddings[0]), s)[0],
                    previous)
    mean, std = reference
    z = (float(plane[mask].astype(np.float64).mean()) - mean) / std
    seed_ratio = area / int(seed.sum())
    confidence = slice_confidence(score, back, area / before, z, s)
    if area > s.max_growth * before:
        reason = "growth"
    elif seed_ratio > s.max_seed_growth:
        reason = "seed_growth"
    elif overlap < s.min_overlap:
        reason = "drift"
    elif score < s.min_score:
        reason = "low_score"
    elif abs(z) > s.intensity_tolerance:
        reason = "intensity"
    elif back < s.min_back_overlap:
        reason = "inconsistent"
    elif confidence < s.min_confidence:
        reason = "unsure"
    elif beyond_seeds is not None:
        reason = _past_the_seeds(mask, previous, seed, plane, beyond_seeds, s)
    else:
        reason = ""
    return SliceStep(ref.index, area, score, overlap, reason == "", reason, confidence,
                     confidence < s.unsure_below, back, seed_ratio, z)


def _past_the_seeds(mask: np.ndarray, previous: np.ndarray, seed: np.ndarray, plane: np.ndarray,
                    look: BeyondSeeds, s: PropagationSettings) -> str:
    """The stops that hold only past the outermost seed, where the structure ends ("" = keep)."""
    before = int(previous.sum())
    if np.logical_and(mask, ~previous).sum() > s.taper_tolerance * before or \
            mask.sum() > (1 + s.taper_tolerance) * seed.sum():
        return "taper"
    if look.low is not None and look.high is not None and not look.low <= float(np.median(plane[mask])) <= look.high:
        return "seed_intensity"
    return ""


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
                    settings: PropagationSettings, limit: float = math.inf) -> tuple[np.ndarray, float]:
    """The candidate box (one per padding) whose mask the decoder scores best, among those no larger
    than ``limit`` voxels when there are any (a wide box that leaks must not outvote a tight one)."""
    candidates = [_segment(runtime, key, ref, _box(previous, pad), settings) for pad in settings.paddings]
    fitting = [c for c in candidates if 0 < c[0].sum() <= limit]
    return max(fitting or candidates, key=lambda candidate: candidate[1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
