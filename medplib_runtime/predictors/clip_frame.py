"""A slice and a region mask in the CLIP tower's frame, as MedPLIB's demo prepares them (``model_worker.py``).

The slice: longest side to the tower's image size S (336 for ViT-L/14-336), centred padding with CLIP's mean
colour (0 once normalised), CLIP normalisation. The region mask: the same resize (nearest) and centred
padding with 0, then one value per patch (``cv2.resize(fx=1/14, INTER_NEAREST)``: the patch's top-left
pixel), so the region encoder samples it on the CLIP grid (region_encoder.ClipRegionEncoder).
SAM-Med2D's branch is padded at the bottom and right instead (MedPLIB's training datasets): segmenter.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipFrame:
    """Where an ``(h, w)`` slice lies in the ``size``² CLIP square."""

    size: int
    resized: tuple[int, int]
    top: int
    left: int

    @classmethod
    def of(cls, shape: tuple[int, int], size: int) -> "ClipFrame":
        h, w = shape
        s = size / max(h, w)
        nh, nw = max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))  # ResizeLongestSide's rounding
        return cls(size, (nh, nw), (size - nh) // 2, (size - nw) // 2)

    def pad(self) -> tuple[int, int, int, int]:
        nh, nw = self.resized
        return (self.left, self.size - nw - self.left, self.top, self.size - nh - self.top)


def clip_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """``(h, w)`` grey or ``(h, w, 3)`` RGB float in [0, 1] → ``1×3×S×S`` CLIP-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None].expand(1, 3, -1, -1)
    frame = ClipFrame.of(tuple(x.shape[-2:]), size)
    if frame.resized != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=frame.resized, mode="bilinear", align_corners=False,
                          antialias=frame.resized[0] < x.shape[-2])
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return F.pad((x - mean) / std, frame.pad())  # padding = the mean colour, normalised


def clip_grid_mask(mask: np.ndarray, size: int, grid: int) -> torch.Tensor:
    """An ``(h, w)`` region mask → ``grid×grid`` float (1 inside) on the CLIP patch grid."""
    m = torch.from_numpy((np.asarray(mask) != 0).astype(np.float32))[None, None]
    frame = ClipFrame.of(tuple(m.shape[-2:]), size)
    m = F.pad(F.interpolate(m, size=frame.resized, mode="nearest"), frame.pad())[0, 0]
    step = size // grid
    return m[::step, ::step][:grid, :grid].contiguous()


__all__ = ["ClipFrame", "clip_grid_mask", "clip_pixels"]
