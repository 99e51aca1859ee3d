"""Probe heads on frozen encoder tokens: an attentive probe and a linear probe.

Both take tokens (B, N, D) (optionally with a token type per position: 0 = observed, 1 = forecast) and
return one logit vector per output, e.g. {"verb": (B, 97), "noun": (B, 300), "action": (B, 3806)}.

AttentiveProbe (V-JEPA 2's `AttentiveClassifier`):

    tokens (B, N, D) [+ token type embedding]
      --> (depth - 1) self-attention Blocks over the tokens (V-JEPA 2: 3; here 0 by default)
      --> one cross-attention block: one learned query per output attends to the tokens,
          q = q + xattn(q, LN(tokens)); q = q + MLP(LN(q))                         (B, Q, D)
      --> LayerNorm --> one Linear per output, on its own query                  {name: (B, C)}

With no self-attention block before it, the cross-attention of *learned* queries is computed as an
attention-weighted pooling followed by the value projection, which is exactly the usual
softmax(q W_q (x W_k)^T / sqrt(d)) (x W_v) but costs O(N D) per query and head instead of
O(N D^2) for projecting every token to keys and values:

    score_n = (W_k^T q_h) . x_n / sqrt(d)        (the key bias adds the same constant to every score)
    out_h   = W_v,h (sum_n a_n x_n) + b_v,h      (the attention weights a_n sum to 1)

That makes a 20-head hyper-parameter grid of attentive probes cheap enough for a CPU.

LinearProbe: mean of the tokens (per token type, concatenated) --> LayerNorm --> one Linear per output.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from einops import rearrange
from torch import Tensor, nn

from worldmodel.models.layers import MLP, Block, init_layer_norm, init_linear_or_conv, key_padding_mask

__all__ = ["AttentiveProbe", "LinearProbe", "PoolingCrossAttention", "build_probe", "no_weight_decay"]


def _check_outputs(outputs: Mapping[str, int]) -> dict[str, int]:
    outputs = {str(name): int(n) for name, n in outputs.items()}
    if not outputs or any(n < 1 for n in outputs.values()):
        raise ValueError(f"worldmodel/models/probe.py: outputs must map names to class counts >= 1, got {outputs}")
    return outputs


class PoolingCrossAttention(nn.Module):
    """Multi-head cross-attention of learned queries (Q, D) to tokens (B, N, D), as pooling (exact).

    Parameters as in a standard cross-attention (q: Linear(D, D), kv: Linear(D, 2D), rows [k | v]); no
    output projection (as V-JEPA 2's). `key_valid` (B, N) masks padding tokens.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"worldmodel/models/probe.py: width {dim} is not divisible by {num_heads} heads; "
                "choose a probe head count that divides the encoder width"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def init_weights(self) -> None:
        init_linear_or_conv(self.q)
        init_linear_or_conv(self.kv)

    def forward(self, queries: Tensor, tokens: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """queries (Q, D) shared by the batch, tokens (B, N, D) -> (B, Q, D)."""
        dim = tokens.shape[-1]
        q = rearrange(self.q(queries), "q (h e) -> q h e", h=self.num_heads)  # (Q, H, Dh)
        w_k, w_v = rearrange(self.kv.weight, "(kv h e) d -> kv h e d", kv=2, h=self.num_heads)  # (H, Dh, D) each
        key_dirs = torch.einsum("qhe,hed->qhd", q, w_k) / math.sqrt(self.head_dim)  # (Q, H, D)
        scores = torch.einsum("bnd,qhd->bqhn", tokens, key_dirs)  # (B, Q, H, N)
        if key_valid is not None:
            valid = key_valid.bool() | ~key_valid.bool().any(dim=-1, keepdim=True)  # no all-masked rows
            scores = scores.masked_fill(~rearrange(valid, "b n -> b 1 1 n"), float("-inf"))
        attn = scores.softmax(dim=-1)
        pooled = torch.einsum("bqhn,bnd->bqhd", attn, tokens)  # (B, Q, H, D)
        out = torch.einsum("bqhd,hed->bqhe", pooled, w_v)  # (B, Q, H, Dh)
        if self.kv.bias is not None:
            out = out + rearrange(self.kv.bias[dim:], "(h e) -> h e", h=self.num_heads)
        return rearrange(out, "b q h e -> b q (h e)")


class CrossAttentionBlock(nn.Module):
    """q = q + xattn(q, LN(tokens)); q = q + MLP(LN(q))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.xattn = PoolingCrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def init_weights(self) -> None:
        init_layer_norm(self.norm1)
        init_layer_norm(self.norm2)
        self.xattn.init_weights()
        self.mlp.init_weights(layer_id=1)

    def forward(self, queries: Tensor, tokens: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """queries (Q, D), tokens (B, N, D) -> (B, Q, D)."""
        x = queries + self.xattn(queries, self.norm1(tokens), key_valid)  # (B, Q, D)
        return x + self.mlp(self.norm2(x))


class _TokenTypes(nn.Module):
    """A learned embedding per token type (observed / forecast), zero at init; absent for one type."""

    def __init__(self, dim: int, num_token_types: int) -> None:
        super().__init__()
        if num_token_types < 1:
            raise ValueError(f"num_token_types must be >= 1, got {num_token_types}")
        self.num_token_types = num_token_types
        self.embed = nn.Parameter(torch.zeros(num_token_types, dim)) if num_token_types > 1 else None

    def forward(self, tokens: Tensor, token_types: Tensor | None) -> Tensor:
        if self.embed is None or token_types is None:
            return tokens
        return tokens + self.embed[token_types]  # (B, N, D) + (N, D)


class AttentiveProbe(nn.Module):
    """Learned queries (one per output) cross-attending to the tokens; see the module docstring.

    depth: total number of blocks, the last one the cross-attention block (V-JEPA 2: 4 = 3 self-attention
    + 1 cross-attention; depth 1 = cross-attention only, V-JEPA 1's probe).
    """

    def __init__(
        self,
        embed_dim: int,
        outputs: Mapping[str, int],
        num_heads: int = 16,
        depth: int = 1,
        mlp_ratio: float = 4.0,
        num_token_types: int = 1,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"worldmodel/models/probe.py: depth must be >= 1 (the cross-attention block), got {depth}")
        self.outputs = _check_outputs(outputs)
        self.token_types = _TokenTypes(embed_dim, num_token_types)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, True, norm_eps) for _ in range(depth - 1))
        self.query_tokens = nn.Parameter(torch.zeros(len(self.outputs), embed_dim))  # (Q, D)
        self.cross_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, norm_eps)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, n) for name, n in self.outputs.items()})
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.query_tokens, std=0.02)
        for layer_id, block in enumerate(self.blocks, start=1):
            block.init_weights(layer_id)
        self.cross_block.init_weights()
        init_layer_norm(self.norm)
        for head in self.heads.values():
            init_linear_or_conv(head)

    def forward(self, tokens: Tensor, token_types: Tensor | None = None, key_valid: Tensor | None = None) -> dict[str, Tensor]:
        """tokens (B, N, D); token_types (N,) int; key_valid (B, N) bool -> {name: logits (B, C)}."""
        x = self.token_types(tokens, token_types)
        attn_mask = key_padding_mask(key_valid)
        for block in self.blocks:  # no positions: the encoder's rotary embedding already shaped the tokens
            x = block(x, None, attn_mask)
        queries = self.norm(self.cross_block(self.query_tokens, x, key_valid))  # (B, Q, D)
        return {name: head(queries[:, i]) for i, (name, head) in enumerate(self.heads.items())}


class LinearProbe(nn.Module):
    """Mean-pooled tokens (one mean per token type, concatenated) -> LayerNorm -> Linear per output."""

    def __init__(self, embed_dim: int, outputs: Mapping[str, int], num_token_types: int = 1, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.outputs = _check_outputs(outputs)
        self.num_token_types = int(num_token_types)
        width = embed_dim * self.num_token_types
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in self.outputs.items()})
        self.init_weights()

    def init_weights(self) -> None:
        init_layer_norm(self.norm)
        for head in self.heads.values():
            init_linear_or_conv(head)

    def forward(self, tokens: Tensor, token_types: Tensor | None = None, key_valid: Tensor | None = None) -> dict[str, Tensor]:
        """tokens (B, N, D); token_types (N,) int in [0, num_token_types) -> {name: logits (B, C)}."""
        weights = torch.ones(tokens.shape[:2], dtype=tokens.dtype, device=tokens.device)  # (B, N)
        if key_valid is not None:
            weights = weights * key_valid.to(tokens.dtype)
        if token_types is None:
            token_types = torch.zeros(tokens.shape[1], dtype=torch.long, device=tokens.device)
        pooled = []
        for t in range(self.num_token_types):
            w = weights * (token_types == t).to(tokens.dtype)  # (B, N)
            pooled.append(torch.einsum("bn,bnd->bd", w, tokens) / w.sum(dim=1, keepdim=True).clamp(min=1.0))
        x = self.norm(torch.cat(pooled, dim=-1))  # (B, T * D)
        return {name: head(x) for name, head in self.heads.items()}


def build_probe(
    kind: str,
    embed_dim: int,
    outputs: Mapping[str, int],
    num_heads: int = 16,
    depth: int = 1,
    num_token_types: int = 1,
) -> nn.Module:
    """"attentive" or "linear" probe."""
    if kind == "attentive":
        return AttentiveProbe(embed_dim, outputs, num_heads=num_heads, depth=depth, num_token_types=num_token_types)
    if kind == "linear":
        return LinearProbe(embed_dim, outputs, num_token_types=num_token_types)
    raise ValueError(f"worldmodel/models/probe.py: unknown probe kind {kind!r}; use 'attentive' or 'linear'")


def no_weight_decay(name: str, param: Tensor) -> bool:
    """Biases, norms, query tokens and token type embeddings are not weight-decayed."""
    return param.ndim <= 1 or "query_tokens" in name or "token_types" in name
