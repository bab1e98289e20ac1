"""MedPLIB's mixture-of-experts FFN: 2 experts on every LLM layer, top-1 routing.

Expert 0 is the grounding FFN (paper stage III), expert 1 the vision-language FFN (stage
II); the router (``Linear → softmax``) is trained in stage IV, without an auxiliary loss.
Each expert is the layer's frozen base MLP plus its own LoRA on gate/up/down projections,
so an expert costs one dense FFN plus a small delta. Tokens are grouped by expert (no loop
over tokens). Capacity per expert is ``ceil(cf · tokens · k / E)``; tokens past it are
dropped (FFN output 0, the residual carries them), as DeepSpeed-MoE does. The expert output
is scaled by its router probability (DeepSpeed's combine weights); a forced expert (stages
II/III train one expert alone) is used with weight 1.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import MoEConfig
from ..schemas import RoutingStats
from .lora import LoRADelta


class ExpertLoRA(nn.Module):
    """One expert's LoRA deltas on the base MLP's projections."""

    def __init__(self, hidden: int, intermediate: int, cfg: MoEConfig) -> None:
        super().__init__()
        dims = {"gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate),
                "down_proj": (intermediate, hidden)}
        for name in cfg.lora_targets:
            i, o = dims[name]
            self.add_module(name, LoRADelta(i, o, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout))

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        module = self._modules.get(name)
        return None if module is None else module(x)


@dataclass
class LayerRouting:
    """What one MoE layer decided in one forward: expert per token (``N×k``), probs ``N×E``."""

    experts: torch.Tensor
    probs: torch.Tensor
    dropped: int


class MoEFeedForward(nn.Module):
    def __init__(self, base_mlp: nn.Module, cfg: MoEConfig, *, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.base = base_mlp
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        self.router = nn.Linear(hidden, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(ExpertLoRA(hidden, intermediate, cfg) for _ in range(cfg.num_experts))
        self.forced_expert: int | None = None
        self.top_k = cfg.top_k
        self.capacity_factor: float | None = None  # None → cfg's train/eval value by mode
        self.trace: list[LayerRouting] | None = None

    def expert(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Expert ``i`` on tokens ``N×D``: base MLP with this expert's LoRA deltas."""
        base, lora = self.base, self.experts[i]
        gate, up = base.gate_proj(x), base.up_proj(x)
        if (d := lora.delta("gate_proj", x)) is not None:
            gate = gate + d
        if (d := lora.delta("up_proj", x)) is not None:
            up = up + d
        h = F.silu(gate) * up
        out = base.down_proj(h)
        if (d := lora.delta("down_proj", h)) is not None:
            out = out + d
        return out

    def capacity(self, tokens: int) -> int:
        cf = self.capacity_factor
        if cf is None:
            cf = self.cfg.capacity_factor_train if self.training else self.cfg.capacity_factor_eval
        return max(1, math.ceil(cf * tokens * self.top_k / self.cfg.num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n = flat.shape[0]
        probs = torch.softmax(self.router(flat).float(), dim=-1)
        if self.forced_expert is not None:
            idx = torch.full((n, 1), self.forced_expert, dtype=torch.long, device=x.device)
            weights = torch.ones((n, 1), dtype=flat.dtype, device=x.device)
        else:
            w, idx = probs.topk(self.top_k, dim=-1)
            weights = w.to(flat.dtype)
        cap = self.capacity(n)
        out, dropped = self._dispatch(flat, idx, weights, cap)
        if self.trace is not None:
            self.trace.append(LayerRouting(idx.detach(), probs.detach(), dropped))
        return out.view(shape)

    def _dispatch(self, flat, idx, weights, cap) -> tuple[torch.Tensor, int]:
        n = flat.shape[0]
        if idx.shape[1] == 1:
            first = int(idx[0, 0])
            if n <= cap and bool((idx == first).all()):  # one expert takes every token: no gather
                return weights * self.expert(flat, first), 0
        out = torch.zeros_like(flat)
        dropped = 0
        for e in range(self.cfg.num_experts):
            token_pos, slot = (idx == e).nonzero(as_tuple=True)  # token order: earlier tokens first
            if token_pos.numel() == 0:
                continue
            if token_pos.numel() > cap:
                dropped += token_pos.numel() - cap
                token_pos, slot = token_pos[:cap], slot[:cap]
            y = self.expert(flat.index_select(0, token_pos), e) * weights[token_pos, slot].unsqueeze(-1)
            out.index_add_(0, token_pos, y)
        return out, dropped


def install_moe(llm: nn.Module, cfg: MoEConfig) -> list[MoEFeedForward]:
    """Replace every decoder layer's ``mlp`` with a MoEFeedForward around it (module swap)."""
    config = llm.config
    layers = llm.model.layers
    moes = []
    for layer in layers:
        moe = MoEFeedForward(layer.mlp, cfg, hidden=config.hidden_size, intermediate=config.intermediate_size)
        moe.to(next(layer.mlp.parameters()).dtype)
        layer.mlp = moe
        moes.append(moe)
    return moes


def moe_layers(llm: nn.Module) -> list[MoEFeedForward]:
    return [m for m in llm.modules() if isinstance(m, MoEFeedForward)]


def force_expert(llm: nn.Module, expert: int | None) -> None:
    for m in moe_layers(llm):
        m.forced_expert = expert


class RoutingRecorder:
    """Collects every MoE layer's routing over a series of forwards (prefill + decode steps)."""

    def __init__(self, llm: nn.Module) -> None:
        self.layers = moe_layers(llm)

    @contextmanager
    def record(self):
        for m in self.layers:
            m.trace = []
        try:
            yield self
        finally:
            self._traces = [m.trace for m in self.layers]
            for m in self.layers:
                m.trace = None

    def stats(self, token_texts: list[str], expert_names: tuple[str, ...]) -> RoutingStats:
        """Per token (in forward order), the fraction of layers that chose each expert."""
        traces = self._traces
        if not traces or not traces[0]:
            return RoutingStats(expert_names, (), (), 0)
        per_layer = [torch.cat([r.experts[:, 0] for r in trace]) for trace in traces]  # L × (tokens,)
        choices = torch.stack(per_layer)  # L×N
        n_exp = len(expert_names)
        frac = torch.stack([(choices == e).float().mean(0) for e in range(n_exp)], dim=-1)  # N×E
        dropped = sum(r.dropped for trace in traces for r in trace)
        n = frac.shape[0]
        texts = tuple(token_texts[:n]) + tuple("" for _ in range(n - len(token_texts)))
        return RoutingStats(expert_names, texts, tuple(tuple(float(v) for v in row) for row in frac), int(dropped))
