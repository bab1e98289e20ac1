"""The glue: the parts neither weight package has, trained by our own recipe.

Projector, region encoder, ``<SEG>`` projector, MoE expert LoRAs + router and the new token
rows. Until ``assets/<preset>-glue.safetensors`` exists they are randomly initialised (fixed
seed) and every consumer must say so.
"""

from __future__ import annotations

from pathlib import Path

from .presets import MedPLIBConfig

ASSETS = Path(__file__).resolve().parent / "assets"
GLUE_PARTS: dict[str, str] = {
    "vision_projector": "2-layer MLP+GELU, features → LLM tokens",
    "region_encoder": "region mask → 1 token between <region></region>",
    "seg_projector": "<SEG> hidden state → sparse prompt token",
    "moe_experts": "2 LoRA experts (grounding, vision-language) on every LLM FFN",
    "moe_router": "Linear → softmax, top-1",
    "new_token_embeddings": "<SEG> <region> </region> <im_start> <im_end> ...",
}


def glue_path(config: MedPLIBConfig) -> Path:
    return ASSETS / f"{config.preset}-glue.safetensors"


def glue_status(config: MedPLIBConfig) -> dict[str, tuple[str, bool]]:
    """name → (source, trained) for every glue part of ``config``."""
    path = glue_path(config)
    trained = path.is_file()
    source = f"glue file {path.name}" if trained else "random init (seed 0): not trained yet"
    return {name: (f"{desc}; {source}", trained) for name, desc in GLUE_PARTS.items()}
