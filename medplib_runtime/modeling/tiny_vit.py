"""TinyViT image encoder as shipped in LiteMedSAM (``lite_medsam.pth``): 256² → 256×64×64.

Parameter names match the checkpoint (``patch_embed.seq.*``, ``layers.i.blocks.j.*``,
``neck.*``) so it loads with ``strict=True``. That checkpoint's patch embedding is two 1×1
convolutions at stride 1, so stage 0 (MBConv) runs at full 256² resolution; patch merging
halves the grid twice (256 → 128 → 64) and keeps it for the last stage (320 channels).
``fuse_()`` folds every Conv+BatchNorm pair into one conv for inference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256
    # patch merging keeps the grid when going to one of these widths (LiteMedSAM's choice)
    no_stride_dims: tuple[int, ...] = (320, 448, 576)

    def resolutions(self) -> list[int]:
        """Grid side of each stage: full size, then /2, /4, /4."""
        return [self.img_size // (2 ** (i - 1 if i == 3 else i)) for i in range(len(self.depths))]


class ConvBN(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d, named ``c`` and ``bn`` as in the checkpoint."""

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        groups=conv.groups, bias=True)
        out.weight.copy_(conv.weight * scale[:, None, None, None])
        out.bias.copy_(bn.bias - bn.running_mean * scale)
        return out


class PatchEmbed(nn.Module):
    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        n = cfg.embed_dims[0]
        self.seq = nn.Sequential(ConvBN(cfg.in_chans, n // 2), nn.GELU(), ConvBN(n // 2, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → 3×3 depthwise → 1×1 project, + shortcut."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """B×C×H×W (or B×HW×C) → B×(H'W')×C': 1×1, 3×3 depthwise (stride 2 or 1), 1×1."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b = x.shape[0]
            x = x.view(b, self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head attention inside a window with a learned bias per relative offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p in points:
            for q in points:
                off = (abs(p[0] - q[0]), abs(p[1] - q[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("bias_idxs", torch.tensor(idxs).view(len(points), len(points)), persistent=False)
        self._bias_cache: torch.Tensor | None = None

    def train(self, mode: bool = True):
        self._bias_cache = None  # the table is rebuilt lazily in eval
        return super().train(mode)

    def _bias(self) -> torch.Tensor:
        if self.training:
            return self.attention_biases[:, self.bias_idxs]
        if self._bias_cache is None:
            self._bias_cache = self.attention_biases[:, self.bias_idxs].detach()
        return self._bias_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: B×N×C
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._bias().to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention → depthwise local conv → MLP, on a ``resolution``² grid of tokens."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×L×C, L = H·W
        h = w = self.resolution
        b, l, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            attn = self.attn(x)
        else:
            grid = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            windows = self.attn(windows)
            grid = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            attn = grid[:, :h, :w].reshape(b, l, c)
        x = x + attn
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, l).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    """A run of blocks (MBConv in stage 0, attention after) and an optional patch merging."""

    def __init__(self, blocks: list[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """``B×3×S×S`` in [0,1] → ``B×out_chans×(S/4)×(S/4)`` image embedding."""

    def __init__(self, cfg: TinyViTConfig = TinyViTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        res = cfg.resolutions()
        dims = cfg.embed_dims
        layers: list[nn.Module] = []
        for i, depth in enumerate(cfg.depths):
            down = None
            if i < len(cfg.depths) - 1:
                stride = 1 if dims[i + 1] in cfg.no_stride_dims else 2
                down = PatchMerging(res[i], dims[i], dims[i + 1], stride)
            if i == 0:
                blocks: list[nn.Module] = [MBConv(dims[0], cfg.mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dims[i], res[i], cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio,
                                       cfg.local_conv_size) for _ in range(depth)]
            layers.append(Stage(blocks, down))
        self.layers = nn.ModuleList(layers)
        self.out_grid = res[-1]
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, 1, bias=False), LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False), LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_grid, self.out_grid, c).permute(0, 3, 1, 2)
        return self.neck(x)

    @torch.no_grad()
    def fuse_(self) -> "TinyViT":
        """Fold BatchNorm into the preceding conv everywhere (inference only; irreversible)."""

        def fold(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, ConvBN):
                    setattr(module, name, child.fused())
                else:
                    fold(child)

        fold(self)
        return self
