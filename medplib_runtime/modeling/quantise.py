"""Weight-only quantised Linear layers for CPU decoding (``precision="int8"|"int4"``).

Why: decoding is memory-bound (every token reads all ~540 MB of fp32 weights); int8 weights read a
quarter of that, int4 an eighth. The kernels are torch's own CPU ops (no extra dependency):
``aten._weight_int8pack_mm`` (per-output-channel int8) and ``aten._weight_int4pack_mm_for_cpu``
(groups of 32 along the input, asymmetric). Both are vectorised (AVX2/AVX-512) for bf16 activations
only; with fp32 activations they fall back to scalar code 5-10× slower than fp32 BLAS (measured).

So activations stay fp32 by a split: ``x = hi + lo`` with ``hi = bf16(x)``, ``lo = bf16(x - hi)``
(≈ 16 mantissa bits together), both rows run through the kernel in one call and summed in fp32. A
decode step is memory-bound, so the second row is nearly free (the weights are read once). What is
left of bf16 is the kernel's output rounding (≈ 2⁻⁹ relative), below the int8 weight error. An int4
prompt (more than ``DECODE_ROWS`` rows) is compute-bound and runs one bf16 row a token (measured: the
same answers).

The int4 groups fit SmolLM2's weights exactly: the shipped model is a GGUF Q4_1 (blocks of 32 along
the input with a scale and a minimum), so every group of 32 holds at most 16 distinct values and
int4 reproduces them up to the bf16 rounding of its scale and offset. The LM head (tied to the
embedding, not Q4_1 in the GGUF) is a ShortlistHead under both: int4 picks 64 candidates, fp32 rows
score them. The embedding lookup stays fp32 (one row per token). The MoE router and the glue's LoRA
deltas stay fp32: they are small, and the two experts share one quantised base MLP (folding a delta
in would need a quantised copy per expert).

A decode step at this size is bound by per-call cost as much as by bytes (≈ 120 small ops a layer),
so Linears that read one input run as one (``FusedOutputs``: q|k|v, gate|up).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import PRECISIONS

INT4_GROUP = 32  # GGUF Q4_1's block size along the input
_INT4_ROWS = 16  # the int4 CPU kernel wants the output count a multiple of this (padded with zero rows)
# more rows than this (a prefill): int8 runs fp32 BLAS on the dequantised weight (compute-bound there)
DECODE_ROWS = 16


@dataclass(frozen=True)
class QuantReport:
    """What ``quantise_llm`` did: how many Linears, and their weight bytes before and after."""

    precision: str
    linears: int
    bytes_before: int
    bytes_after: int


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _hi_lo(flat: torch.Tensor) -> torch.Tensor:
    """``M×K`` fp32 → ``2M×K`` bf16 whose row pairs sum to ``flat`` within ≈ 2⁻¹⁷ relative."""
    hi = flat.to(torch.bfloat16)
    return torch.cat([hi, torch.sub(flat, hi).to(torch.bfloat16)])  # fp32 − bf16 is computed in fp32


def _sum_hi_lo(y: torch.Tensor, m: int) -> torch.Tensor:
    # one op, not five: a decode step makes ~120 of these calls, and each op costs µs of dispatch
    return y.view(2, m, -1).sum(0, dtype=torch.float32)


class Int8Linear(nn.Module):
    """``y = x Wᵀ`` with W stored as int8 per output channel (``W ≈ q · scale``), fp32 in and out."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        self.out_features, self.in_features = w.shape
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.contiguous())  # fp32, applied after the kernel (not rounded to bf16)
        self.register_buffer("_ones", torch.ones(self.out_features, dtype=torch.bfloat16), persistent=False)

    def dequantised(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        m = flat.shape[0]
        if m > DECODE_ROWS or flat.device.type != "cpu":
            y = F.linear(flat, self.dequantised().to(flat.dtype))
        else:
            y = _sum_hi_lo(torch.ops.aten._weight_int8pack_mm(_hi_lo(flat.float()), self.qweight, self._ones), m)
            y = (y * self.scale).to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


_PACK_ROWS = 4096  # a multiple of _INT4_ROWS


def _pack_int4(rows: torch.Tensor, padded: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight rows ``m×K`` (zero rows added up to ``padded``) → (the kernel's packed codes, its
    ``(K/group)×padded×2`` scales and offsets)."""
    w = F.pad(rows.float(), (0, 0, 0, padded - rows.shape[0])).contiguous()
    k = w.shape[1]
    g = w.view(padded, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    # scale and offset as the kernel reads them (bf16), then the codes from those rounded values
    scale = ((hi - lo) / 15.0).clamp(min=1e-8).to(torch.bfloat16)
    offset = (lo + 8 * scale.float()).to(torch.bfloat16)
    base = offset.float() - 8 * scale.float()  # the value of code 0
    codes = g.sub(base[..., None]).div_(scale.float()[..., None]).round_().clamp_(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.view(padded, k), 1)
    return packed, torch.stack([scale, offset], -1).transpose(0, 1)


class Int4Linear(nn.Module):
    """``y = x Wᵀ`` with W in int4 groups of 32 along the input: ``W ≈ (q − 8) · scale + offset``."""

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUP) -> None:
        super().__init__()
        n, k = weight.shape
        if k % group:
            raise ValueError(f"int4 needs the input size ({k}) to be a multiple of {group}")
        self.out_features, self.in_features, self.group = n, k, group
        padded = -(-n // _INT4_ROWS) * _INT4_ROWS
        # in blocks of rows (the packing is per row): the 49152-row head at once held ≈ 0.45 GB of temporaries
        blocks = [_pack_int4(weight.detach()[start:start + _PACK_ROWS], min(_PACK_ROWS, padded - start), group)
                  for start in range(0, padded, _PACK_ROWS)]
        self.register_buffer("packed", torch.cat([b[0] for b in blocks]))
        # the kernel's layout: (k/group)×N×2, [scale, offset]
        self.register_buffer("scales_offsets", torch.cat([b[1] for b in blocks], dim=1).contiguous())

    def _kernel(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group, self.scales_offsets)

    def dequantised(self) -> torch.Tensor:
        """The weight the kernel multiplies by (fp32), read back through the kernel with an identity."""
        eye = torch.eye(self.in_features)
        return _sum_hi_lo(self._kernel(_hi_lo(eye)), self.in_features).t()[: self.out_features].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        m = flat.shape[0]
        if m > DECODE_ROWS:
            # a prompt is compute-bound: one bf16 row a token halves it, and measured the same answers as the
            # split (eval split 101/109 and real slices 57/60 identical to fp32 either way; decode keeps the split:
            # bf16 there cost one more answer)
            y = self._kernel(flat.to(torch.bfloat16)).float()
        else:
            y = _sum_hi_lo(self._kernel(_hi_lo(flat.float())), m)
        if y.shape[1] != self.out_features:  # rows padded for the kernel
            y = y[:, : self.out_features]
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group}"


class FusedOutputs(nn.Module):
    """Linears that read the same input (q|k|v, gate|up) as one quantised Linear over their stacked rows:
    ``x → (y₁, y₂, …)``. Why: a quantised decode step is mostly per-call cost (splitting the activation,
    the kernel launch, summing its halves: ≈ 60 µs against 25–45 µs of kernel), so one call for three
    outputs is most of the gain; the values are those of the separate Linears (the kernel works per row)."""

    def __init__(self, linears: list[nn.Linear], cls: type) -> None:
        super().__init__()
        self.sizes = tuple(lin.out_features for lin in linears)
        self.inner = cls(torch.cat([lin.weight.detach() for lin in linears]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner(x).split(self.sizes, dim=-1)


SHORTLIST = 64  # tokens whose logits the head recomputes exactly (greedy decoding needs only the best one)


class ShortlistHead(nn.Module):
    """The LM head as greedy decoding uses it: int4 logits for the whole vocabulary pick a shortlist of the
    ``SHORTLIST`` best tokens, whose logits are then recomputed exactly in fp32 from the head's own rows
    (the tied embedding, which stays fp32 for the lookup anyway: no extra memory). The argmax is fp32's
    whenever fp32's best token is among int4's best 64 (the quality script counts the misses); the
    rest of the vector is int4's. Why: the head is 49152×576; int8 per channel read it in 3.7 ms a
    token and was the largest error left in the answers (≈ 1 % of each weight), int4 reads it in 1.1 ms."""

    def __init__(self, head: nn.Linear, shortlist: int = SHORTLIST) -> None:
        super().__init__()
        self.approx = Int4Linear(head.weight)
        self.out_features, self.in_features = head.out_features, head.in_features
        self.shortlist = min(shortlist, head.out_features)
        self.__dict__["rows"] = head.weight.detach()  # a plain reference, not registered: the embedding owns it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.approx(x)
        flat, xs = logits.view(-1, self.out_features), x.reshape(-1, self.in_features).float()
        m = flat.shape[0]
        top = flat.topk(self.shortlist, dim=-1).indices  # M×S
        exact = (xs @ self._columns(top.reshape(-1))).view(m, m, -1).diagonal(0, 0, 1).t()  # M×S, fp32
        return flat.scatter_(1, top, exact.to(flat.dtype)).view_as(logits)

    def _columns(self, idx: torch.Tensor) -> torch.Tensor:
        """``K×len(idx)``: the head's rows ``idx`` as columns. index_select, not ``rows[idx]``: advanced indexing
        took 2.7–6.3 ms for 64 rows here, index_select 0.18 ms (the rows are column-major: llm.py)."""
        if self.rows.t().is_contiguous():
            return self.rows.t().index_select(1, idx)
        return self.rows.index_select(0, idx).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 shortlist of {self.shortlist}"


def _weight_bytes(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@dataclass(frozen=True)
class Swap:
    """One place in the LLM and what stands there: ``parent.name`` is ``old`` (fp32) or ``new`` (quantised).
    Either may be None: a fused module stands where there was none, and the Linears it replaces are unset."""

    parent: nn.Module
    name: str
    old: nn.Module | None
    new: nn.Module | None


def _plain(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Linear) and module.bias is None


def _fused_swaps(parent: nn.Module, fused_name: str, names: tuple[str, ...], cls: type) -> list[Swap]:
    """``parent``'s Linears ``names`` as one FusedOutputs at ``fused_name`` (llama_infer's modules have that
    slot); a model without the slot (transformers') gets each Linear quantised on its own."""
    linears = [getattr(parent, n, None) for n in names]
    if not all(_plain(lin) for lin in linears):
        return []  # already quantised (or not a plain Linear): idempotent
    if not hasattr(parent, fused_name):
        return [Swap(parent, n, lin, cls(lin.weight).to(lin.weight.device)) for n, lin in zip(names, linears)]
    fused = FusedOutputs(linears, cls).to(linears[0].weight.device)
    return [Swap(parent, fused_name, getattr(parent, fused_name), fused)] + \
        [Swap(parent, n, lin, None) for n, lin in zip(names, linears)]


@torch.no_grad()
def quantised_swaps(llm: nn.Module, precision: str) -> list[Swap]:
    """The quantised stand-ins for the LLM's Linears, built from their current weights (not yet in place).

    ``llm``: llama_infer's LlamaLM (or transformers' LLaMA) after the glue is loaded, with or without
    the MoE installed. Quantised: attention q|k|v (fused) and o, the (shared, frozen) base MLP's gate|up
    (fused) and down in every layer, the LM head (a ShortlistHead). Not: the router, LoRA deltas, norms,
    the embedding. Places already quantised (or Linears with a bias) are left out: idempotent.
    """
    return [s for group in _swap_groups(llm, precision) for s in group]


def _swap_groups(llm: nn.Module, precision: str):
    """quantised_swaps, one layer (then the head) at a time, built when asked for."""
    check_precision(precision)
    if precision == "fp32":
        return
    cls = Int4Linear if precision == "int4" else Int8Linear
    for layer in llm.model.layers:
        attn = layer.self_attn
        mlp = getattr(layer.mlp, "base", layer.mlp)  # MoEFeedForward keeps the frozen MLP as .base
        swaps = _fused_swaps(attn, "qkv", ("q_proj", "k_proj", "v_proj"), cls)
        swaps += _fused_swaps(mlp, "gate_up", ("gate_proj", "up_proj"), cls)
        for parent, name in ((attn, "o_proj"), (mlp, "down_proj")):
            if _plain(old := getattr(parent, name)):
                swaps.append(Swap(parent, name, old, cls(old.weight).to(old.weight.device)))
        yield swaps
    if _plain(llm.lm_head):
        yield [Swap(llm, "lm_head", llm.lm_head, ShortlistHead(llm.lm_head))]


@torch.no_grad()
def quantise_llm(llm: nn.Module, precision: str) -> QuantReport:
    """Swap the LLM's Linear weights for quantised ones, in place, for good (CPU inference only): the
    fp32 weights are freed with the old modules (the embedding keeps its own). ``fp32`` does nothing.
    Layer by layer, so each layer's fp32 weights are freed before the next is packed (peak memory)."""
    linears = before = after = 0
    for swaps in _swap_groups(llm, precision):
        for s in swaps:
            setattr(s.parent, s.name, s.new)
        linears += sum(_plain(s.old) for s in swaps)
        before += sum(s.old.weight.numel() * s.old.weight.element_size() for s in swaps if _plain(s.old))
        after += quantised_bytes(swaps)
        del swaps
    return QuantReport(precision, linears, before, after)


def quantised_bytes(swaps: list[Swap]) -> int:
    """The bytes the quantised stand-ins hold (a ShortlistHead's fp32 rows are the embedding's, not counted)."""
    return sum(_weight_bytes(s.new) for s in swaps)


@contextmanager
def swapped_in(swaps: list[Swap]):
    """``with swapped_in(swaps):`` the quantised modules answer; the fp32 ones are back after (the bench
    compares precisions on one model this way, holding the fp32 weights once)."""
    for s in swaps:
        setattr(s.parent, s.name, s.new)
    try:
        yield
    finally:
        for s in swaps:
            setattr(s.parent, s.name, s.old)


__all__ = ["DECODE_ROWS", "PRECISIONS", "SHORTLIST", "FusedOutputs", "Int4Linear", "Int8Linear", "QuantReport",
           "ShortlistHead", "Swap", "check_precision", "quantise_llm", "quantised_bytes", "quantised_swaps",
           "swapped_in"]
