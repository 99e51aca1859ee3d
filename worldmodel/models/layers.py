"""Transformer layers shared by the encoder (vit.py) and the predictor (predictor.py).

One pre-norm `Block` (LayerNorm -> rotary self-attention -> residual, LayerNorm -> GELU MLP ->
residual). Parameter names follow V-JEPA 2 (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.fc2`) so its checkpoints map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from worldmodel.models.rope import apply_rotary

INIT_STD = 0.02


def init_linear_or_conv(module: nn.Module, std: float = INIT_STD) -> None:
    """Reference init: truncated normal (std 0.02, cut at +-2) weights, zero biases."""
    nn.init.trunc_normal_(module.weight, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_layer_norm(module: nn.LayerNorm) -> None:
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)


def key_padding_mask(valid: Tensor | None) -> Tensor | None:
    """(B, K) bool validity -> SDPA boolean mask (B, 1, 1, K), True = may be attended to.

    A sample with no valid token at all attends to everything (no NaN rows); its outputs are
    meaningless but finite, and the losses ignore them through the same validity mask.
    """
    if valid is None:
        return None
    valid = valid.bool()
    valid = valid | ~valid.any(dim=-1, keepdim=True)
    return rearrange(valid, "b k -> b 1 1 k")


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, rotary q/k and SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"worldmodel/models/layers.py: width {dim} is not divisible by {num_heads} heads; "
                "choose num_heads that divides embed_dim"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # rows: [q | k | v], heads contiguous in each
        self.proj = nn.Linear(dim, dim)

    def init_weights(self, layer_id: int) -> None:
        init_linear_or_conv(self.qkv)
        init_linear_or_conv(self.proj)
        with torch.no_grad():
            self.proj.weight.div_(math.sqrt(2.0 * layer_id))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, attn_mask: Tensor | None = None) -> Tensor:
        qkv = rearrange(self.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)  # (3, B, H, N, Dh)
        q_and_k, v = qkv[:2], qkv[2]
        if rope is not None:
            q_and_k = apply_rotary(q_and_k, *rope)  # q and k in one pass
        q, k = q_and_k.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, Dh)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def init_weights(self, layer_id: int) -> None:
        init_linear_or_conv(self.fc1)
        init_linear_or_conv(self.fc2)
        with torch.no_grad():
            self.fc2.weight.div_(math.sqrt(2.0 * layer_id))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def init_weights(self, layer_id: int) -> None:
        """`layer_id` counts from 1; output projections are scaled by 1/sqrt(2 * layer_id)."""
        init_layer_norm(self.norm1)
        init_layer_norm(self.norm2)
        self.attn.init_weights(layer_id)
        self.mlp.init_weights(layer_id)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


def run_blocks(
    blocks: nn.ModuleList,
    x: Tensor,
    rope: tuple[Tensor, Tensor] | None,
    attn_mask: Tensor | None,
    checkpointing: bool,
) -> Tensor:
    """Run `blocks` in order; with `checkpointing`, recompute each block's activations in backward."""
    for block in blocks:
        if checkpointing:
            x = checkpoint(block, x, rope, attn_mask, use_reentrant=False)
        else:
            x = block(x, rope, attn_mask)
    return x
