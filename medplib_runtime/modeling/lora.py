"""LoRA, our own small peft-equivalent: ``y = W x + B(A(dropout(x))) · α/r`` with W frozen.

``LoRADelta`` is the low-rank update alone (MoE experts share one frozen base MLP and each
keeps its own delta); ``LoRALinear`` wraps a frozen ``nn.Linear`` with one delta and can
``merge()`` it into the weight. Parameter names ``lora_A`` (r×in) / ``lora_B`` (out×r) keep
adapter files small and readable.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRADelta(nn.Module):
    """``x (…×in) → (…×out)``: ``((dropout(x) @ Aᵀ) · α/r) @ Bᵀ``; B starts at zero (a no-op adapter)."""

    def __init__(self, in_features: int, out_features: int, *, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x@A then @B: never the dense out×in product; the scale goes on the r-wide middle
        if self.training:
            x = self.dropout(x)
        return (x @ self.lora_A.t()).mul_(self.scale) @ self.lora_B.t()

    def delta_weight(self) -> torch.Tensor:
        """The dense ``out×in`` update ``B A · α/r`` (for merging)."""
        return (self.lora_B @ self.lora_A) * self.scale


class LoRALinear(LoRADelta):
    """A frozen ``nn.Linear`` plus a trainable LoRA delta; ``merge()`` folds the delta in."""

    def __init__(self, base: nn.Linear, *, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__(base.in_features, base.out_features, r=r, alpha=alpha, dropout=dropout)
        self.to(dtype=base.weight.dtype, device=base.weight.device)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y if self.merged else y + super().forward(x)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Add ``B A · α/r`` into the base weight (once); returns the base Linear."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True
        return self.base
