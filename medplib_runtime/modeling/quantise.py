"""Weight-only quantised Linear layers for CPU decoding (``precision="int8"|"int4"``).

Why: decoding is memory-bound (every token reads all ~540 MB of fp32 weights); int8 weights read a
quarter of that, int4 an eighth. The kernels are torch's own CPU ops (no extra dependency):
``aten._weight_int8pack_mm`` (per-output-channel int8) and ``aten._weight_int4pack_mm_for_cpu``
(groups of 32 along the input, asymmetric). Both are vectorised (AVX2/AVX-512) for bf16 activations
only; with fp32 activations they fall back to scalar code 5-10× slower than fp32 BLAS (measured).

So activations stay fp32 by a split: ``x = hi + lo`` with ``hi = bf16(x)``, ``lo = bf16(x - hi)``
(≈ 16 mantissa bits together), both rows run through the kernel in one call and summed in fp32. A
decode step is memory-bound, so the second row is nearly free (the weights are read once). What is
left of bf16 is the kernel's output rounding (≈ 2⁻⁹ relative), below the int8 weight error.

The int4 groups fit SmolLM2's weights exactly: the shipped model is a GGUF Q4_1 (blocks of 32 along
the input with a scale and a minimum), so every group of 32 holds at most 16 distinct values and
int4 reproduces them up to the bf16 rounding of its scale and offset. The LM head (tied to the
embedding, not Q4_1 in the GGUF) is int8 under both; the embedding lookup stays fp32 (one row per token).
The MoE router and the glue's LoRA deltas stay fp32: they are small, and the two experts share one
quantised base MLP (folding a delta in would need a quantised copy per expert).
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
    return torch.cat([hi, (flat - hi.float()).to(torch.bfloat16)])


def _sum_hi_lo(y: torch.Tensor, m: int) -> torch.Tensor:
    return y[:m].float() + y[m:].float()


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


class Int4Linear(nn.Module):
    """``y = x Wᵀ`` with W in int4 groups of 32 along the input: ``W ≈ (q − 8) · scale + offset``."""

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUP) -> None:
        super().__init__()
        w = weight.detach().float()
        n, k = w.shape
        if k % group:
            raise ValueError(f"int4 needs the input size ({k}) to be a multiple of {group}")
        self.out_features, self.in_features, self.group = n, k, group
        padded = -(-n // _INT4_ROWS) * _INT4_ROWS
        w = F.pad(w, (0, 0, 0, padded - n))
        g = w.reshape(padded, k // group, group)
        lo, hi = g.amin(-1), g.amax(-1)
        # scale and offset as the kernel reads them (bf16), then the codes from those rounded values
        scale = ((hi - lo) / 15.0).clamp(min=1e-8).to(torch.bfloat16)
        offset = (lo + 8 * scale.float()).to(torch.bfloat16)
        base = offset.float() - 8 * scale.float()  # the value of code 0
        q = torch.round((g - base[..., None]) / scale.float()[..., None]).clamp_(0, 15).to(torch.int32)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(padded, k), 1))
        # the kernel's layout: (k/group)×N×2, [scale, offset]
        self.register_buffer("scales_offsets", torch.stack([scale, offset], -1).transpose(0, 1).contiguous())

    def _kernel(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group, self.scales_offsets)

    def dequantised(self) -> torch.Tensor:
        """The weight the kernel multiplies by (fp32), read back through the kernel with an identity."""
        eye = torch.eye(self.in_features)
        return _sum_hi_lo(self._kernel(_hi_lo(eye)), self.in_features).t()[: self.out_features].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        m = flat.shape[0]
        y = _sum_hi_lo(self._kernel(_hi_lo(flat.float())), m)[:, : self.out_features]
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group}"


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@dataclass(frozen=True)
class Swap:
    """One Linear of the LLM and its quantised stand-in: ``parent.name`` is ``old`` or ``new``."""

    parent: nn.Module
    name: str
    old: nn.Module
    new: nn.Module


@torch.no_grad()
def quantised_swaps(llm: nn.Module, precision: str) -> list[Swap]:
    """The quantised stand-ins for the LLM's Linears, built from their current weights (not yet in place).

    ``llm``: llama_infer's LlamaLM (or transformers' LLaMA) after the glue is loaded, with or without
    the MoE installed. Quantised: attention q/k/v/o, the (shared, frozen) base MLP of every layer, the
    LM head (int8; untied from the embedding, which stays fp32). Not: the router, LoRA deltas, norms,
    the embedding. Linears already quantised (or with a bias) are left out: idempotent.
    """
    check_precision(precision)
    if precision == "fp32":
        return []
    body_cls = Int4Linear if precision == "int4" else Int8Linear
    places: list[tuple[nn.Module, str, type]] = []
    for layer in llm.model.layers:
        places += [(layer.self_attn, name, body_cls) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
        mlp = getattr(layer.mlp, "base", layer.mlp)  # MoEFeedForward keeps the frozen MLP as .base
        places += [(mlp, name, body_cls) for name in ("gate_proj", "up_proj", "down_proj")]
    places.append((llm, "lm_head", Int8Linear))
    swaps = []
    for parent, name, cls in places:
        old = getattr(parent, name)
        if isinstance(old, nn.Linear) and old.bias is None:
            swaps.append(Swap(parent, name, old, cls(old.weight).to(old.weight.device)))
    return swaps


def quantise_llm(llm: nn.Module, precision: str) -> QuantReport:
    """Swap the LLM's Linear weights for quantised ones, in place, for good (CPU inference only): the
    fp32 weights are freed with the old modules (the embedding keeps its own). ``fp32`` does nothing."""
    swaps = quantised_swaps(llm, precision)
    for s in swaps:
        setattr(s.parent, s.name, s.new)
    before = sum(s.old.weight.numel() * s.old.weight.element_size() for s in swaps)
    return QuantReport(precision, len(swaps), before, sum(_weight_bytes(s.new) for s in swaps))


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


__all__ = ["DECODE_ROWS", "PRECISIONS", "Int4Linear", "Int8Linear", "QuantReport", "Swap", "check_precision",
           "quantise_llm", "quantised_swaps", "swapped_in"]
