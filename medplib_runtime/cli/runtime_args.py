"""What every command that talks to a model shares: the --remote/--token/--glue/--device options, medplib-7b's
--weights/--dtype/--load-in/--allow-cpu, and the runtime they pick (a local model or a `medplib serve`)."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..presets import DEFAULT_PRECISION, PRECISIONS


def add_remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote", metavar="URL", help="use a `medplib serve` runtime at URL instead of loading the model here")
    p.add_argument("--token", default=None, help="the server's token (default: $MEDPLIB_TOKEN)")
    p.add_argument("--glue", default=None, metavar="FILE",
                   help="glue file to use instead of the shipped one, e.g. a training run's adapter.safetensors")
    p.add_argument("--device", default="cpu", help="where a local runtime computes: cpu (default), cuda or cuda:N")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help=f"the local LLM's weights: {', '.join(PRECISIONS)} (weight-only, CPU; default {DEFAULT_PRECISION})")
    add_weights_args(p)


# medplib-7b's loading options: (flag, argparse keywords); the same on every local-model command and `serve`
WEIGHTS_ARGS = (
    ("--weights", dict(default=None, metavar="DIR",
                       help="medplib-7b: the released checkpoint's local folder (Huangxs/MedPLIB-7b-2e layout)")),
    ("--dtype", dict(default=None, choices=("fp32", "bf16"),
                     help="medplib-7b: weights in fp32 or bf16 (default bf16 on cuda, fp32 on cpu)")),
    ("--load-in", dict(default=None, choices=("8bit", "4bit"),
                       help="medplib-7b on cuda: the LLM's Linear weights in 8 or 4 bits (needs bitsandbytes)")),
    ("--allow-cpu", dict(action="store_true",
                         help="medplib-7b: run on the CPU anyway (well under 1 token/s for the real model)")),
)


def add_weights_args(p: argparse.ArgumentParser) -> None:
    for flag, kw in WEIGHTS_ARGS:
        p.add_argument(flag, **kw)


def weights_kwargs(args) -> dict:
    """LocalRuntime's medplib-7b keywords from parsed ``args`` (absent ones: their defaults)."""
    return {"weights": getattr(args, "weights", None), "dtype": getattr(args, "dtype", None),
            "load_in": getattr(args, "load_in", None), "allow_cpu": bool(getattr(args, "allow_cpu", False))}


def runtime_from_args(args):
    """A RemoteRuntime for --remote URL (the server's preset and glue), else a LocalRuntime."""
    if getattr(args, "remote", None):
        from ..remote import RemoteRuntime

        if getattr(args, "glue", None):
            raise InputError("--glue applies to the local runtime: a server uses the glue it was started with")
        if getattr(args, "device", "cpu") != "cpu":
            raise InputError("--device applies to the local runtime: a server runs on the device it was started with")
        if getattr(args, "precision", None) is not None:
            raise InputError("--precision applies to the local runtime: a server runs at the precision it was started "
                             "with (medplib serve --precision)")
        for flag, _ in WEIGHTS_ARGS:
            dest = flag[2:].replace("-", "_")
            if getattr(args, dest, None) not in (None, False):
                raise InputError(f"{flag} applies to the local runtime: a server loads the model it was started with "
                                 f"(medplib serve {flag})")
        return RemoteRuntime(args.remote, token=args.token)  # the server's preset is the one used
    from ..local import LocalRuntime

    return LocalRuntime(preset=args.preset, glue=getattr(args, "glue", None), device=getattr(args, "device", "cpu"),
                        precision=getattr(args, "precision", None), **weights_kwargs(args))
