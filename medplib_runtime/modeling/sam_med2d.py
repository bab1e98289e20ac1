"""SAM-Med2D's ViT image encoder (MedPLIB's pixel encoder for ``medplib-7b``), with its adapters.

SAM's ViT (windowed + global attention with decomposed relative positions, a conv neck) plus
SAM-Med2D's ``Adapter_Layer`` in every block: ``x + mlp(norm2(x)) + Adapter(norm2(x))``, the adapter
being channel attention (pool → Linear → ReLU → Linear → sigmoid) then a spatial conv/deconv pair with
a skip, then a LayerNorm. Parameter names match MedPLIB's ``visual_model.image_encoder`` so a released
checkpoint loads strictly (released_checkpoint.py). ``1×3×S×S`` (SAM-normalised) → ``1×C×S/16×S/16``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import SamMed2DConfig  # torch-free: the memory estimate counts from it too
from .common import LayerNorm2d


class Adapter(nn.Module):
    """SAM-Med2D's ``Adapter_Layer`` (mlp_ratio 0.25, skip connection on)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = int(dim * 0.25)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, dim, bias=False), nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                                     nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×H×W×C → B×H×W×C
        x = x.permute(0, 3, 1, 2)
        b, c = x.shape[:2]
        weighted = self.channel(x.mean(dim=(2, 3))).view(b, c, 1, 1) * x
        x = x + self.spatial(weighted)
        return self.norm(x.permute(0, 2, 3, 1))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def _rel_pos(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """SAM's ``get_rel_pos`` (tables are resized when the sizes differ from training)."""
    max_dist = 2 * max(q_size, k_size) - 1
    if table.shape[0] != max_dist:
        table = F.interpolate(table.reshape(1, table.shape[0], -1).permute(0, 2, 1), size=max_dist, mode="linear")
        table = table.reshape(-1, max_dist).permute(1, 0)
    q = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    return table[((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rel_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×H×W×C
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        rh, rw = _rel_pos(h, h, self.rel_pos_h), _rel_pos(w, w, self.rel_pos_w)
        r_q = q.reshape(q.shape[0], h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
        attn = (attn.view(-1, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(-1, h * w, h * w)
        out = attn.softmax(dim=-1) @ v
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def _windows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    b, h, w, c = x.shape
    ph, pw = (size - h % size) % size, (size - w % size) % size
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def _unwindow(x: torch.Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = x.shape[0] // (hp * wp // size // size)
    x = x.view(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :hw[0], :hw[1], :].contiguous()


class Block(nn.Module):
    def __init__(self, cfg: SamMed2DConfig, *, window: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, window if window else cfg.grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * cfg.mlp_ratio))
        self.Adapter = Adapter(dim)  # SAM-Med2D's name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            hw = x.shape[1:3]
            x, padded = _windows(x, self.window)
            x = _unwindow(self.attn(x), self.window, padded, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.Adapter(normed)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SamMed2DConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class SamMed2DImageEncoder(nn.Module):
    def __init__(self, cfg: SamMed2DConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.image_size
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid, cfg.grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, window=0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth))
        self.neck = nn.Sequential(nn.Conv2d(cfg.embed_dim, cfg.out_chans, 1, bias=False), LayerNorm2d(cfg.out_chans),
                                  nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False),
                                  LayerNorm2d(cfg.out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
