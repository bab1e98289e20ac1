"""The glue's weights as one small safetensors file: only what our training changes, never the
base weights (LiteMedSAM's encoder, SmolLM2's layers) the pip packages already ship.

Keys: ``vision_projector.*``, ``region_encoder.*``, ``seg_projector.*``, ``ground_head.*`` (optional: files
from before it existed load without it), ``moe.{layer}.router.weight``,
``moe.{layer}.experts.{e}.{proj}.lora_A|lora_B``, ``new_token_rows`` (``n_new×D``: the rows of the
added tokens in the tied embedding / LM head), and optionally ``mask_decoder.*``. The metadata
names the preset, the added tokens, which parts were trained, and the recipe. The recipe's routing
(``RoutingConfig``) is not copied into a model here: the model is built with it (``build_medplib``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError
from ..glue.recipe import FORMAT, read_glue_metadata
from .standardiser import InputStandardiser

# parts newer than the format: a file without them loads; the part stays untrained (the head) or the identity
# (the input standardisations)
OPTIONAL = ("ground_head.", "seg_projector.standardise.", "region_encoder.standardise.", "vision_projector.standardise.")


def glue_state(model) -> dict[str, torch.Tensor]:
    """Every glue tensor of ``model`` (a MedPLIB), detached and contiguous, by file key. Tensors
    sharded by FSDP2 (DTensors) are gathered whole: then every process must call this."""
    out: dict[str, torch.Tensor] = {}
    for name, module in _modules(model):
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value
    for i, moe in enumerate(model.moe):
        out[f"moe.{i}.router.weight"] = moe.router.weight
        for e, expert in enumerate(moe.experts):
            for key, value in expert.state_dict().items():
                out[f"moe.{i}.experts.{e}.{key}"] = value
    out["new_token_rows"] = _whole(model.llm.get_input_embeddings().weight)[first_new_row(model):]
    return {k: _whole(v).detach().contiguous().clone() for k, v in out.items()}


def _modules(model) -> tuple[tuple[str, torch.nn.Module], ...]:
    return (("vision_projector", model.vision_projector), ("region_encoder", model.region_encoder),
            ("seg_projector", model.seg_projector), ("ground_head", model.ground_head))


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2 shard) gathered whole (a collective); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def first_new_row(model) -> int:
    """Index of the first added token's row (the added tokens are the last rows)."""
    return min(model.token_ids.values())


def save_glue(model, path: str | Path, *, trained_parts: tuple[str, ...], recipe: dict,
              include_mask_decoder: bool = False, write: bool = True) -> Path:
    """Write the glue atomically (temp file + rename). A sharded model: every process calls this
    (the gather needs them all), only the one with ``write`` writes."""
    from safetensors.torch import save_file

    state = glue_state(model)
    if include_mask_decoder:
        state.update({f"mask_decoder.{k}": _whole(v).detach().contiguous().clone()
                      for k, v in model.sam.mask_decoder.state_dict().items()})
    path = Path(path)
    if not write:
        return path
    tokens = sorted(model.token_ids, key=model.token_ids.get)
    meta = {"format": FORMAT, "preset": model.cfg.preset, "tokens": json.dumps(tokens),
            "trained_parts": json.dumps(list(trained_parts)), "recipe": json.dumps(recipe, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.cpu() for k, v in state.items()}, str(tmp), metadata=meta)  # a CUDA run's tensors too
    tmp.replace(path)
    return path


@torch.no_grad()
def load_glue(model, path: str | Path) -> dict:
    """Copy the glue's weights in ``path`` into ``model`` (shapes and token list checked); returns its
    metadata. Its routing (``meta["routing"]``) is the model's to be built with (``build_medplib``)."""
    from safetensors.torch import load_file

    meta = read_glue_metadata(path)  # every field, the routing too, checked before any weight is copied
    tokens = sorted(model.token_ids, key=model.token_ids.get)
    if meta["tokens"] != tokens:
        raise ModelError(f"glue file {path} was trained with other added tokens ({meta['tokens']})")
    state = load_file(str(path))
    current = glue_state(model)
    missing = sorted(k for k in set(current) - set(state) if not k.startswith(OPTIONAL))
    if missing:
        raise ModelError(f"glue file {path} lacks {missing[:3]}… (another preset or an older format)")
    for key, value in state.items():
        if key.startswith("mask_decoder."):
            continue
        if key not in current or current[key].shape != value.shape:
            raise ModelError(f"glue file {path}: {key} does not fit this model")
    for name, module in _modules(model):
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        if part or not (name + ".").startswith(OPTIONAL):
            _load_part(module, part)
    model.ground_head_trained = ("ground_head" in meta["trained_parts"]
                                 and any(k.startswith("ground_head.") for k in state))
    for i, moe in enumerate(model.moe):
        moe.router.weight.copy_(state[f"moe.{i}.router.weight"])
        for e, expert in enumerate(moe.experts):
            prefix = f"moe.{i}.experts.{e}."
            expert.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    model.llm.get_input_embeddings().weight[first_new_row(model):] = state["new_token_rows"]
    decoder = {k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")}
    if decoder:
        model.sam.mask_decoder.load_state_dict(decoder)
    return meta


def _load_part(module: torch.nn.Module, part: dict[str, torch.Tensor]) -> None:
    """``part`` into ``module``; an optional sub-part the file lacks goes back to its default (a
    standardisation to the identity), so an older glue loads as it was trained."""
    module.load_state_dict(part, strict=False)  # every required key was checked above
    for sub_name, sub in module.named_children():
        if isinstance(sub, InputStandardiser) and not any(k.startswith(sub_name + ".") for k in part):
            sub.reset()

