"""Where the models run: a checked device name, and the precision each device computes in.

CPU computes in fp32 (torch's bf16 matmuls are slower than fp32 on the CPUs we measured). CUDA
computes the LLM and glue under bf16 autocast, as MedPLIB trained (DeepSpeed bf16): weights stay
in their stored dtype, matmuls run in bf16, reductions and losses in fp32. LiteMedSAM's encoder
and decoder run in fp32 on either device (small, and their masks stay those of the checkpoint).
"""

from __future__ import annotations

import contextlib

from .errors import InputError

DEVICES = ("cpu", "cuda")


def check_device(name: str) -> str:
    """``name`` ('cpu', 'cuda' or 'cuda:N') if this machine has it; else a one-line InputError."""
    base, _, index = name.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {name!r}")
    if base == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: this torch ({torch.__version__}) sees no CUDA GPU")
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    return name


def compute_precision(device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing (fp32) on CPU."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def module_device(module):
    """The device a module's parameters live on (CPU for a module without any)."""
    import torch

    for p in module.parameters():
        return p.device
    return torch.device("cpu")


__all__ = ["DEVICES", "check_device", "compute_precision", "module_device"]
