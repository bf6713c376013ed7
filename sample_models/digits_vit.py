"""Sample: tiny vision transformer (timm-style explicit attention) on 8x8 digits."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

try:  # imported as part of the ``sample_models`` package
    from . import _data
except ImportError:  # loaded by file path (qanalysis' spec loader): the same module, from the installed package
    from sample_models import _data

DESCRIPTION = "Tiny ViT: 2x2 patches, cls token, 2 pre-LN blocks with explicit MatMul/Softmax attention, on 8x8 digits"
METRIC_NAME = "accuracy (%)"
CHECKPOINT = Path(__file__).with_name("digits_vit.pt")


class Attention(nn.Module):
    """Multi-head self-attention written out like timm (no fused SDPA)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, N, head_dim)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """(N, 1, 8, 8) -> (N, 10) logits; 16 patches of 2x2 pixels plus a cls token."""

    def __init__(
        self,
        num_classes: int = 10,
        dim: int = 48,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        patch: int = 2,
        image: int = 8,
    ) -> None:
        super().__init__()
        num_patches = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 16, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def create_model() -> nn.Module:
    """A freshly initialised (untrained) model."""
    return DigitsViT()


build_model, calibration_batches, evaluation_batches, evaluate, training_batches, loss = _data.spec(
    create_model, CHECKPOINT, _data.DIGITS
)
