"""MedPLIB composed from its parts, for both presets (DESIGN §3).

    slice ─► pixel encoder ─► image embedding ──────────────────────────► mask decoder ─► masks
                 │ (lite: shared)                                    ▲ sparse: [<SEG> token]
    slice ─► vision tower ─► projector ─► <image> tokens ─┐          │ dense: no-mask
    region ─► region encoder ─────────► <region_feat> ────┼─► LLM (MoE FFN) ─► <SEG> hidden ─► seg projector
    question ─► tokenizer ────────────────────────────────┘

Placeholders are filled with ``masked_scatter`` after checking that counts match. That is
MedPLIB's grounding (``medplib-7b``); ``medplib-lite`` uses the seg projector's output as the
ground head's query instead: heat map over the image embedding → box → mask decoder (ground_head.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..glue.routing import RoutingConfig
from ..presets import IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, SPECIAL_TOKENS, MedPLIBConfig
from .litemedsam import SamParts, build_litemedsam, build_sam_decoder
from .generation import Prefill, cache_kwargs, new_cache
from .ground_head import GroundHead
from .moe import install_moe, route_as_configured
from .projector import VisionProjector
from .region_encoder import ClipRegionEncoder, RegionEncoder
from .sam_med2d import SamMed2DConfig, SamMed2DImageEncoder
from .seg_projector import SegProjector
from .vision_tower import ClipTower, PooledPixelFeatures

GLUE_SEED = 0


@dataclass(frozen=True)
class MedPLIBOutput:
    """``MedPLIB.forward``'s result. The LM head (49k wide, the costliest matmul) is left to the caller,
    at the positions it needs: training's text loss at the supervised ones, decoding at the last."""

    hidden: torch.Tensor  # 1×T×D last-layer states (at each <SEG>: the seg projector's input)


