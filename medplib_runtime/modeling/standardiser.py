"""Per-feature standardisation fitted once from data: ``(x − mean) / std``, stored with the glue.

Why (measured, docs/training.md "Why grounding returns the other structure"): the ``<SEG>`` hidden states of "Segment the
nodule." and "Segment the cyst." on one slice have cosine 0.997 — a large component common to every
``<SEG>`` dwarfs what the question asked for — and the seg projector trained on them gave one and the
same query for both (cosine 1.0000), so the ground head found "a blob", whichever it was. The
region encoder's pooled features are the same story (a region token that hardly varies). Removing
the common part and equalising the features' scales before the learnt projection makes the
differences the projection's input, instead of a few per cent of it.

The statistics are buffers, not parameters: no optimizer touches them. ``fit`` runs once, when a
training stage first trains the part (TrainConfig.fit_input_stats); until then they are the
identity (mean 0, std 1), which is also what a glue from before them loads as.
"""

from __future__ import annotations

import torch
from torch import nn

STD_FLOOR = 0.1  # × the median feature std: a feature that hardly varied in the fit is not blown up


class InputStandardiser(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @property
    def fitted(self) -> bool:
        return not (bool((self.mean == 0).all()) and bool((self.std == 1).all()))

    @torch.no_grad()
    def fit(self, samples: torch.Tensor) -> None:
        """``N×dim`` samples (N ≥ 2) → this module's mean and (floored) std."""
        x = samples.detach().float().reshape(-1, self.mean.numel())
        if x.shape[0] < 2:
            raise ValueError(f"standardisation needs at least 2 samples, got {x.shape[0]}")
        std = x.std(dim=0)
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(std.clamp_min(STD_FLOOR * float(std.median()) + 1e-12))

    @torch.no_grad()
    def reset(self) -> None:
        self.mean.zero_()
        self.std.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


__all__ = ["InputStandardiser", "STD_FLOOR"]
