"""The released medplib-7b's MoE FFN: two full (merged) expert MLPs per layer, DeepSpeed's top-1 gate.

MedPLIB's stage IV trains LoRA on each expert and its release merges them (``merge_and_unload``), so
each expert is a whole LLaMA MLP with its own weights — which our LoRA-on-a-shared-base experts
(moe.py) cannot hold. This subclass keeps moe.py's interface (router, routing traces, forced expert,
capacity) and swaps the experts for full MLPs. The routing is DeepSpeed v0.13.1's ``top1gating`` at
eval: softmax of the fp32 router logits, argmax (first expert on ties), capacity
``ceil(tokens / E · 2.0)`` — with MedPLIB's 2 experts every token fits, so none is dropped — and the
expert output scaled by its gate probability (``combine="probability"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import MoEConfig
from .moe import MoEFeedForward


class ExpertMLP(nn.Module):
    """A LLaMA MLP; names as MedPLIB's ``deepspeed_experts.{e}``."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DenseExpertsMoE(MoEFeedForward):
    """``x (…×D) → (…×D)`` routed top-1 over full expert MLPs (no shared base, no LoRA)."""

    def __init__(self, hidden: int, intermediate: int, cfg: MoEConfig) -> None:
        nn.Module.__init__(self)  # not MoEFeedForward's: there is no shared base MLP to wrap
        if cfg.combine != "probability" or cfg.top_k != 1:
            raise ValueError("the released medplib-7b routes top-1 with probability scaling")
        self.cfg = cfg
        self.router = nn.Linear(hidden, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(ExpertMLP(hidden, intermediate) for _ in range(cfg.num_experts))
        self.top_k = 1
        self.forced_expert: int | None = None
        self.capacity_factor: float | None = None
        self.trace = None
        self.logits_tap = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # DeepSpeed's gate runs in fp32 whatever the model's dtype
        logits = F.linear(x.reshape(-1, x.shape[-1]).float(), self.router.weight.float())
        return super().forward_from_logits(x, logits)

    def expert(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.experts[i](x)

    def _dispatch(self, flat, idx, weights, cap):
        """Each expert on its own tokens (earlier tokens first when over capacity)."""
        out = torch.zeros_like(flat)
        kept = torch.ones_like(idx, dtype=torch.bool)
        for e in range(self.cfg.num_experts):
            rows = (idx[:, 0] == e).nonzero(as_tuple=True)[0]
            kept[rows[cap:], 0] = False
            rows = rows[:cap]
            if rows.numel():
                y = self.experts[e](flat[rows])
                out[rows] = y if weights is None else y * weights[rows]
        return out, kept


def install_dense_moe(llm: nn.Module, cfg: MoEConfig) -> list[DenseExpertsMoE]:
    """Replace every decoder layer's ``mlp`` with a DenseExpertsMoE of the same sizes (weights: the caller's)."""
    moes = []
    for layer in llm.model.layers:
        mlp = layer.mlp
        moe = DenseExpertsMoE(mlp.gate_proj.in_features, mlp.gate_proj.out_features, cfg)
        layer.mlp = moe.to(dtype=mlp.gate_proj.weight.dtype, device=mlp.gate_proj.weight.device)
        moes.append(moe)
    return moes
