"""``<SEG>`` hidden state → one sparse prompt token for the mask decoder (MedPLIB's text_hidden_fcs)."""

from __future__ import annotations

import torch
from torch import nn

from .standardiser import InputStandardiser


class SegProjector(nn.Module):
    def __init__(self, llm_hidden: int, prompt_dim: int) -> None:
        super().__init__()
        self.standardise = InputStandardiser(llm_hidden)  # ours; identity until a stage fits it
        self.fc1 = nn.Linear(llm_hidden, llm_hidden)
        self.fc2 = nn.Linear(llm_hidden, prompt_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # N×d → N×1×prompt_dim
        return self.fc2(torch.relu(self.fc1(self.standardise(hidden)))).unsqueeze(1)
