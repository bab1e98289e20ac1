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


class ClipRegionEncoder(nn.Module):
    """MedPLIB's own region encoder (``medplib-7b``): ``region_fea_adapter`` over the CLIP patch features.

    As its ``extract_region_feature``: the region mask's pixels at ``(row/H, col/W)`` (``H×W`` the mask's
    own size; MedPLIB's demo gives it on the CLIP grid), read bilinearly from the CLIP feature map with
    ``align_corners=True``, averaged. MedPLIB projects every patch and then samples; the projection is
    linear and the bilinear weights sum to 1, so sampling first is the same token at a fraction of the
    cost. Departure: beyond ``max_samples`` pixels MedPLIB picks a random subset, we an evenly spaced one.
    """

    def __init__(self, feature_dim: int, llm_hidden: int, *, max_samples: int = 512) -> None:
        super().__init__()
        self.proj = nn.Linear(feature_dim, llm_hidden)  # MedPLIB's region_fea_adapter
        self.max_samples = max_samples

    def sample_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """``H×W`` mask → ``K×2`` (x, y) in [-1, 1] for ``align_corners=True``, K ≤ max_samples."""
        rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
        if rows.numel() == 0:
            raise InputError("region is empty after resizing to the model grid: draw a larger region")
        if rows.numel() > self.max_samples:
            pick = torch.linspace(0, rows.numel() - 1, self.max_samples).round().long()
            rows, cols = rows[pick], cols[pick]
        h, w = mask.shape
        return torch.stack([cols.float() / w, rows.float() / h], dim=-1) * 2 - 1

    def forward(self, clip_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CLIP patch features ``1×N×C`` (N a square), mask ``H×W`` → ``1×1×llm_hidden``."""
        n, c = clip_features.shape[1:]
        side = int(round(n ** 0.5))
        fmap = clip_features[0].reshape(side, side, c).permute(2, 0, 1)[None].float()
        grid = self.sample_positions(mask).to(fmap.device)[None, None]  # 1×1×K×2
        sampled = F.grid_sample(fmap, grid, align_corners=True)  # 1×C×1×K
        pooled = sampled.mean(dim=-1).squeeze(-1).to(clip_features.dtype)  # 1×C
        return self.proj(pooled)[:, None, :]