class MedPLIB(nn.Module):
    def __init__(self, cfg: MedPLIBConfig, *, sam: SamParts, llm: nn.Module, tokenizer, vision_tower: nn.Module,
                 routing: RoutingConfig = RoutingConfig()):
        super().__init__()
        self.cfg = cfg
        self.sam = sam
        self.llm = llm
        self.tokenizer = tokenizer
        self.vision_tower = vision_tower
        self.glue_file: Path | None = None  # the glue loaded into this model (None: random-init glue)
        self.weights_folder: Path | None = None  # a released checkpoint's folder (released_checkpoint.py)
        self.routing = routing  # the glue's recipe's (glue/routing.py); the MoE layers are set to it below
        self.token_ids: dict[str, int] = {}
        torch.manual_seed(GLUE_SEED)  # untrained glue is reproducible
        self.vision_projector = VisionProjector(cfg.vision_feature_dim, cfg.llm_hidden)
        self.region_encoder = _region_encoder(cfg)
        self.seg_projector = SegProjector(cfg.llm_hidden, cfg.prompt_embed_dim)
        self.moe = install_moe(llm, cfg.moe)
        route_as_configured(llm, routing)
        self.ground_head = GroundHead(cfg.prompt_embed_dim)  # built last: the other parts' init is unchanged
        self.ground_head_trained = False  # set by load_glue; until then <SEG> masks take the token path

    @property
    def n_image_tokens(self) -> int:
        return self.cfg.vision_grid ** 2

    def vision_features(self, *, pixel_embedding: torch.Tensor,
                        clip_pixels: torch.Tensor | None = None) -> torch.Tensor:
        """→ ``1×N×C`` vision-tower features (what the projector and MedPLIB's region encoder read)."""
        if isinstance(self.vision_tower, PooledPixelFeatures):
            return self.vision_tower(pixel_embedding)
        if clip_pixels is None:
            raise ModelError("this preset's CLIP vision tower needs the slice image, not only its embedding")
        return self.vision_tower(clip_pixels)

    def image_tokens(self, *, pixel_embedding: torch.Tensor, clip_pixels: torch.Tensor | None = None,
                     features: torch.Tensor | None = None) -> torch.Tensor:
        """→ ``1×N×llm_hidden`` projected vision tokens (``features``: ``vision_features``' output, if at hand)."""
        if features is None:
            features = self.vision_features(pixel_embedding=pixel_embedding, clip_pixels=clip_pixels)
        return self.vision_projector(features)

    def region_token(self, pixel_embedding: torch.Tensor, region_mask: torch.Tensor, *,
                     vision_features: torch.Tensor | None = None) -> torch.Tensor:
        """Region mask in the padded model square (any size) → ``1×1×llm_hidden``. A ``"clip"`` region
        encoder (medplib-7b's) reads ``vision_features`` (the CLIP patch features), not the pixel embedding."""
        if isinstance(self.region_encoder, ClipRegionEncoder):
            if vision_features is None:
                raise ModelError(f"{self.cfg.preset}: the region token is read from the CLIP features: "
                                 "pass vision_features")
            return self.region_encoder(vision_features, region_mask)
        return self.region_encoder(pixel_embedding, region_mask)

    def embed_inputs(self, input_ids: torch.Tensor, *, image_tokens: torch.Tensor,
                     region_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``1×T`` → embeddings with placeholders filled (counts checked)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        embeds = _fill(embeds, input_ids == self.token_ids[IMAGE_PLACEHOLDER], image_tokens, "image")
        region_mask = input_ids == self.token_ids[REGION_PLACEHOLDER]
        if region_tokens is not None or bool(region_mask.any()):
            if region_tokens is None:
                raise ModelError("the prompt has a region placeholder but no region was given")
            embeds = _fill(embeds, region_mask, region_tokens, "region")
        return embeds

    def forward(self, input_ids: torch.Tensor, *, image_tokens: torch.Tensor, region_tokens: torch.Tensor | None = None,
                cache=None) -> MedPLIBOutput:
        """Token ids ``1×T`` with ``image_tokens`` (``1×N×D``) and ``region_tokens`` in their placeholders →
        the LLM's last-layer states. The one wiring of the LLM side: training runs it with gradients, the
        Asker's prefill with a KV ``cache`` (``prefill``); decoding continues from that cache (generation.py)."""
        embeds = self.embed_inputs(input_ids, image_tokens=image_tokens, region_tokens=region_tokens)
        body = self.llm.model
        kv = {} if cache is None else cache_kwargs(body, cache)
        return MedPLIBOutput(body(inputs_embeds=embeds, **kv).last_hidden_state)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, *, image_tokens: torch.Tensor,
                region_tokens: torch.Tensor | None = None) -> Prefill:
        """``forward`` over a prompt, keeping its KV cache: where ``generation.greedy_generate`` decodes on."""
        cache = new_cache(self.llm.model)
        t0 = time.perf_counter()
        out = self(input_ids, image_tokens=image_tokens, region_tokens=region_tokens, cache=cache)
        if input_ids.device.type == "cuda":  # GPU work is asynchronous: the prefill's time is its own
            torch.cuda.synchronize(input_ids.device)
        return Prefill(cache, out.hidden[:, -1], input_ids.shape[1], time.perf_counter() - t0)

    def seg_positions(self, token_ids) -> list[int]:
        """Where each ``<SEG>``'s state is read in a stream of ``token_ids`` (the preset's ``seg_state_offset``:
        medplib-7b reads the state that predicts ``<SEG>``, as MedPLIB was trained)."""
        seg = self.token_ids["<SEG>"]
        return [i + self.cfg.seg_state_offset for i, t in enumerate(token_ids) if int(t) == seg]

    def seg_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """``N×D`` hidden states at ``<SEG>`` positions → ``N×1×C`` sparse prompt tokens."""
        return self.seg_projector(hidden)

    @property
    def grounds_by_box(self) -> bool:
        """Whether ``<SEG>`` masks come from the ground head's box (the preset's choice, once trained)."""
        return self.cfg.grounding == "box" and self.ground_head_trained


def _fill(embeds: torch.Tensor, where: torch.Tensor, values: torch.Tensor, name: str) -> torch.Tensor:
    n_slots, n_values = int(where.sum()), values.shape[0] * values.shape[1]
    if n_slots != n_values:
        raise ModelError(f"{name} placeholders ({n_slots}) and {name} features ({n_values}) do not match")
    mask = where.unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(mask, values.to(embeds.dtype).reshape(-1))


def _region_encoder(cfg: MedPLIBConfig) -> nn.Module:
    if cfg.region_features == "clip":
        return ClipRegionEncoder(cfg.vision_feature_dim, cfg.llm_hidden, max_samples=cfg.region_max_samples)
    if cfg.region_features != "pixel":
        raise ModelError(f"region_features must be 'pixel' or 'clip', got {cfg.region_features!r}")
    return RegionEncoder(cfg.prompt_embed_dim, cfg.llm_hidden, max_samples=cfg.region_max_samples)


