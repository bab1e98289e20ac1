"""Which parameters a stage trains: everything else is frozen (requires_grad False).

Part names (TrainConfig.trains): ``vision_projector``, ``region_encoder``, ``seg_projector``,
``expert_ground`` (expert 0's LoRA in every layer), ``expert_vl`` (expert 1's), ``router``,
``ground_head`` (the <SEG> query's heat-map keys),
``new_token_rows`` (only the added tokens' rows of the tied embedding / LM head: trained as a
small delta (new_rows.py), or under FSDP through the embedding with a gradient hook that zeroes
the other rows; no weight decay either way, so the old rows stay exactly as they were),
``mask_decoder``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..modeling.glue_weights import first_new_row
from ..modeling.moe import force_expert
from . import new_rows

PARTS = ("vision_projector", "region_encoder", "seg_projector", "ground_head", "expert_ground", "expert_vl",
         "router", "new_token_rows", "mask_decoder")


def part_parameters(model, part: str) -> list[tuple[str, nn.Parameter]]:
    """(qualified name, parameter) of one glue part of a MedPLIB ``model``."""
    if part in ("vision_projector", "region_encoder", "seg_projector", "ground_head"):
        return [(f"{part}.{n}", p) for n, p in getattr(model, part).named_parameters()]
    if part in ("expert_ground", "expert_vl"):
        e = 0 if part == "expert_ground" else 1
        return [(f"moe.{i}.experts.{e}.{n}", p) for i, m in enumerate(model.moe)
                for n, p in m.experts[e].named_parameters()]
    if part == "router":
        return [(f"moe.{i}.router.weight", m.router.weight) for i, m in enumerate(model.moe)]
    if part == "new_token_rows":
        return [("llm.embed_tokens.weight", model.llm.get_input_embeddings().weight)]
    if part == "mask_decoder":
        return [(f"mask_decoder.{n}", p) for n, p in model.sam.mask_decoder.named_parameters()]
    raise InputError(f"unknown trainable part {part!r}; parts are {', '.join(PARTS)}")


def prepare_stage(model, trains: tuple[str, ...], forced_expert: int | None, *,
                  rows_as_delta: bool = False) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything, unfreeze ``trains``, route the MoE for the stage; → the trainable parameters.
    ``rows_as_delta``: the new token rows train as a small delta (new_rows.py; the trainer folds it
    in before it saves); otherwise the embedding trains with its old rows' gradient zeroed."""
    new_rows.detach(model)  # a run cut off by an exception may have left one
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.sam.parameters():  # SamParts is reachable from model: make sure it is frozen too
        p.requires_grad_(False)
    chosen: list[tuple[str, nn.Parameter]] = []
    for part in trains:
        if part == "new_token_rows" and rows_as_delta:
            chosen.append((new_rows.NAME, new_rows.attach(model)))
            continue
        for name, p in part_parameters(model, part):
            p.requires_grad_(True)
            chosen.append((name, p))
    if "new_token_rows" in trains and not rows_as_delta:
        keep_only_new_rows(model)
    force_expert(model.llm, forced_expert)
    return chosen


def keep_only_new_rows(model) -> None:
    """Zero the old rows of the embedding's gradient (a hook on the tensor the module holds now;
    once per tensor: FSDP re-calls this on the gathered copy it puts there for each forward)."""
    weight = model.llm.get_input_embeddings().weight
    start = first_new_row(model)
    if getattr(weight, "_medplib_row_hook", None) is not None:
        return

    def keep_new_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:start] = 0
        return grad

    weight._medplib_row_hook = weight.register_hook(keep_new_rows)


def param_groups(chosen: list[tuple[str, nn.Parameter]], *, lr: float, weight_decay: float,
                 router_lr: float | None = None, region_lr: float | None = None) -> list[dict]:
    """AdamW groups: no decay on the embedding (its frozen rows must stay bit-identical) or biases;
    the routers (``router_lr``) and the region encoder (``region_lr``) in groups of their own when
    their lr is given. ``lr_scale`` is each group's lr relative to the schedule's (the trainer sets
    ``lr`` every step)."""
    decay, no_decay = [], []
    own: dict[str, tuple[float, list]] = {}
    for name, p in chosen:
        if router_lr is not None and ".router." in name:
            own.setdefault("router", (router_lr, []))[1].append(p)
        elif region_lr is not None and "region_encoder." in name:
            own.setdefault("region_encoder", (region_lr, []))[1].append(p)
        else:
            (no_decay if name.startswith("llm.embed_tokens") or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "lr": lr, "weight_decay": 0.0, "lr_scale": 1.0}]
    for part_lr, params in own.values():
        groups.append({"params": params, "lr": part_lr, "weight_decay": 0.0, "lr_scale": part_lr / lr})
    return groups
