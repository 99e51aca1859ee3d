"""Transformer layers shared by the encoder (vit.py) and the predictor (predictor.py).

One pre-norm `Block` (LayerNorm -> rotary self-attention -> residual, LayerNorm -> GELU MLP ->
residual). Parameter names follow V-JEPA 2 (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.fc2`) so its checkpoints map one to one.

A block runs on padded sequences (B, N, D) with a key mask, or on `PackedSequences`: the valid tokens
of several padded batches as rows (T, D), so that the projections and the MLP skip the padding and
only attention sees the padded layout (the context encoder's training pass, `VideoViT.forward_subsets`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from worldmodel.models.rope import RotaryTable, rotate

INIT_STD = 0.02


def init_linear_or_conv(module: nn.Module, std: float = INIT_STD) -> None:
    """Reference init: truncated normal (std 0.02, cut at +-2) weights, zero biases."""
    nn.init.trunc_normal_(module.weight, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_layer_norm(module: nn.LayerNorm) -> None:
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)


def take_tokens(tokens: Tensor, idx: Tensor) -> Tensor:
    """Tokens by index per sample: tokens (B, N, D), idx (B, K) int64 -> (B, K, D); idx (1, K) picks the
    same tokens of every sample.

    An index outside [0, N) raises, on the CPU too (`torch.take_along_dim` with a broadcast index reads
    past the tensor there without a word)."""
    if idx.shape[0] == 1 and tokens.shape[0] != 1:
        idx = idx.expand(tokens.shape[0], -1)
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


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


@dataclass
class PackedSequences:
    """Several padded batches of token sequences ("groups"), stored as their T valid tokens only.

    Linear layers, norms and MLPs run on the packed (T, D) rows, so padding costs nothing there;
    attention runs once per group on its padded (G, K) layout, rebuilt from the rows by `pad_rows`.

    pad_rows[g]: (G_g * K_g,) long, the packed row of each padded slot (padding slots: any row, their
        keys are masked and their outputs dropped).
    shapes[g]: (G_g, K_g).
    rope[g]: rotary table for the padded layout (broadcastable to (G_g, heads, K_g, head_dim)) or None.
    attn_mask[g]: (G_g, 1, 1, K_g) bool key mask (True = attend) or None.
    unpad_rows: (T,) long, the row of each packed token in the concatenation of all groups' padded
        layouts (flattened to (sum_g G_g * K_g, D)).
    """

    pad_rows: list[Tensor]
    shapes: list[tuple[int, int]]
    rope: list[RotaryTable | None]
    attn_mask: list[Tensor | None]
    unpad_rows: Tensor


def token_major(table: RotaryTable) -> RotaryTable:
    """A rotary table of `Rope3D` (made for (B, H, N, Dh) inputs) for q and k in the fused projection's
    (B, N, 2, H, Dh) layout: (N, d) -> (N, 1, 1, d), (B, 1, N, d) -> (B, N, 1, 1, d). Views only."""
    if isinstance(table, tuple):
        return tuple(token_major(t) for t in table)
    return (table if table.ndim == 2 else table.squeeze(-3))[..., None, None, :]


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

    def forward(self, x: Tensor, rope: RotaryTable | None = None, attn_mask: Tensor | None = None) -> Tensor:
        return self.proj(self._attend(self.qkv(x), rope, attn_mask))

    def forward_packed(self, x: Tensor, packed: PackedSequences) -> Tensor:
        """x (T, D) packed rows (see `PackedSequences`) -> (T, D); each group attends within its sequences."""
        qkv = self.qkv(x)  # (T, 3D), projections on valid tokens only
        outputs = [
            self._attend(qkv.index_select(0, pad_rows).unflatten(0, shape), rope, attn_mask).flatten(0, 1)
            for pad_rows, shape, rope, attn_mask in zip(packed.pad_rows, packed.shapes, packed.rope, packed.attn_mask)
        ]  # per group (G * K, D)
        x = torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # (sum G*K, D)
        return self.proj(x.index_select(0, packed.unpad_rows))  # (T, D)

    def _attend(self, qkv: Tensor, rope: RotaryTable | None, attn_mask: Tensor | None) -> Tensor:
        """qkv (B, N, 3D) -> attention output (B, N, D), before the output projection.

        Everything stays in the token-major layout of the fused projection: q and k are rotated as
        (B, N, 2, H, Dh) and handed to SDPA as transposed views, so its output is already (B, N, H, Dh)
        in memory and nothing is copied to merge the heads (nor back, in backward).
        """
        qkv = rearrange(qkv, "b n (qkv h d) -> b n qkv h d", qkv=3, h=self.num_heads)  # view
        q_and_k, v = qkv.split([2, 1], dim=2)  # views; backward concatenates the gradients once
        if rope is not None:
            q_and_k = rotate(q_and_k, token_major(rope))
        q, k = rearrange(q_and_k, "b n qk h d -> qk b h n d").unbind(0)  # (B, H, N, Dh) views
        out = F.scaled_dot_product_attention(q, k, rearrange(v, "b n 1 h d -> b h n d"), attn_mask=attn_mask)
        return rearrange(out, "b h n d -> b n (h d)")  # (B, N, D)


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

    def forward(
        self,
        x: Tensor,
        rope: RotaryTable | None = None,
        attn_mask: Tensor | None = None,
        packed: PackedSequences | None = None,
    ) -> Tensor:
        """x (B, N, D) with `rope` and `attn_mask`; or, with `packed`, packed rows x (T, D) whose
        rotary tables and masks come from `packed` (see `PackedSequences`). Both go through __call__,
        so wrappers of the block (FSDP units, activation checkpointing) apply to either."""
        if packed is not None:
            x = x + self.attn.forward_packed(self.norm1(x), packed)
        else:
            x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


def run_blocks(
    blocks: nn.ModuleList,
    x: Tensor,
    rope: RotaryTable | None,
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


def run_blocks_packed(blocks: nn.ModuleList, x: Tensor, packed: PackedSequences, checkpointing: bool) -> Tensor:
    """`run_blocks` for packed rows x (T, D) (see `PackedSequences`)."""
    for block in blocks:
        if checkpointing:
            x = checkpoint(block, x, None, None, packed, use_reentrant=False)
        else:
            x = block(x, packed=packed)
    return x
