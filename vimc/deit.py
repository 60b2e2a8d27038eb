"""DeiT-Ti, the baseline ``vimc bench`` measures Vim against (the paper's Figure 1).

A minimal ViT written here, because timm has no place in vimc's dependencies: patch 16, width
192, depth 12, 3 heads, MLP ratio 4, LayerNorm eps 1e-6, a class token and a learned absolute
pos_embed: 5,717,416 parameters with 1000 classes, as timm's ``deit_tiny_patch16_224``, with
timm's parameter names. Its attention is either ``explicit`` (softmax(QK^T)V materialized, as
in timm 0.4, which the paper's DeiT baseline used) or ``sdpa`` (torch's fused
scaled_dot_product_attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention; ``attn_impl`` picks how softmax(QK^T)V is computed (the
    explicit form holds the (B, H, L, L) matrix, which is what makes DeiT's memory quadratic
    in tokens)."""

    def __init__(self, dim: int, num_heads: int, attn_impl: str = "explicit"):
        super().__init__()
        if attn_impl not in ("explicit", "sdpa"):
            raise ValueError(f"attn_impl must be 'explicit' or 'sdpa', got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (
            self.qkv(x)
            .reshape(B, L, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )  # each (B, H, L, hd)
        if self.attn_impl == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, L, L)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_impl: str = "explicit"
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DeiT(nn.Module):
    """A plain ViT with a class token (DeiT without distillation token), timm's names."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        attn_impl: str = "explicit",
    ):
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, embed_dim))
        self.blocks = nn.Sequential(
            *[ViTBlock(embed_dim, num_heads, mlp_ratio, attn_impl) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"DeiT built for {self.grid * self.patch_size}px input, got {x.shape[1]} patches"
            )
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


def deit_tiny(img_size: int = 224, num_classes: int = 1000, attn_impl: str = "explicit") -> DeiT:
    """DeiT-Ti (timm's ``deit_tiny_patch16_224``) at ``img_size``."""
    return DeiT(
        img_size=img_size,
        num_classes=num_classes,
        embed_dim=192,
        depth=12,
        num_heads=3,
        attn_impl=attn_impl,
    )


__all__ = ["Attention", "DeiT", "Mlp", "ViTBlock", "deit_tiny"]
