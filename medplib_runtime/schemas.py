"""Typed requests and responses at the runtime boundary (shared by local, remote, CLI, plugin).

Axis conventions (docs/design.md, "Conventions"): volumes are ``(z, y, x)`` numpy arrays as SimpleITK returns
them; a 2D position on a slice is ``(row, col)`` in voxel indices of that slice.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import InputError

Modality = Literal["CT", "MR", "auto", "other"]


@dataclass(frozen=True)
class Box:
    """Axis-aligned box on a slice, inclusive voxel indices ``(r0, c0, r1, c1)``."""

    r0: float
    c0: float
    r1: float
    c1: float

    def normalized(self) -> "Box":
        return Box(min(self.r0, self.r1), min(self.c0, self.c1), max(self.r0, self.r1), max(self.c0, self.c1))


@dataclass(frozen=True)
class Point:
    """A click at ``(row, col)``; ``label`` 1 = foreground, 0 = background."""

    row: float
    col: float
    label: int = 1


@dataclass(frozen=True)
class Prompt:
    """A visual prompt on one slice: a box, points, a free-form mask, or box + points.

    ``mask`` is a 2D bool/uint8 array of the slice's shape (a scribble or a painted region).
    """

    box: Box | None = None
    points: tuple[Point, ...] = ()
    mask: np.ndarray | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        if self.mask is not None:
            return "mask"
        if self.box is not None:
            return "box+points" if self.points else "box"
        return "points" if self.points else "none"

    def is_empty(self) -> bool:
        return self.kind == "none"


@dataclass(frozen=True)
class SliceRef:
    """Which 2D slice of a volume: index along ``axis`` (0 = z, 1 = y, 2 = x)."""

    axis: int = 0
    index: int = 0


@dataclass(frozen=True)
class SegmentRequest:
    """Direct prompt → mask (no LLM). ``image_key`` comes from ``Runtime.set_image``."""

    image_key: str
    slice: SliceRef
    prompt: Prompt
    threshold: float | None = None  # logit-probability threshold; None = preset default


@dataclass(frozen=True)
class Turn:
    """One finished chat turn, for history."""

    question: str
    answer: str


@dataclass(frozen=True)
class AskRequest:
    """Question about a slice, optionally about a region on it, with earlier turns."""

    image_key: str
    slice: SliceRef
    question: str
    region: Prompt | None = None
    history: tuple[Turn, ...] = ()
    max_new_tokens: int = 64
    threshold: float | None = None


@dataclass(frozen=True)
class SegmentResult:
    """A mask at the slice's full resolution (``uint8`` 0/1, shape = slice shape)."""

    mask: np.ndarray
    score: float  # the decoder's predicted IoU
    prompt_kind: str
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingStats:
    """Top-1 expert choice per generated/prefilled token, averaged over layers.

    ``expert_names[i]`` names expert i (0 = grounding, 1 = vision-language, as in MedPLIB).
    ``per_token[t][i]`` is the fraction of layers that sent token t to expert i.
    ``dropped`` counts token-layer pairs dropped by the capacity limit.
    """

    expert_names: tuple[str, ...]
    tokens: tuple[str, ...]
    per_token: tuple[tuple[float, ...], ...]
    dropped: int = 0

    def overall(self) -> tuple[float, ...]:
        if not self.per_token:
            return tuple(0.0 for _ in self.expert_names)
        n = len(self.per_token)
        return tuple(sum(row[i] for row in self.per_token) / n for i in range(len(self.expert_names)))


@dataclass(frozen=True)
class AskResult:
    """The answer text, one mask per ``<SEG>`` emitted (in order), and expert routing."""

    text: str
    masks: tuple[np.ndarray, ...]
    routing: RoutingStats | None
    untrained_parts: tuple[str, ...] = ()  # non-empty → the answer is not meaningful yet
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the runtime did that the user did not ask for (e.g. a region not read)
    confidence: float | None = None  # grounding confidence of the least sure mask (None: no mask was asked for)
    abstained: bool = False  # a grounding answer withheld its mask(s): not confident enough (text says so)


@dataclass(frozen=True)
class PartInfo:
    name: str
    source: str  # where its weights come from
    trained: bool


@dataclass(frozen=True)
class RuntimeInfo:
    preset: str
    device: str
    parts: tuple[PartInfo, ...]
    versions: dict[str, str]
    transport: str = "local"

    def untrained(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts if not p.trained)


def validate_prompt(prompt: Prompt, slice_shape: tuple[int, int]) -> None:
    """Raise InputError (one line) if ``prompt`` is empty, degenerate or outside the slice."""
    rows, cols = slice_shape
    if prompt.is_empty():
        raise InputError("empty prompt: give a box, at least one point, or a region mask")
    if prompt.mask is not None:
        mask = np.asarray(prompt.mask)
        if mask.shape != (rows, cols):
            raise InputError(f"region mask has shape {mask.shape}, but the slice is {(rows, cols)}")
        if not mask.any():
            raise InputError("region mask is empty: paint at least one voxel")
    if prompt.box is not None:
        b = prompt.box.normalized()
        for name, v in (("r0", b.r0), ("c0", b.c0), ("r1", b.r1), ("c1", b.c1)):
            if not np.isfinite(v):
                raise InputError(f"box coordinate {name} is not a finite number")
        if b.r1 - b.r0 < 1 or b.c1 - b.c0 < 1:
            raise InputError(f"box ({b.r0:g},{b.c0:g},{b.r1:g},{b.c1:g}) is degenerate: it needs height and width ≥ 1 voxel")
        if b.r0 < 0 or b.c0 < 0 or b.r1 > rows - 1 or b.c1 > cols - 1:
            raise InputError(f"box ({b.r0:g},{b.c0:g},{b.r1:g},{b.c1:g}) lies outside the {rows}×{cols} slice")
    for p in prompt.points:
        if not (np.isfinite(p.row) and np.isfinite(p.col)):
            raise InputError("point coordinates must be finite numbers")
        if not (0 <= p.row <= rows - 1 and 0 <= p.col <= cols - 1):
            raise InputError(f"point ({p.row:g},{p.col:g}) lies outside the {rows}×{cols} slice")
        if p.label not in (0, 1):
            raise InputError(f"point label must be 1 (foreground) or 0 (background), got {p.label}")
    if prompt.points and not prompt.box and prompt.mask is None and not any(p.label == 1 for p in prompt.points):
        raise InputError("only background points: add at least one foreground point (label 1)")
