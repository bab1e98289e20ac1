"""MedPLIB's mixture-of-experts FFN: 2 experts in every LLM layer, top-1 routing.

Expert 0 is the grounding FFN (paper stage III), expert 1 the vision-language FFN (stage
II); the router (``Linear(d→E) → softmax``, MedPLIB's ``wg``) is trained in stage IV without
an auxiliary loss (its ``train_stage4.sh``: ``--top_k_experts 1 --capacity_factor 1.5
--router_aux_loss_coef 0.0``). Each expert is the layer's frozen base MLP plus its own LoRA
on gate/up/down, so an expert costs one dense FFN plus a small delta.

Conventions (DeepSpeed-MoE's top-1 gate, which MedPLIB used):
* ``combine="probability"`` (medplib-7b): the expert output is scaled by its router probability;
  a forced expert (stages II/III train one expert alone) gets weight 1. With an untrained router
  (p ≈ 0.5) this halves every FFN output: the untrained MoE is *not* the base model.
  ``combine="unit"`` (medplib-lite): the chosen experts' weights are renormalised to sum to 1
  with the normaliser detached — for top-1 the weight is exactly 1 (an expert is a full-strength
  FFN, as in stages II/III) and the router learns through d(loss)/dp / p. Why: our stage IV is
  minutes, not an epoch; with probability scaling its text loss started at 18.9 (vs 1.3 after
  stage II) and was still 23 after 50 steps — the halved FFNs broke SmolLM2 faster than a
  router could learn to be confident.
* capacity per expert = ``ceil(cf · tokens · k / E)`` per forward (cf 1.5 train, 2.0 eval);
  tokens past it are dropped (FFN output 0; the residual carries them). Earlier tokens win
  (DeepSpeed's default ``use_rts`` picks randomly in training; DeepSpeed also floors the
  capacity at ``min_capacity=4``, which we do not: our formula is exact and testable).
No loop over tokens. When every token picks the same expert, that expert runs on the whole
batch directly (decode is always this case). Mixed top-1 routing runs the shared frozen base
once for all tokens and adds each token's own expert LoRA delta (exact; see
``_top1_shared_base``); top-k > 1 also runs the base once (``_topk_shared_base``: ``down`` is linear).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..glue.routing import RoutingConfig  # torch-free (glue metadata)
from ..presets import MoEConfig
from ..schemas import RoutingStats
from .llama_infer import gate_and_up
from .lora import LoRADelta


class ExpertLoRA(nn.Module):
    """One expert's LoRA deltas on the shared base MLP's ``gate_proj``/``up_proj``/``down_proj``."""

    def __init__(self, hidden: int, intermediate: int, cfg: MoEConfig) -> None:
        super().__init__()
        dims = {"gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate),
                "down_proj": (intermediate, hidden)}
        for name in cfg.lora_targets:
            if name not in dims:
                raise ValueError(f"LoRA target {name!r} is not an MLP projection ({', '.join(dims)})")
            i, o = dims[name]
            self.add_module(name, LoRADelta(i, o, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout))
        self.gate_proj: LoRADelta | None = self._modules.get("gate_proj")
        self.up_proj: LoRADelta | None = self._modules.get("up_proj")
        self.down_proj: LoRADelta | None = self._modules.get("down_proj")


@dataclass(frozen=True)
class RoutingTrace:
    """What one MoE layer decided in one forward over ``N`` tokens (batch × sequence, flattened).

    ``experts`` ``N×k`` (long, chosen experts, best first), ``probs`` ``N×E`` (router softmax),
    ``kept`` ``N×k`` (bool, False where the capacity limit dropped the token), ``dropped`` count.
    """

    experts: torch.Tensor
    probs: torch.Tensor
    kept: torch.Tensor
    dropped: int


class MoEFeedForward(nn.Module):
    """Drop-in for a LLaMA ``mlp``: ``x (…×D) → (…×D)``, same shape, routed over the experts."""

    def __init__(self, base_mlp: nn.Module, cfg: MoEConfig) -> None:
        super().__init__()
        hidden, intermediate = base_mlp.gate_proj.in_features, base_mlp.gate_proj.out_features
        if cfg.combine not in ("probability", "unit"):
            raise ValueError(f"combine must be 'probability' or 'unit', got {cfg.combine!r}")
        if not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(f"top_k must be in 1..{cfg.num_experts}, got {cfg.top_k}")
        self.base = base_mlp
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        self.router = nn.Linear(hidden, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(ExpertLoRA(hidden, intermediate, cfg) for _ in range(cfg.num_experts))
        self.top_k = cfg.top_k
        self.forced_expert: int | None = None
        self.capacity_factor: float | None = None  # None → cfg's train/eval value by mode
        self.trace: list[RoutingTrace] | None = None  # a list while a RoutingRecorder records
        self.logits_tap: list[torch.Tensor] | None = None  # a list: each forward's N×E router logits (with grad)
        self.sync_free = False  # take the GPU's sync-free top-1 path on the CPU too (tests)

    def expert(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Expert ``i`` on tokens ``N×D`` → ``N×D``: base MLP with this expert's LoRA deltas."""
        base, lora = self.base, self.experts[i]
        gate, up = gate_and_up(base, x)
        if lora.gate_proj is not None:
            gate = gate + lora.gate_proj(x)
        if lora.up_proj is not None:
            up = up + lora.up_proj(x)
        h = F.silu(gate) * up
        out = base.down_proj(h)
        if lora.down_proj is not None:
            out = out + lora.down_proj(h)
        return out

    def capacity(self, tokens: int) -> int:
        cf = self.capacity_factor
        if cf is None:
            cf = self.cfg.capacity_factor_train if self.training else self.cfg.capacity_factor_eval
        return max(1, math.ceil(cf * tokens * self.top_k / self.cfg.num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forced_expert is not None and not torch.is_grad_enabled() and not self._router_watched():
            # inference, and nobody reads the router (a forced expert, nothing recorded): a decode step skips it
            return self.expert(x.reshape(-1, x.shape[-1]), self.forced_expert).view(x.shape)
        return self.forward_from_logits(x, self.router(x.reshape(-1, x.shape[-1])))

    def _router_watched(self) -> bool:
        """Something reads the router's input or output: a recorder, a tap, or a hook on it (training
        caches the router inputs of a forced-expert forward through a pre-hook)."""
        r = self.router
        return self.trace is not None or self.logits_tap is not None or bool(r._forward_pre_hooks or r._forward_hooks)

    def forward_from_logits(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The routing and experts for router ``logits`` ``N×E`` (dense_moe.py computes them its own way)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n = flat.shape[0]
        if self.logits_tap is not None:
            self.logits_tap.append(logits)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # N×E
        if self.forced_expert is not None:  # a dense single-expert FFN (stages I–III): no capacity limit
            idx = torch.full((n, 1), self.forced_expert, dtype=torch.long, device=x.device)
            if self.trace is not None:
                self.trace.append(RoutingTrace(idx, probs.detach(), torch.ones_like(idx, dtype=torch.bool), 0))
            return self.expert(flat, self.forced_expert).view(shape)
        if self.top_k == 1:
            w, idx = probs.max(dim=-1, keepdim=True)
        else:
            w, idx = probs.topk(self.top_k, dim=-1)
        if self.cfg.combine == "unit":  # weights sum to 1; the router still gets d(loss)/d(p) / Σp
            w = w / w.sum(-1, keepdim=True).detach()
        weights = w.to(flat.dtype)
        out, kept = self._dispatch(flat, idx, weights, self.capacity(n))
        if self.trace is not None:
            dropped = 0 if kept is None else int((~kept).sum())
            if kept is None:
                kept = torch.ones_like(idx, dtype=torch.bool)
            self.trace.append(RoutingTrace(idx.detach(), probs.detach(), kept, dropped))
        return out.view(shape)

    def _dispatch(self, flat: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor | None,
                  cap: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the chosen experts → (``N×D`` output, ``N×k`` kept mask, or None when all were kept)."""
        n = flat.shape[0]
        if idx.shape[1] == 1:
            # on a GPU, reading the chosen expert back (int / .all()) stalls the launch queue every layer:
            # there the shared-base path runs (the same sums, no host sync); on the CPU the shortcut is cheaper
            if flat.device.type != "cpu" or self.sync_free:
                return self._top1_shared_base(flat, idx[:, 0], weights, cap)
            first = int(idx[0, 0])
            if n == 1 or (n <= cap and bool((idx == first).all())):  # one expert takes every token
                y = self.expert(flat, first)
                return (y if weights is None else y * weights), None
            return self._top1_shared_base(flat, idx[:, 0], weights, cap)
        return self._topk_shared_base(flat, idx, weights, cap)

    def _top1_shared_base(self, flat, idx, weights, cap):
        """Top-1 with mixed routing: the frozen base runs ONCE on all tokens, experts differ only by LoRA.

        Exact, and cheaper than gathering tokens per expert on this memory-bound CPU: grouping would
        read the shared base weights once per expert. Each LoRA target becomes one rank-``E·r``
        product whose ``r``-wide block is zeroed for the experts a token did not choose.
        """
        hot = F.one_hot(idx, self.cfg.num_experts)  # N×E
        order = (hot.cumsum(0) * hot).sum(-1)  # 1-based arrival rank within the token's expert
        kept = order <= cap  # earlier tokens win
        combine = kept.to(flat.dtype).unsqueeze(-1)  # N×1: 0 drops the token's FFN output
        if weights is not None:
            combine = combine * weights
        r = self.cfg.lora_r
        zmask = hot.to(flat.dtype).repeat_interleave(r, dim=1)  # N×(E·r)
        base = self.base
        gate, up = gate_and_up(base, flat)
        if (d := self._masked_delta("gate_proj", flat, zmask)) is not None:
            gate = gate + d
        if (d := self._masked_delta("up_proj", flat, zmask)) is not None:
            up = up + d
        h = F.silu(gate) * up
        out = base.down_proj(h)
        if (d := self._masked_delta("down_proj", h, zmask)) is not None:
            out = out + d
        return out * combine, kept.unsqueeze(-1)

    def _masked_delta(self, name: str, x: torch.Tensor, zmask: torch.Tensor) -> torch.Tensor | None:
        mods = [getattr(e, name) for e in self.experts]
        if mods[0] is None:
            return None
        if self.training:
            x = mods[0].dropout(x)
        a = torch.cat([m.lora_A for m in mods])  # (E·r)×in
        b = torch.cat([m.lora_B for m in mods], dim=1)  # out×(E·r)
        return ((x @ a.t()) * (zmask * mods[0].scale)) @ b.t()

    def _topk_shared_base(self, flat, idx, weights, cap):
        """Any top-k with the frozen base run ONCE: ``gate``/``up`` are shared, and because ``down`` is
        linear, Σₑ cₑ·down(hₑ) = down(Σₑ cₑ·hₑ) — so a top-2 token costs one dense FFN plus each
        expert's LoRA and elementwise work, not two FFNs (decode is memory-bound: this is its speed).
        ``cₑ`` is the token's combine weight for expert e (0 where not chosen or dropped by capacity)."""
        n, e_count = flat.shape[0], self.cfg.num_experts
        kept = torch.ones_like(idx, dtype=torch.bool)
        for e in range(e_count):  # capacity: a loop over experts, never over tokens
            token_pos, slot = (idx == e).nonzero(as_tuple=True)  # row-major: earlier tokens first
            if token_pos.numel() > cap:
                kept[token_pos[cap:], slot[cap:]] = False
        w = weights if weights is not None else torch.ones(idx.shape, dtype=flat.dtype, device=flat.device)
        slot_w = w * kept.to(flat.dtype)  # N×k
        combine = torch.zeros(n, e_count, dtype=flat.dtype, device=flat.device).scatter_add(1, idx, slot_w)  # N×E
        base = self.base
        gate, up = gate_and_up(base, flat)
        mixed_h = None
        delta_out = None
        for e in range(e_count):
            lora = self.experts[e]
            g, u = gate, up
            if lora.gate_proj is not None:
                g = g + lora.gate_proj(flat)
            if lora.up_proj is not None:
                u = u + lora.up_proj(flat)
            h = F.silu(g) * u
            c = combine[:, e:e + 1]
            mixed_h = h * c if mixed_h is None else mixed_h + h * c
            if lora.down_proj is not None:
                d = lora.down_proj(h) * c
                delta_out = d if delta_out is None else delta_out + d
        out = base.down_proj(mixed_h)
        if delta_out is not None:
            out = out + delta_out
        return out, kept


def install_moe(llm: nn.Module, cfg: MoEConfig) -> list[MoEFeedForward]:
    """Replace every decoder layer's ``mlp`` with a MoEFeedForward around it (module swap).

    Idempotent: layers that already hold a MoEFeedForward are kept as they are.
    """
    moes = []
    for layer in llm.model.layers:
        if not isinstance(layer.mlp, MoEFeedForward):
            ref = next(layer.mlp.parameters())
            layer.mlp = MoEFeedForward(layer.mlp, cfg).to(dtype=ref.dtype, device=ref.device)
            layer.mlp.train(llm.training)
        moes.append(layer.mlp)
    return moes


def moe_layers(llm: nn.Module) -> list[MoEFeedForward]:
    return [m for m in llm.modules() if isinstance(m, MoEFeedForward)]


def force_expert(llm: nn.Module, expert: int | None) -> None:
    """Send every token to ``expert`` with weight 1 (stages II/III), or back to the router (None)."""
    layers = moe_layers(llm)
    for m in layers:
        if expert is not None and not 0 <= expert < m.cfg.num_experts:
            raise ValueError(f"expert must be in 0..{m.cfg.num_experts - 1} or None, got {expert}")
        m.forced_expert = expert


def route_as_configured(llm: nn.Module, routing: RoutingConfig) -> None:
    """Every layer as the glue's recipe routes (done once, when the model is built): forced to one expert,
    or the router with its top-k (capacity: the preset's eval factor)."""
    force_expert(llm, routing.forced_expert)
    if routing.forced_expert is None and routing.top_k is not None:
        set_routing(llm, top_k=routing.top_k)


@contextmanager
def expert_forced(llm: nn.Module, expert: int):
    """``with expert_forced(llm, e):`` every token of the forwards inside goes to expert ``e`` (one call's
    choice, question_routing.py); each layer goes back to its own setting after."""
    layers = moe_layers(llm)
    kept = [m.forced_expert for m in layers]
    force_expert(llm, expert)
    try:
        yield
    finally:
        for m, forced in zip(layers, kept):
            m.forced_expert = forced


def set_routing(llm: nn.Module, *, top_k: int | None = None, capacity_factor: float | None = None) -> None:
    """Stage IV's router settings on every layer: ``top_k`` (None keeps it), ``capacity_factor``
    (None: the preset's train/eval factor by mode)."""
    for m in moe_layers(llm):
        if top_k is not None:
            if not 1 <= top_k <= m.cfg.num_experts:
                raise ValueError(f"top_k must be in 1..{m.cfg.num_experts}, got {top_k}")
            m.top_k = top_k
        m.capacity_factor = capacity_factor


@contextmanager
def tap_router_logits(llm: nn.Module):
    """``with tap_router_logits(llm) as taps:`` → after a forward, ``taps[i]`` holds layer i's router
    logits (one ``N×E`` tensor per forward, with their graph) — for a loss on the routing."""
    layers = moe_layers(llm)
    for m in layers:
        m.logits_tap = []
    taps = [m.logits_tap for m in layers]
    try:
        yield taps
    finally:
        for m in layers:
            m.logits_tap = None


class RoutingRecorder:
    """Collects every MoE layer's routing over a series of forwards (prefill + decode steps).

    ``with recorder.record(): ...`` then ``recorder.choices()`` (``L×T``, top-1 expert per layer
    and token in forward order) or ``recorder.stats(token_texts, names)`` → RoutingStats.
    """

    def __init__(self, llm: nn.Module) -> None:
        self.layers = moe_layers(llm)
        self._traces: list[list[RoutingTrace]] = []

    @contextmanager
    def record(self):
        for m in self.layers:
            m.trace = []
        try:
            yield self
        finally:
            self._traces = [m.trace or [] for m in self.layers]
            for m in self.layers:
                m.trace = None

    def restart(self) -> None:
        """Inside ``record()``: forget what was recorded so far (a prompt that will be run again)."""
        for m in self.layers:
            if m.trace is not None:
                m.trace.clear()

    @property
    def traces(self) -> list[list[RoutingTrace]]:
        """Per layer, one RoutingTrace per forward."""
        return self._traces

    def choices(self) -> torch.Tensor:
        """``L×T`` top-1 expert per layer and token (T = all tokens of all recorded forwards)."""
        if not self._traces or not self._traces[0]:
            return torch.empty(len(self._traces), 0, dtype=torch.long)
        return torch.stack([torch.cat([r.experts[:, 0] for r in trace]) for trace in self._traces])

    def dropped(self) -> int:
        return sum(r.dropped for trace in self._traces for r in trace)

    def stats(self, token_texts: list[str], expert_names: tuple[str, ...]) -> RoutingStats:
        """Per token (in forward order), the fraction of layers that chose each expert."""
        choices = self.choices()
        n = choices.shape[1]
        if n == 0:
            return RoutingStats(tuple(expert_names), (), (), 0)
        frac = F.one_hot(choices, len(expert_names)).float().mean(0)  # T×E
        texts = tuple(token_texts[:n]) + ("",) * max(0, n - len(token_texts))
        per_token = tuple(tuple(float(v) for v in row) for row in frac.tolist())
        return RoutingStats(tuple(expert_names), texts, per_token, self.dropped())
