"""A released medplib-7b folder → its Segmenter and Asker, sharing one load (LocalRuntime's 7b path).

The checkpoint's SAM-Med2D (encoder with adapters, prompt encoder, decoder) serves both the direct prompts
and the ``<SEG>`` tokens, in fp32 on either device (as LiteMedSAM does: devices.py). The rest (LLaMA with its
MoE experts, CLIP, the glue) is stored in ``dtype``, or with ``load_in`` its decoder layers' Linear weights in
bitsandbytes' 8-bit / 4-bit (NF4) on CUDA; CUDA computes under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..presets import MedPLIBConfig
from .asker import Asker
from .segmenter import SamSegmenter

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ReleasedLoad:
    """How a released checkpoint is placed: ``device``; ``dtype`` fp32 | bf16; ``load_in`` None | 8bit | 4bit."""

    folder: Path
    device: str
    dtype: str
    load_in: str | None = None
    estimate: object = None  # the MemoryEstimate checked before loading (modeling/memory_estimate.py)


def build_released(cfg: MedPLIBConfig, load: ReleasedLoad) -> tuple[SamSegmenter, Asker]:
    from ..modeling.medplib import build_medplib

    model = build_medplib(cfg, pretrained=True, weights=load.folder)  # fp32 on the CPU, loaded strictly
    sam = model.sam.float()  # SAM-Med2D computes in fp32 whatever the checkpoint's dtype
    for child in model.children():  # the rest in the chosen dtype
        if child is not sam:
            child.to(dtype=TORCH_DTYPES["bf16" if load.load_in else load.dtype])
    if load.load_in is not None:
        quantise_with_bitsandbytes(model.llm, load.load_in)
    model = model.to(load.device)  # bitsandbytes quantises here, as the Linear weights reach the GPU
    segmenter = SamSegmenter(sam, sam_normalise=True)
    return segmenter, Asker(model, segmenter)


def quantise_with_bitsandbytes(llm: nn.Module, load_in: str) -> int:
    """The decoder layers' Linear layers (attention and every expert's MLP, not the routers nor the LM head)
    → bitsandbytes' Linear8bitLt / Linear4bit (NF4, bf16 compute), weights quantised when moved to CUDA.
    Returns how many were replaced. Needs ``bitsandbytes`` (checked before loading: local.py)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise InputError(f"--load-in {load_in} needs bitsandbytes (pip install bitsandbytes)") from None
    replaced = 0
    for layer in llm.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear or name == "router":
                    continue
                setattr(parent, name, _bnb_linear(bnb, child, load_in))
                replaced += 1
    return replaced


def _bnb_linear(bnb, linear: nn.Linear, load_in: str) -> nn.Module:
    weight = linear.weight.data.to(torch.bfloat16)
    if load_in == "8bit":
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  has_fp16_weights=False, threshold=6.0)
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                compute_dtype=torch.bfloat16, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.data.to(torch.bfloat16), requires_grad=False)
    return new


__all__ = ["ReleasedLoad", "TORCH_DTYPES", "build_released", "quantise_with_bitsandbytes"]
