"""Several processes (``torchrun``), on torch's own engines: DDP, or FSDP2 (``fully_shard``).

``ddp``: every process holds the whole model; gradients are all-reduced.
``fsdp``: every LLM decoder layer is one FSDP2 group and the rest of the train module the root
group (frozen and trained parameters together: FSDP2 reduce-scatters only the trained). With
``reshard_after_forward=False`` it is DeepSpeed ZeRO-2's equivalent (what MedPLIB trained with):
gradients and optimizer state stay sharded, parameters are gathered once per forward + backward.
Between steps parameters are sharded DTensors; what reads them for a file goes through
``full_optimizer_state`` here and ``glue_state`` (which gathers sharded tensors): every process
calls them, rank 0 writes. The frozen pixel encoder is left out (``ignored_params``): the embedder
runs it outside the forward, whole, in every process.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .params import keep_only_new_rows, part_parameters

def wrap(module: nn.Module, mode: str, trains: tuple[str, ...], chosen: list, world: int) -> tuple[nn.Module, list]:
    """→ (what the loop calls, the trained (name, parameter) list, which FSDP replaces)."""
    if world == 1:
        return module, chosen
    if mode == "ddp":
        # parts fed by only some examples (a region, a <SEG>) may get no gradient in a step
        unused = any(p in trains for p in ("region_encoder", "seg_projector", "ground_head", "mask_decoder"))
        return nn.parallel.DistributedDataParallel(module, find_unused_parameters=unused), chosen
    from torch.distributed.fsdp import fully_shard

    model = module.model
    with torch.no_grad():  # FSDP2 shards row-major tensors: undo column_major_linears (same values)
        for p in module.parameters():
            p.data = p.data.contiguous()
    for layer in model.llm.model.layers:
        fully_shard(layer, reshard_after_forward=False)
    fully_shard(module, reshard_after_forward=False, ignored_params=set(model.sam.image_encoder.parameters()))
    module.set_reduce_scatter_unused_params(True)  # FSDP2's find_unused_parameters: zeros where a rank used none
    if "new_token_rows" in trains:
        # the row hook must sit on the gathered embedding FSDP2 puts in the module for the forward (its
        # own pre-forward hook runs first); FSDP2 keeps that tensor, so this registers once
        module.register_forward_pre_hook(lambda m, args: keep_only_new_rows(m.model))
    return module, [(n, p) for part in trains for n, p in part_parameters(model, part)]  # the sharded ones


def grad_sync(runner: nn.Module, sync: bool):
    """DDP: skip the all-reduce on all but the last micro-batch. FSDP2 reduce-scatters every
    micro-batch, so full-size gradients never pile up (ZeRO-2 does the same)."""
    if sync or not isinstance(runner, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return runner.no_sync()


def _is_sharded(t) -> bool:
    return hasattr(t, "full_tensor")  # a DTensor (FSDP2); plain tensors have no such method


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``; over sharded gradients the norm is the global one (the
    shards' partial norms reduced, as torchtitan does), the same number every process scales by."""
    if not any(_is_sharded(p.grad) for p in params if p.grad is not None):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], 2.0)
    total = total.full_tensor() if _is_sharded(total) else total
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with sharded state gathered whole (every process must call it), so a
    checkpoint is the same file whatever the mode or process count."""
    sd = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: build new ones
    sd["state"] = {i: {k: v.full_tensor() if _is_sharded(v) else v for k, v in s.items()}
                   for i, s in sd["state"].items()}
    return sd


def load_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load a ``full_optimizer_state``; under FSDP each process keeps its own shard of it."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(_is_sharded(p) for p in params):
        from torch.distributed.tensor import distribute_tensor

        def local(p, v):
            if not _is_sharded(p) or not torch.is_tensor(v) or v.shape != p.shape:
                return v  # Adam's step counter, or a parameter FSDP left whole
            return distribute_tensor(v, p.device_mesh, p.placements, src_data_rank=None)  # every rank has v

        sd = {**sd, "state": {i: {k: local(params[i], v) for k, v in s.items()} for i, s in sd["state"].items()}}
    optimizer.load_state_dict(sd)


def rng_entries() -> dict:
    """The checkpoint's RNG entries: rank 0's state, and under torchrun every process's (their dropout
    draws differ, so each resumes its own). Every process must call it."""
    state = torch.get_rng_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {"torch_rng": state}
    states: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return {"torch_rng": states[0], "torch_rng_ranks": states}


def own_rng_state(saved: dict) -> torch.Tensor:
    """This process's saved RNG state (rank 0's when the checkpoint came from another process count)."""
    states = saved.get("torch_rng_ranks") or []
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and len(states) == torch.distributed.get_world_size():
        return states[torch.distributed.get_rank()]
    return saved["torch_rng"]


__all__ = ["clip_grad_norm_", "full_optimizer_state", "grad_sync", "load_optimizer_state", "own_rng_state",
           "rng_entries", "wrap"]
