"""LLaVA-1.5's ``mlp2x_gelu`` projector: vision features → LLM token embeddings."""

from __future__ import annotations

import torch
from torch import nn


class VisionProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×N×in → B×N×out
        return self.fc2(nn.functional.gelu(self.fc1(x)))
