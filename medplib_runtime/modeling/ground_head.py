"""``<SEG>`` → where: a heat map over the pixel embedding, and the box LiteMedSAM is prompted with.

Ours, not MedPLIB's. MedPLIB hands the ``<SEG>`` projection to SAM's decoder as a sparse prompt token
and fine-tunes the decoder for it. The lite preset keeps LiteMedSAM's decoder frozen (box prompts stay
pure LiteMedSAM), and a frozen decoder does not know what to do with a token it was never trained
on: text → mask Dice stayed near 0.26 on held-out volumes. So the ``<SEG>`` projection is used as a
*query* instead: its dot product with a learned key of every position of the 64×64 pixel embedding
gives a heat map (trained with BCE + Dice against the target mask at that grid). The strongest
connected blob of the heat map becomes a box, and the box prompts the frozen decoder — the prompt
it was trained on, and where it reaches Dice ≈ 0.9. The LLM says *what*; the pixel features say
*where*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

HEAT_THRESHOLD = 0.5  # on sigmoid(heat): the cells that make up the object


class GroundHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.key = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.bias = nn.Parameter(torch.zeros(1))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, queries: torch.Tensor, pixel_embedding: torch.Tensor) -> torch.Tensor:
        """``N×1×C`` ``<SEG>`` tokens, ``1×C×g×g`` pixel embedding → ``N×1×g×g`` heat logits."""
        keys = self.key(pixel_embedding.to(queries.dtype))[0]  # C×g×g
        heat = torch.einsum("nc,chw->nhw", queries[:, 0], keys) * self.scale + self.bias
        return heat.unsqueeze(1)


def box_from_heat(heat: torch.Tensor, *, model_size: int, valid_hw: tuple[int, int]) -> np.ndarray:
    """``g×g`` heat logits → one model-space ``x0, y0, x1, y1`` box around its strongest blob.

    The blob: the connected cells over HEAT_THRESHOLD with the largest summed probability; when no
    cell is over it, the cells within half of the peak around the peak. ``valid_hw`` is the resized
    (unpadded) image's size in model pixels: the box never reaches into the padding.
    """
    _, blob = strongest_blob(heat)
    rows, cols = np.nonzero(blob)
    cell = model_size / heat.shape[-1]
    x0, y0 = cols.min() * cell, rows.min() * cell
    x1, y1 = (cols.max() + 1) * cell - 1, (rows.max() + 1) * cell - 1
    h, w = valid_hw
    return np.array([min(x0, w - 1), min(y0, h - 1), min(x1, w - 1), min(y1, h - 1)], dtype=np.float32)


def strongest_blob(heat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``g×g`` heat logits → (``g×g`` probabilities, bool mask of the blob ``box_from_heat`` boxes)."""
    prob = torch.sigmoid(heat.detach().float()).cpu().numpy()
    on = prob > HEAT_THRESHOLD
    if not on.any():
        on = prob >= 0.5 * prob.max()
    blobs, n = label_4connected(on)
    # each blob's summed probability, as scipy.ndimage.sum adds it (float64 bincount in raster order)
    sums = np.bincount(blobs.ravel(), weights=prob.ravel())[1:n + 1]
    return prob, blobs == 1 + int(np.argmax(sums))


@dataclass(frozen=True)
class HeatScores:
    """How sure the heat map is of one place (ours; read by the grounding confidence, never by the box)."""

    peak: float  # the highest cell probability
    blob_mean: float  # the chosen blob's mean probability
    blob_share: float  # the chosen blob's share of all probability over HEAT_THRESHOLD (1: one place only)
    blob_cells: int
    logit_peak: float = 0.0  # the highest heat logit (sigmoid saturates: 1.0 for a logit of 8 and of 30)
    logit_margin: float = 0.0  # the blob's mean logit minus the median logit of the map


def heat_scores(prob: np.ndarray, blob: np.ndarray, logits: np.ndarray | None = None) -> HeatScores:
    """Scores of ``strongest_blob``'s result: a peaked single blob scores high, a diffuse or split map low."""
    over = prob[prob > HEAT_THRESHOLD].sum()
    in_blob = prob[blob].sum()
    share = float(in_blob / over) if over > 0 else 0.0
    peak = margin = 0.0
    if logits is not None:
        peak, margin = float(logits.max()), float(logits[blob].mean() - np.median(logits))
    return HeatScores(peak=float(prob.max()), blob_mean=float(prob[blob].mean()), blob_share=min(share, 1.0),
                      blob_cells=int(blob.sum()), logit_peak=peak, logit_margin=margin)


def label_4connected(on: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected cells (edge neighbours) of a 2-D bool grid → ``(labels, n)``, numbered 1..n in raster
    order of each blob's first cell: ``scipy.ndimage.label(on)``'s result, without importing scipy
    (≈ 0.5 s of a cold grounding ask; the 64×64 grid takes a few ms here)."""
    grid = on.tolist()
    h, w = on.shape
    labels = [[0] * w for _ in range(h)]
    n = 0
    for r0 in range(h):
        for c0 in range(w):
            if not grid[r0][c0] or labels[r0][c0]:
                continue
            n += 1
            labels[r0][c0] = n
            stack = [(r0, c0)]
            while stack:
                r, c = stack.pop()
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if 0 <= rr < h and 0 <= cc < w and grid[rr][cc] and not labels[rr][cc]:
                        labels[rr][cc] = n
                        stack.append((rr, cc))
    return np.array(labels, dtype=np.int32).reshape(h, w), n


__all__ = ["GroundHead", "HEAT_THRESHOLD", "HeatScores", "box_from_heat", "heat_scores", "label_4connected",
           "strongest_blob"]
