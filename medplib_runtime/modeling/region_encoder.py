"""MedPLIB's visual-prompt encoder: a region mask → one LLM token.

Positions inside the region (on the feature grid) are sampled — at most ``max_samples``,
evenly spaced so inference is deterministic — their features read with ``grid_sample``,
averaged, standardised (ours: standardiser.py) and projected by a Linear to the LLM width.
The token sits between ``<region>`` and ``</region>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .standardiser import InputStandardiser


class RegionEncoder(nn.Module):
    def __init__(self, feature_dim: int, llm_hidden: int, *, max_samples: int = 512) -> None:
        super().__init__()
        self.standardise = InputStandardiser(feature_dim)  # ours; identity until stage II fits it
        self.proj = nn.Linear(feature_dim, llm_hidden)
        self.max_samples = max_samples

    def sample_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """``H×W`` mask (model space) → ``K×2`` normalised (x, y) in [-1, 1], K ≤ max_samples."""
        ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
        if ys.numel() == 0:
            raise InputError("region is empty after resizing to the model grid: draw a larger region")
        if ys.numel() > self.max_samples:
            pick = torch.linspace(0, ys.numel() - 1, self.max_samples).round().long()
            ys, xs = ys[pick], xs[pick]
        h, w = mask.shape
        # pixel centres → align_corners=False normalised coordinates
        return torch.stack([(xs.float() + 0.5) / w * 2 - 1, (ys.float() + 0.5) / h * 2 - 1], dim=-1)

    def pooled(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features ``1×C×g×g``, mask ``H×W`` over the same padded square → ``1×C``: the mean feature
        inside the region (what the projection sees; research/probes/region_probe.py reads it too)."""
        grid = self.sample_positions(mask)[None, None]  # 1×1×K×2
        sampled = F.grid_sample(features, grid.to(features.dtype), align_corners=False)  # 1×C×1×K
        return sampled.mean(dim=-1).squeeze(-1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features ``1×C×g×g``, mask ``H×W`` over the same padded square → ``1×1×llm_hidden``."""
        return self.proj(self.standardise(self.pooled(features, mask)))[:, None, :]
