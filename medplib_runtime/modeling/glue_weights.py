"""The glue's weights as one small safetensors file: only what our training changes, never the
base weights (LiteMedSAM's encoder, SmolLM2's layers) the pip packages already ship.

Keys: ``vision_projector.*``, ``region_encoder.*``, ``seg_projector.*``, ``ground_head.*`` (optional: files
from before it existed load without it), ``moe.{layer}.router.weight``,
``moe.{layer}.experts.{e}.{proj}.lora_A|lora_B``, ``new_token_rows`` (``n_new×D``: the rows of the
added tokens in the tied embedding / LM head), and optionally ``mask_decoder.*``. The metadata
names the preset, the added tokens, which parts were trained, and the recipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError

FORMAT = "medplib-glue/1"
OPTIONAL = ("ground_head.",)  # parts newer than the format: a file without them loads, the part stays untrained


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


def read_glue_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 — any unreadable file is one message
        raise ModelError(f"glue file {path} is not readable safetensors: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"glue file {path} is not a {FORMAT} file")
    out: dict = {"preset": meta.get("preset")}
    for key, kind in (("tokens", list), ("trained_parts", list), ("recipe", dict)):
        try:
            value = json.loads(meta[key])
        except (KeyError, TypeError, json.JSONDecodeError):
            value = None
        if not isinstance(value, kind):  # a hand-edited file: one line, not a traceback
            raise ModelError(f"glue file {path}: metadata {key!r} is missing or not a JSON {kind.__name__}")
        out[key] = tuple(value) if key == "trained_parts" else value
    return out


@torch.no_grad()
def load_glue(model, path: str | Path) -> dict:
    """Copy the glue in ``path`` into ``model`` (shapes and token list checked); returns its metadata."""
    from safetensors.torch import load_file

    meta = read_glue_metadata(path)
    try:
        routing = trained_routing(meta["recipe"])  # checked before any weight is copied into the model
    except ModelError as exc:
        raise ModelError(f"glue file {path}: {exc}") from None
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
            module.load_state_dict(part)
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
    apply_routing(model, routing)
    return meta


@dataclass(frozen=True)
class TrainedRouting:
    """How a glue's MoE routes, from its last stage (``trained_routing``)."""

    answer_routing: str = "token"  # "token": per token; "sequence": one expert per question (question_routing.py)
    question_threshold: float = 0.5
    forced_expert: int | None = None  # every token to this expert; None: the router decides
    top_k: int = 1


def trained_routing(recipe: dict) -> TrainedRouting | None:
    """Route the MoE as the glue's last stage was trained: before stage IV the router is untrained,
    so every token goes to the expert that stage trained (I/II: vision-language, III: grounding);
    after it, the router decides with the stage's top-k (capacity: the preset's eval factor), per
    token, or per question for a stage IV trained with ``routing: "sequence"``. ModelError names a
    recipe field a hand edit broke; None where the recipe names no stage (the routing is left as built)."""
    from .moe import STAGE_EXPERT, VL_EXPERT

    stages = recipe.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(st, dict) for st in stages):
        raise ModelError("recipe's stages are not a list of stage configs")
    if not stages:
        return None
    last = stages[-1]
    stage = _recipe_number(last, "stage", 0, int)
    if stage not in STAGE_EXPERT:
        return None
    if stage == 4 and last.get("routing") == "sequence":
        threshold = _recipe_number(last, "question_threshold", 0.5, float)
        if not 0.0 <= threshold <= 1.0:
            raise ModelError(f"recipe's question_threshold {threshold!r} is not a probability in [0, 1]")
        return TrainedRouting("sequence", threshold, VL_EXPERT)
    forced = last.get("dense_expert") if STAGE_EXPERT[stage] is None else STAGE_EXPERT[stage]
    if forced is not None and forced not in (0, 1):
        raise ModelError(f"recipe's dense_expert {forced!r} is not an expert (0 or 1)")
    top_k = _recipe_number(last, "top_k", 1, int) if forced is None else 1
    if forced is None and top_k not in (1, 2):
        raise ModelError(f"recipe's top_k {top_k!r} is not 1 or 2")
    return TrainedRouting("token", 0.5, forced, top_k)


def _recipe_number(stage: dict, key: str, default, kind: type):
    value = stage.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
            or (kind is int and value != int(value)):
        raise ModelError(f"recipe's {key} {value!r} is not {'an integer' if kind is int else 'a number'}")
    return kind(value)


def apply_routing(model, routing: TrainedRouting | None) -> None:
    from .moe import force_expert, set_routing

    if routing is None:
        model.answer_routing, model.question_threshold = "token", 0.5
        return
    model.answer_routing = routing.answer_routing  # "sequence": the Asker picks the expert per question
    model.question_threshold = routing.question_threshold
    force_expert(model.llm, routing.forced_expert)
    if routing.forced_expert is None:
        set_routing(model.llm, top_k=routing.top_k)


def apply_trained_routing(model, recipe: dict) -> None:
    """``trained_routing`` applied to ``model``."""
    apply_routing(model, trained_routing(recipe))
