"""LLaVA-1.5's ``mlp2x_gelu`` projector: vision features → LLM token embeddings."""

from __future__ import annotations

import torch
from torch import nn

from .standardiser import InputStandardiser


class VisionProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        # ours; identity until stage I fits it (fit_input_stats). Measured on the lite preset's pooled LiteMedSAM
        # features: without it 98 % of every image token's norm was the part common to all images, and the
        # glue answered "MRI" to a lung CT (docs/training.md, "Image tokens that hardly vary").
        self.standardise = InputStandardiser(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×N×in → B×N×out
        return self.fc2(nn.functional.gelu(self.fc1(self.standardise(x))))
