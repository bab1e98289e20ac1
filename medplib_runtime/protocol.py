"""The one narrow interface the plugin and the CLI talk to, local or remote (docs/design.md, "The shape")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from .schemas import AskRequest, AskResult, RuntimeInfo, SegmentRequest, SegmentResult, SliceRef


@runtime_checkable
class Runtime(Protocol):
    def info(self) -> RuntimeInfo:
        """Preset, parts (and whether each is trained), device, versions."""

    def set_image(self, image: np.ndarray, *, modality: str = "auto", spacing: tuple[float, ...] | None = None) -> str:
        """Register a 2D ``(y, x)`` or 3D ``(z, y, x)`` image; returns its key (a content hash).

        Cheap to call again with the same data. Embeddings are computed lazily per slice.
        """

    def prefetch(self, image_key: str, slice: SliceRef, *, radius: int = 2) -> None:
        """Hint: the user looks at ``slice`` now; embed it and its neighbours in the background."""

    def segment(self, request: SegmentRequest) -> SegmentResult:
        """Direct prompt → mask through the SAM-style decoder (no LLM)."""

    def ask(self, request: AskRequest, *, on_token: Callable[[str], None] | None = None) -> AskResult:
        """Question (+ optional region, history) → answer text, one mask per ``<SEG>``, routing.

        ``on_token`` gets each answer token's text as it is generated (from the calling thread)."""

    def close(self) -> None:
        """Stop background work and free memory."""
