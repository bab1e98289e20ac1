"""What a glue file's metadata says, read and checked without torch.

A glue's safetensors header names its format, the added tokens, the parts its stages trained and
the recipe (every stage's resolved config). The recipe decides how the MoE routes (``trained_routing``
→ a ``RoutingConfig``, routing.py). Everything here is plain JSON, so ``medplib info`` and ``medplib serve
--glue`` refuse a hand-broken file in one line before torch or any weight is loaded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

from ..errors import ModelError
from .routing import GROUND_EXPERT, STAGE_EXPERT, VL_EXPERT, RoutingConfig

FORMAT = "medplib-glue/1"
_MAX_HEADER = 100_000_000


def read_header(path: str | Path) -> dict:
    """The safetensors JSON header of ``path``; ModelError naming the file when it is not one."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
            size = f.seek(0, 2) - 8 - n
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        if max(ends, default=0) > size:  # a truncated copy: its tensors would not load
            raise ValueError(f"tensor data ends at byte {max(ends)} of {size}")
        return header
    except (OSError, ValueError, struct.error, KeyError, IndexError, TypeError) as exc:
        raise ModelError(f"glue file {path} is not readable safetensors: {exc}") from None


def read_glue_metadata(path: str | Path) -> dict:
    """``{"preset", "tokens", "trained_parts", "recipe", "routing", "reads_history"}`` of a glue file, every
    field checked (the recipe's routing too): ModelError naming the file and the field a hand edit broke."""
    meta = read_header(path).get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
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
    try:
        out["routing"] = trained_routing(out["recipe"])
        out["reads_history"] = out["routing"].reads_history
    except ModelError as exc:
        raise ModelError(f"glue file {path}: {exc}") from None
    check_standardisation(path)
    return out


def check_standardisation(path: str | Path) -> None:
    """The stored input standardisation (``*.standardise.mean`` / ``.std``, a few KB) read with numpy:
    a zero, negative or non-finite std, or a non-finite mean, would make every region token or
    ``<SEG>`` query NaN without an error. ModelError naming the file and the key."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                if not key.endswith(("standardise.std", "standardise.mean")):
                    continue
                value = f.get_tensor(key)
                if key.endswith("std") and not bool((np.isfinite(value) & (value > 0)).all()):
                    raise ModelError(f"glue file {path}: {key} holds a zero, negative or non-finite std")
                if key.endswith("mean") and not bool(np.isfinite(value).all()):
                    raise ModelError(f"glue file {path}: {key} holds a non-finite mean")
    except (OSError, ValueError, TypeError, SafetensorError) as exc:  # e.g. a bf16 copy: numpy has no bf16
        raise ModelError(f"glue file {path}: its standardisation cannot be read: {exc}") from None


def trained_routing(recipe: dict) -> RoutingConfig:
    """Route the MoE as the glue's stages were trained: before stage IV the router is untrained,
    so every token goes to the expert that stage trained (I/II: vision-language, III: grounding);
    after it, the router decides with the stage's top-k (capacity: the preset's eval factor), per
    token, or per question for a stage IV trained with ``routing: "sequence"``; earlier turns are read
    when some stage trained on them (``trained_on_history``). ModelError names a recipe field a hand
    edit broke; where the last stage names no stage I–IV the layers stay as built (the defaults)."""
    routing = _last_stage_routing(recipe) or RoutingConfig()
    return replace(routing, reads_history=trained_on_history(recipe))


def _last_stage_routing(recipe: dict) -> RoutingConfig | None:
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
        pool = last.get("question_pool", "mean")
        if pool not in ("mean", "last"):
            raise ModelError(f"recipe's question_pool {pool!r} is not 'mean' or 'last'")
        trailing = last.get("route_trailing_region", True)  # recipes from before the field: read
        if not isinstance(trailing, bool):
            raise ModelError(f"recipe's route_trailing_region {trailing!r} is not true or false")
        return RoutingConfig("sequence", threshold, VL_EXPERT, question_pool=pool, route_trailing_region=trailing)
    forced = last.get("dense_expert") if STAGE_EXPERT[stage] is None else STAGE_EXPERT[stage]
    if forced is not None and forced not in (0, 1):
        raise ModelError(f"recipe's dense_expert {forced!r} is not an expert (0 or 1)")
    top_k = _recipe_number(last, "top_k", 1, int) if forced is None else 1
    if forced is None and top_k not in (1, 2):
        raise ModelError(f"recipe's top_k {top_k!r} is not 1 or 2")
    return RoutingConfig("token", 0.5, forced, top_k)


def trained_on_history(recipe: dict) -> bool:
    """Whether any stage trained on answers that follow earlier turns (``history_examples`` > 0, which
    ``medplib train`` records). A glue trained on single questions only answers worse when it reads a
    chat's earlier turns (the shipped lite glue: closed accuracy 0.806 → 0.667 on the test split with
    two earlier questions and their reference answers before each; docs/training.md), so the runtime then answers
    each question on its own. Recipes from before the field: single-turn (our builder writes no other)."""
    stages = recipe.get("stages") or []
    if not isinstance(stages, list):
        raise ModelError("recipe's stages are not a list of stage configs")
    return any(_recipe_number(st, "history_examples", 0, int) > 0 for st in stages if isinstance(st, dict))


def _recipe_number(stage: dict, key: str, default, kind: type):
    value = stage.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
            or (kind is int and value != int(value)):
        raise ModelError(f"recipe's {key} {value!r} is not {'an integer' if kind is int else 'a number'}")
    return kind(value)


__all__ = ["FORMAT", "GROUND_EXPERT", "STAGE_EXPERT", "RoutingConfig", "VL_EXPERT", "read_glue_metadata",
           "read_header", "trained_on_history", "trained_routing"]
