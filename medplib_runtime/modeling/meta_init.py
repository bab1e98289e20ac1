"""Build a large module without allocating or initialising its parameters (they are loaded next).

Inside ``parameters_on_meta()`` every parameter a module registers is moved to the meta device, so a
released 11.7 B-parameter medplib-7b costs no host memory and no random initialisation before its
checkpoint is assigned in (``load_state_dict(assign=True)``); buffers (RoPE frequencies, position ids)
are computed on the CPU as usual, because a checkpoint does not carry them. accelerate's
``init_empty_weights(include_buffers=False)`` does the same; this is its few lines without the dependency.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            kept = module._parameters[name]
            module._parameters[name] = nn.Parameter(kept.to("meta"), requires_grad=kept.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def meta_parameters(module: nn.Module) -> list[str]:
    """Names of parameters still on the meta device (none may be left once a checkpoint is loaded)."""
    return [name for name, p in module.named_parameters() if p.is_meta]
