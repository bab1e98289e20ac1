"""What every command that talks to a model shares: the --remote/--token/--glue/--device options
and the runtime they pick (a local model or a `medplib serve`)."""

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
        return RemoteRuntime(args.remote, token=args.token)  # the server's preset is the one used
    from ..local import LocalRuntime

    return LocalRuntime(preset=args.preset, glue=getattr(args, "glue", None), device=getattr(args, "device", "cpu"),
                        precision=getattr(args, "precision", None))
