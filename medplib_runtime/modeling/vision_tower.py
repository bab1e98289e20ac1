"""Vision tower → feature tokens for the projector.

``medplib-lite`` shares the pixel encoder: the cached 256×64×64 LiteMedSAM embedding is
average-pooled to a ``vision_grid``² token grid (one encoder pass serves masks and text).
``medplib-7b`` uses CLIP ViT-L/14-336: penultimate layer, patch tokens without CLS (576).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import MedPLIBConfig


class PooledPixelFeatures(nn.Module):
    """``1×C×g×g`` pixel embedding → ``1×grid²×C`` tokens (no parameters)."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(embedding, self.grid).flatten(2).transpose(1, 2)


def _preset_clip_config(cfg: MedPLIBConfig):
    from transformers import CLIPVisionConfig

    if cfg.preset == "medplib-7b":  # ViT-L/14-336
        return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    return CLIPVisionConfig(hidden_size=cfg.vision_feature_dim, intermediate_size=cfg.vision_feature_dim * 2,
                            num_hidden_layers=2, num_attention_heads=4, image_size=cfg.vision_image_size,
                            patch_size=cfg.vision_image_size // cfg.vision_grid)  # same structure, toy sizes


class ClipTower(nn.Module):
    """transformers' CLIPVisionModel; features of the penultimate layer without CLS."""

    def __init__(self, cfg: MedPLIBConfig, config=None) -> None:
        """``config``: a ``CLIPVisionConfig`` to build (a released checkpoint's tower); else from ``cfg``."""
        super().__init__()
        from transformers import CLIPVisionModel

        config = config if config is not None else _preset_clip_config(cfg)
        self.model = CLIPVisionModel(config)
        self.image_size = config.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[-2][:, 1:]
