"""The glue: the parts neither weight package has, trained by our own recipe.

Projector, region encoder, ``<SEG>`` projector, MoE expert LoRAs + router and the new token
rows. ``assets/<preset>-glue.safetensors`` (written by ``medplib train``) holds them with the
list of parts its stages trained; a part not in that list is randomly initialised (fixed seed)
and every consumer must say so. Reading the list needs no torch: the safetensors header is JSON.
"""

from __future__ import annotations

from pathlib import Path

from ..presets import MedPLIBConfig
from .recipe import read_glue_metadata

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GLUE_PARTS: dict[str, str] = {
    "vision_projector": "2-layer MLP+GELU, features → LLM tokens",
    "region_encoder": "region mask → 1 token between <region></region>",
    "seg_projector": "<SEG> hidden state → prompt token (lite: the ground head's query)",
    "ground_head": "lite: <SEG> query × pixel embedding → heat map → box prompt for LiteMedSAM",
    "moe_experts": "2 LoRA experts (grounding, vision-language) on every LLM FFN",
    "moe_router": "Linear → softmax per layer: top-k per token, or one expert per question (the glue's recipe; "
                  "shipped: per question)",
    "new_token_embeddings": "<SEG> <region> </region> <im_start> <im_end> ...",
}
# which trained parts (training/params.py names) make each glue part count as trained
_NEEDS = {"vision_projector": ("vision_projector",), "region_encoder": ("region_encoder",),
          "seg_projector": ("seg_projector",), "ground_head": ("ground_head",),
          "moe_experts": ("expert_ground", "expert_vl"),
          "moe_router": ("router",), "new_token_embeddings": ("new_token_rows",)}


def glue_path(config: MedPLIBConfig) -> Path:
    return ASSETS / f"{config.preset}-glue.safetensors"


def trained_parts(path: Path) -> tuple[str, ...]:
    """The parts a glue file's stages trained, from its safetensors header (no torch needed);
    ModelError naming the file and the field when it is not a readable glue file or a hand edit
    broke its metadata (never "untrained": the file would not load)."""
    return read_glue_metadata(path)["trained_parts"]


def glue_status(config: MedPLIBConfig, path: Path | None = None) -> dict[str, tuple[str, bool]]:
    """name → (source, trained) for every glue part of ``config`` with the shipped glue, or ``path``."""
    path = path or glue_path(config)
    done = set(trained_parts(path)) if path.is_file() else set()
    out = {}
    for name, desc in GLUE_PARTS.items():
        if name == "ground_head" and config.grounding != "box":
            continue
        ok = all(p in done for p in _NEEDS[name])
        source = f"trained, {path.name}" if ok else "random init (seed 0): not trained yet"
        if name == "ground_head" and not ok and "seg_projector" in done:  # a glue from before the head
            ok, source = True, f"not in {path.name}: <SEG> masks take MedPLIB's token path"
        out[name] = (f"{desc}; {source}", ok)
    return out
