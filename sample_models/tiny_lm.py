"""Sample: a tiny byte-level decoder-only transformer (GPT-style) trained on CPython's documentation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

try:  # imported as part of the ``sample_models`` package
    from . import _data
except ImportError:  # loaded by file path (qanalysis' spec loader): the same module, from the installed package
    from sample_models import _data

DESCRIPTION = (
    "Tiny byte-level GPT: 4 pre-LN blocks (d=96, 4 heads, causal MatMul/Softmax attention, GELU MLP), "
    "context 64, on CPython's pydoc_data documentation topics"
)
METRIC_NAME = "perplexity (per byte)"
HIGHER_IS_BETTER = False
CHECKPOINT = Path(__file__).with_name("tiny_lm.pt")
VOCAB = 256  # bytes


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention written out (no fused SDPA), the projections named as in Llama."""

    def __init__(self, dim: int, num_heads: int, context: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.ones(context, context).tril().view(1, 1, context, context), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, C = x.shape
        q, k, v = (p(x).view(B, S, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, S, S)
        attn = attn.masked_fill(self.mask[:, :, :S, :S] == 0, float("-inf")).softmax(dim=-1)
        return self.o_proj((attn @ v).transpose(1, 2).reshape(B, S, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    """Pre-LayerNorm decoder block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, context: int) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim)
        self.self_attn = CausalSelfAttention(dim, num_heads, context)
        self.post_attention_layernorm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLM(nn.Module):
    """ids (N, S) int64 bytes -> logits (N, S, 256) for the next byte; S ≤ context."""

    def __init__(self, dim: int = 96, depth: int = 4, num_heads: int = 4, mlp_ratio: int = 4,
                 context: int = _data.TEXT_CONTEXT) -> None:  # fmt: skip
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.embed_positions = nn.Parameter(torch.zeros(1, context, dim))
        self.layers = nn.ModuleList([Block(dim, num_heads, mlp_ratio, context) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        nn.init.normal_(self.embed_positions, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids) + self.embed_positions[:, : ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def create_model() -> nn.Module:
    """A freshly initialised (untrained) model."""
    return TinyLM()


def unigram_perplexity() -> float:
    """The baseline a language model must beat: a unigram byte model's perplexity on the same held-out windows."""
    return _data.unigram_perplexity()


build_model, calibration_batches, evaluation_batches, evaluate, training_batches, loss = _data.spec(
    create_model, CHECKPOINT, _data.TEXT
)
