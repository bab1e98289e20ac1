"""Model-space geometry: resize longest side + pad, coordinate mapping, crop at the right scale.

LiteMedSAM was trained with the longest side resized to 256 and zero padding at the bottom
and right, so we do the same (the padding lives after the image in both axes). Masks come
back at the logits' own scale (256 for LiteMedSAM, 64 for a 16×16 SAM-Med2D grid): the
padding is cropped *at that scale* before resizing to the slice. (MedPLIB's
``postprocess_masks`` cropped 64-scale logits with 256-scale sizes, so non-square images kept
padding — the bug this module avoids.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ResizeInfo:
    """``original`` (h, w) of the slice → ``resized`` (h, w) inside a ``target``² padded square."""

    original: tuple[int, int]
    resized: tuple[int, int]
    target: int

    @property
    def scale(self) -> tuple[float, float]:
        """(row, col) factors from slice voxels to model pixels."""
        return self.resized[0] / self.original[0], self.resized[1] / self.original[1]


def resize_info(shape: tuple[int, int], target: int) -> ResizeInfo:
    h, w = shape
    s = target / max(h, w)
    return ResizeInfo((h, w), (max(1, int(round(h * s))), max(1, int(round(w * s)))), target)


def resize_longest_and_pad(image: np.ndarray, target: int) -> tuple[torch.Tensor, ResizeInfo]:
    """``(h, w)`` grey or ``(h, w, 3)`` RGB float image in [0, 1] → ``1×3×target×target`` tensor (grey is
    replicated to the 3 channels LiteMedSAM takes; RGB keeps its own), and its ResizeInfo."""
    info = resize_info(image.shape[:2], target)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]
    if info.resized != info.original:
        x = F.interpolate(x, size=info.resized, mode="bilinear", align_corners=False,
                          antialias=info.resized[0] < info.original[0])
    x = F.pad(x, (0, target - info.resized[1], 0, target - info.resized[0]))
    return x.expand(1, 3, target, target).contiguous(), info  # (a no-op for RGB)


def rc_to_model_xy(rows: np.ndarray, cols: np.ndarray, info: ResizeInfo) -> np.ndarray:
    """Slice voxel coordinates (row, col) → model pixel coordinates ``N×2`` (x, y)."""
    sr, sc = info.scale
    return np.stack([np.asarray(cols, float) * sc, np.asarray(rows, float) * sr], axis=-1)


def logits_to_original(logits: torch.Tensor, info: ResizeInfo) -> torch.Tensor:
    """``B×M×L×L`` logits over the padded square → ``B×M×h×w`` over the original slice."""
    size = logits.shape[-1]
    k = size / info.target
    crop_h, crop_w = max(1, int(round(info.resized[0] * k))), max(1, int(round(info.resized[1] * k)))
    cropped = logits[..., :crop_h, :crop_w]
    return F.interpolate(cropped, size=info.original, mode="bilinear", align_corners=False)


def mask_to_model(mask: np.ndarray, info: ResizeInfo, size: int) -> torch.Tensor:
    """A slice mask ``(h, w)`` → ``1×1×size×size`` float in the padded model square at ``size``."""
    k = size / info.target
    h, w = max(1, int(round(info.resized[0] * k))), max(1, int(round(info.resized[1] * k)))
    x = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return F.pad(x, (0, size - w, 0, size - h))