def _tiny_sam(cfg: MedPLIBConfig) -> SamParts:
    """SAM-Med2D's ViT-B image encoder (with its adapters, sam_med2d.py) + SAM's prompt encoder/decoder:
    medplib-7b's sizes, or toy ones for ``tiny_7b_config``."""
    big = cfg.preset == "medplib-7b"
    if big:
        encoder = SamMed2DConfig(image_size=cfg.pixel_image_size, out_chans=cfg.prompt_embed_dim)
    else:
        encoder = SamMed2DConfig(image_size=cfg.pixel_image_size, embed_dim=32, depth=2, num_heads=2,
                                 out_chans=cfg.prompt_embed_dim, window_size=2, global_attn_indexes=(1,))
    prompt, decoder = build_sam_decoder(embed_dim=cfg.prompt_embed_dim, grid=cfg.pixel_embed_grid,
                                        image_size=cfg.pixel_image_size, mlp_dim=2048 if big else 64,
                                        heads=8 if big else 2)
    return SamParts(SamMed2DImageEncoder(encoder), prompt, decoder, image_size=cfg.pixel_image_size).eval()


def build_medplib(cfg: MedPLIBConfig, *, pretrained: bool, sam: SamParts | None = None,
                  glue: "Path | None | bool" = None, light: bool = False, weights: "Path | None" = None) -> MedPLIB:
    """Build MedPLIB for ``cfg``. ``pretrained`` loads the real weights the preset names, and the
    shipped glue (``assets/<preset>-glue.safetensors``) if there is one; ``glue`` names another
    file (random base weights too), or ``False`` keeps the random-init glue (training starts from there).
    The model is built with the glue's routing (its recipe's ``RoutingConfig``). ``light`` (with
    ``pretrained``): the LLM for answering only, without transformers (llm.load_smollm2).

    medplib-lite: LiteMedSAM + SmolLM2 (glue randomly initialised until trained).
    medplib-7b: with ``pretrained``, the released checkpoint from the local folder ``weights``
    (released_checkpoint.py: MedPLIB's save layout, loaded strictly); without, the structure with random weights.
    """
    from .llm import add_special_tokens, build_random_llama, column_major_linears, load_smollm2

    if cfg.vision_tower == "litemedsam-tinyvit":
        sam = sam or build_litemedsam(pretrained=pretrained)
        tower: nn.Module = PooledPixelFeatures(cfg.vision_grid)
        if pretrained:
            llm, tokenizer = load_smollm2(light=light)
        else:
            llm, tokenizer = build_random_llama(cfg), _tiny_tokenizer()
    else:
        if pretrained:
            if weights is None:
                raise ModelError(f"{cfg.preset}: name the released checkpoint's local folder (weights=DIR)")
            from .released_checkpoint import load_released_checkpoint

            return load_released_checkpoint(Path(weights), compose=MedPLIB)
        sam = sam or _tiny_sam(cfg)
        tower = ClipTower(cfg)
        llm, tokenizer = build_random_llama(cfg), _tiny_tokenizer()
    path = _glue_to_load(cfg, pretrained=pretrained, glue=glue)
    routing = RoutingConfig()
    if path is not None:
        from ..glue.recipe import read_glue_metadata

        routing = read_glue_metadata(path)["routing"]  # every field checked before the model is built
    model = MedPLIB(cfg, sam=sam, llm=llm, tokenizer=tokenizer, vision_tower=tower, routing=routing)
    model.token_ids = add_special_tokens(llm, tokenizer, SPECIAL_TOKENS + (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER))
    column_major_linears(llm)  # resizing made a new (row-major) LM head: restore the fast decode layout
    if path is not None:
        from .glue_weights import load_glue

        load_glue(model, path)
        model.glue_file = path
    return model.eval()


def _glue_to_load(cfg: MedPLIBConfig, *, pretrained: bool, glue: "Path | None | bool") -> Path | None:
    """The glue file a build loads: ``glue`` when named, else the shipped one for a pretrained model."""
    if glue is False or (glue is None and not pretrained):
        return None
    from ..glue.files import glue_path

    path = Path(glue) if glue is not None else glue_path(cfg)
    return path if path.is_file() else None


def _tiny_tokenizer():
    """A small word-level tokenizer for random-weight models (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "</s>", "USER", ":", "ASSISTANT", "\n", "the", "lesion", "is", "a", "what", "?", "segment",
             "region", "in", "brain", "lung", "tumour", "here", "it"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
