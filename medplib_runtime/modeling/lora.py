"""A LoRA delta ``x → B(A(dropout(x))) · α/r`` beside a frozen Linear (our own, peft-equivalent).

Parameter names ``lora_A``/``lora_B`` keep adapter files small and readable.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRADelta(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, r: int, alpha: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))  # zero: a fresh adapter changes nothing
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.lora_A.t()) @ (self.lora_B.t() * self.scale)

    def delta_weight(self) -> torch.Tensor:
        """The dense ``out×in`` update, for merging into the frozen weight."""
        return (self.lora_B @ self.lora_A) * self.scale
