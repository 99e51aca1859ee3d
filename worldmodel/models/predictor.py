"""Predictor: from the context tokens of a clip, predict the encoder's tokens at target positions.

context (B, Nc, D) --predictor_embed--> (B, Nc, P)  ┐
one learned mask token (P,) per target position      ┴ concat --> (B, Nc + Nt, P)
--> narrow pre-norm blocks with 3D RoPE of each token's grid position, full bidirectional attention,
padding keys masked --> predictor_norm --> predictor_proj (P -> D) --> targets only (B, Nt, D).

The token order inside the sequence does not matter (attention is permutation-equivariant and the
positions travel with the rotary embedding), so unlike V-JEPA 2 the sequence is not sorted by
position: the outputs are the same up to float summation order.

With `copy_context=True` or "last" (worldmodel's recipe, not V-JEPA 2's) a target token starts as its
mask token PLUS the embedded context token at the same spatial position and the latest earlier time,
when the context has one (future-prediction masks: the last seen frame; multi-block tubes span all
time and have none, so they are unchanged). The blocks then learn what changes rather than
re-deriving a static scene, so "copy the last frame" is the predictor's starting point, not a
baseline it has to discover. With "mean" the added token is instead the mean of the embedded context
tokens at the same spatial position over all context times (earlier and later): the context-mean
baseline, which beats copy-last for targets far from the context. Neither adds parameters.
"blend" starts from a learned mix of the two: last + g * (mean - last), where the gate
g = sigmoid(a + b * log(dt)) is per channel and per mask kind (a, b: the `copy_gate` parameter, zero at
init, so g = 0.5) and dt >= 1 is how many time steps the target lies after the copied context token.
So near targets can lean on the last frame and far ones on the mean, and the gate extrapolates
smoothly to offsets that training never posed (forecasts past the clip length). Targets with no
earlier context token at their position start from the mean, as in "mean". The gate's logits move
about as fast as any parameter under Adam (about the learning rate per step): in the tiny run's 400
steps it stays near 0.5 (0.47-0.52), an even mix. Scaled up 20x to learn faster, the future kind's
gate went to about 0.25 (its near targets favour the last frame) and the forecast 3-4 steps ahead got
worse (L1 0.353 / 0.350 against 0.346 / 0.343), so it is left at the plain scale.

`forward_kinds` runs several mask kinds at once (the training step): each kind's tokens are laid out
on the clip's token grid instead of [context | targets] with padding, which for masks that split the
grid (multi-block, future) is exactly the valid tokens, and all kinds go through the blocks as one batch.

Parameter names follow V-JEPA 2 (`predictor_embed`, `predictor_blocks.{i}.…`, `predictor_norm`,
`predictor_proj`); `mask_tokens` is one (num_mask_tokens, P) tensor where V-JEPA 2 keeps a list of
(1, 1, P) tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from worldmodel.models.layers import (
    Block, init_layer_norm, init_linear_or_conv, key_padding_mask, run_blocks, take_tokens,
)  # fmt: skip
from worldmodel.models.rope import Rope3D
from worldmodel.models.vit import grid_positions, token_positions


class Predictor(nn.Module):
    """The JEPA predictor (see the module note): a narrow transformer from context tokens to predictions of
    the encoder's tokens at target positions.

    `predictor(context, context_idx, context_valid, target_idx, target_valid, grid=(t, h, w), mask_kind=k)`
    takes the encoder's context tokens (B, Nc, D) at their raster indices (B, Nc) and returns (B, Nt, D)
    predictions for the raster indices `target_idx` (B, Nt); the valid masks (or None) mark padding;
    mask_kind picks the learned mask token. `forward_kinds` runs several mask kinds at once (training).
    """

    def __init__(
        self,
        embed_dim: int,
        pred_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_mask_tokens: int = 2,
        rope_layout: str = "standard",
        activation_checkpointing: bool = False,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        copy_context: bool | str = False,
    ) -> None:
        super().__init__()
        if num_mask_tokens < 1:
            raise ValueError("worldmodel/models/predictor.py: num_mask_tokens must be >= 1 (one per mask kind)")
        self.embed_dim = embed_dim
        self.pred_dim = pred_dim
        self.num_mask_tokens = num_mask_tokens
        self.activation_checkpointing = activation_checkpointing
        self.copy_context = copy_context_mode(copy_context)
        self.predictor_embed = nn.Linear(embed_dim, pred_dim)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, pred_dim))  # one per mask kind
        self.rope = Rope3D(pred_dim // num_heads, layout=rope_layout)
        self.predictor_blocks = nn.ModuleList(
            Block(pred_dim, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(pred_dim, eps=norm_eps)
        self.predictor_proj = nn.Linear(pred_dim, embed_dim)
        if self.copy_context == "blend":  # (kind, [a, b], P): gate sigmoid(a + b * log(dt)), see the module docstring
            self.copy_gate = nn.Parameter(torch.zeros(num_mask_tokens, 2, pred_dim))
        self.init_weights()

    def init_weights(self) -> None:
        init_linear_or_conv(self.predictor_embed)
        nn.init.zeros_(self.mask_tokens)
        if self.copy_context == "blend":
            nn.init.zeros_(self.copy_gate)
        for layer_id, block in enumerate(self.predictor_blocks, start=1):
            block.init_weights(layer_id)
        init_layer_norm(self.predictor_norm)
        init_linear_or_conv(self.predictor_proj)

    def forward(
        self,
        context: Tensor,
        context_idx: Tensor,
        context_valid: Tensor | None,
        target_idx: Tensor,
        target_valid: Tensor | None,
        grid: tuple[int, int, int],
        mask_kind: int = 0,
    ) -> Tensor:
        """Predict target tokens.

        context: (B, Nc, D) encoder outputs at context_idx (B, Nc); target_idx: (B, Nt) indices into
        the (t h w) raster of `grid`; *_valid: (B, N*) bool, False at padding (None: all valid);
        mask_kind: which learned mask token fills the targets. Returns (B, Nt, D).
        """
        if not 0 <= mask_kind < self.num_mask_tokens:
            raise ValueError(
                f"worldmodel/models/predictor.py: mask_kind {mask_kind} out of range; this predictor has "
                f"{self.num_mask_tokens} mask tokens (build it with num_mask_tokens = number of mask kinds)"
            )
        batch, num_context = context_idx.shape
        num_target = target_idx.shape[1]
        context = self.predictor_embed(context)  # (B, Nc, P)
        targets = self.mask_tokens[mask_kind].expand(batch, num_target, -1)  # (B, Nt, P)
        if self.copy_context:
            targets = targets + self._copied(context, context_idx, context_valid, target_idx, grid, mask_kind)  # (B, Nt, P)
        x = torch.cat([context, targets.to(context.dtype)], dim=1)  # (B, Nc + Nt, P)

        positions = token_positions(torch.cat([context_idx, target_idx], dim=1), grid)  # (B, Nc + Nt, 3)
        valid = None
        if context_valid is not None or target_valid is not None:
            if context_valid is None:
                context_valid = torch.ones_like(context_idx, dtype=torch.bool)
            if target_valid is None:
                target_valid = torch.ones_like(target_idx, dtype=torch.bool)
            valid = torch.cat([context_valid, target_valid], dim=1)  # (B, Nc + Nt)

        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        x = run_blocks(self.predictor_blocks, x, self.rope.table(positions), key_padding_mask(valid), checkpointing)
        return self.predictor_proj(self.predictor_norm(x[:, num_context:]))  # (B, Nt, D)

    def _copied(
        self, context: Tensor, context_idx: Tensor, context_valid: Tensor | None, target_idx: Tensor,
        grid: tuple[int, int, int], mask_kind: int,
    ) -> Tensor:
        """What `copy_context` adds to the target tokens: (B, Nt, P) from embedded context (B, Nc, P)."""
        if self.copy_context == "mean":
            return context_mean_by_position(context, context_idx, context_valid, target_idx, grid)
        slot, source_time = _latest_earlier(context_idx, context_valid, target_idx, grid)  # (B, Nt) each
        has_source = source_time >= 0
        last = take_tokens(context, slot) * has_source[..., None]  # (B, Nt, P)
        if self.copy_context == "last":
            return last
        mean = context_mean_by_position(context, context_idx, context_valid, target_idx, grid)  # (B, Nt, P)
        target_time = target_idx.div(grid[1] * grid[2], rounding_mode="floor")
        log_dt = (target_time - source_time).clamp(min=1).to(context.dtype).log()  # (B, Nt)
        a, b = self.copy_gate[mask_kind].to(context.dtype)  # (P,) each
        gate = torch.sigmoid(a + b * log_dt[..., None])  # (B, Nt, P)
        return torch.where(has_source[..., None], last + gate * (mean - last), mean)

    def forward_kinds(
        self,
        contexts: Sequence[Tensor],
        context_idx: Sequence[Tensor],
        context_valid: Sequence[Tensor | None],
        target_idx: Sequence[Tensor],
        target_valid: Sequence[Tensor | None],
        grid: tuple[int, int, int],
        mask_kinds: Sequence[int],
        grid_covered: bool = False,
    ) -> list[Tensor]:
        """Several mask kinds of the same clips in one pass (the training step's call).

        Returns `[self(contexts[j], context_idx[j], ..., grid, mask_kinds[j]) for j]`, equal up to float
        rounding, provided each sample's valid context and target indices are distinct tokens (true of
        every mask kind: they split the grid into disjoint sets). Instead of concatenating
        [context | targets] with padding, every kind's sequence is laid out on the clip's token grid,
        (B, N, P) in (t h w) order: embedded context tokens at their positions, mask tokens at the
        targets, and tokens that are neither (none for multi-block and future masks) masked out as keys.
        So padding costs nothing, every kind has the same length N and all kinds run as one batch
        (J * B, N, P) through the blocks, with one rotary table for the grid.

        grid_covered: the caller knows (on the host: `MaskBatch` counts) that every sample's valid context
        and target tokens together cover the whole grid in every kind, as multi-block and future masks
        do. Then no key is masked and attention runs without a mask, with the same result (on the CPU bit
        for bit; its flash kernel is a few per cent faster there without a mask), and on CUDA SDPA may
        pick its FlashAttention kernel, which takes no mask (untested here: no GPU).
        """
        num_kinds = len(contexts)
        if not num_kinds or not all(
            len(x) == num_kinds for x in (context_idx, context_valid, target_idx, target_valid, mask_kinds)
        ):
            raise ValueError("worldmodel/models/predictor.py: forward_kinds needs one entry per kind in every argument")
        for kind in mask_kinds:
            if not 0 <= kind < self.num_mask_tokens:
                raise ValueError(
                    f"worldmodel/models/predictor.py: mask_kind {kind} out of range; this predictor has "
                    f"{self.num_mask_tokens} mask tokens (build it with num_mask_tokens = number of mask kinds)"
                )
        num_tokens = math.prod(grid)
        device = context_idx[0].device
        embedded = self.predictor_embed(torch.cat(list(contexts), dim=1))  # (B, sum Nc, P), one projection for all kinds
        embedded = embedded.split([c.shape[1] for c in contexts], dim=1)
        sequences, keys = [], []
        for j in range(num_kinds):
            batch, pred_dim = embedded[j].shape[0], embedded[j].shape[-1]
            ctx_slot = _grid_slots(context_idx[j], context_valid[j], num_tokens)  # (B, Nc)
            tgt_slot = _grid_slots(target_idx[j], target_valid[j], num_tokens)  # (B, Nt)
            x = self.mask_tokens[mask_kinds[j]].to(embedded[j].dtype).expand(batch, num_tokens + 1, pred_dim)
            x = x.scatter(1, ctx_slot[..., None].expand(-1, -1, pred_dim), embedded[j])  # (B, N + 1, P)
            if self.copy_context:
                copied = self._copied(embedded[j], context_idx[j], context_valid[j], target_idx[j], grid, mask_kinds[j])  # (B, Nt, P)
                x = x.scatter_add(1, tgt_slot[..., None].expand(-1, -1, pred_dim), copied)
            known = torch.zeros(batch, num_tokens + 1, dtype=torch.bool, device=device)
            known = known.scatter(1, ctx_slot, True).scatter(1, tgt_slot, True)  # (B, N + 1) context or target
            sequences.append(x[:, :num_tokens])
            keys.append(known[:, :num_tokens])
        x = torch.cat(sequences) if num_kinds > 1 else sequences[0]  # (J * B, N, P)
        rope = self.rope.table(grid_positions(grid, device=device))  # (N, ...) shared by every sequence
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        attn_mask = None if grid_covered else key_padding_mask(torch.cat(keys))
        x = run_blocks(self.predictor_blocks, x, rope, attn_mask, checkpointing)
        x = x.chunk(num_kinds)  # J x (B, N, P)
        targets = torch.cat(
            [take_tokens(x[j], target_idx[j]) for j in range(num_kinds)], dim=1
        )  # (B, sum Nt, P)
        out = self.predictor_proj(self.predictor_norm(targets))  # (B, sum Nt, D)
        return list(out.split([idx.shape[1] for idx in target_idx], dim=1))


def copy_context_mode(value: bool | str | None) -> str | None:
    """The predictor's `copy_context` option: None (off), "last" (also True), "mean" or "blend"."""
    if value is None or value is False or value == "none":
        return None
    if value is True or value == "last":
        return "last"
    if value in ("mean", "blend"):
        return value
    raise ValueError(
        f"worldmodel/models/predictor.py: copy_context must be false, true/'last', 'mean' or 'blend', got {value!r}"
    )


def context_mean_by_position(
    context: Tensor, context_idx: Tensor, context_valid: Tensor | None, target_idx: Tensor, grid: tuple[int, int, int]
) -> Tensor:
    """For each target token, the mean of the context tokens (B, Nc, P) at its spatial position over all
    context times; zeros where the context has none. Returns (B, Nt, P). Vectorised, no host syncs."""
    positions = grid[1] * grid[2]
    batch, _, width = context.shape
    weight = torch.ones_like(context_idx, dtype=context.dtype) if context_valid is None else context_valid.to(context.dtype)
    spatial = context_idx.remainder(positions)  # (B, Nc)
    sums = context.new_zeros(batch, positions, width).scatter_add(
        1, spatial[..., None].expand(-1, -1, width), context * weight[..., None]
    )  # (B, S, P)
    counts = weight.new_zeros(batch, positions).scatter_add(1, spatial, weight)  # (B, S)
    means = sums / counts.clamp(min=1)[..., None]
    return take_tokens(means, target_idx.remainder(positions))  # (B, Nt, P)


def _grid_slots(idx: Tensor, valid: Tensor | None, num_tokens: int) -> Tensor:
    """Token indices (B, K) as slots of a (B, N + 1) grid layout: padding goes to the spare slot N."""
    return idx if valid is None else torch.where(valid, idx, num_tokens)


def latest_earlier_context(
    context_idx: Tensor, context_valid: Tensor | None, target_idx: Tensor, grid: tuple[int, int, int]
) -> tuple[Tensor, Tensor]:
    """For each target token, the context slot at the same spatial position and the latest earlier time.

    Returns (slot (B, Nt) long, has_source (B, Nt) bool); slot is 0 where there is no such context token.
    Vectorised over (B, Nt, Nc), no host syncs.
    """
    slot, source_time = _latest_earlier(context_idx, context_valid, target_idx, grid)
    return slot, source_time >= 0


def _latest_earlier(
    context_idx: Tensor, context_valid: Tensor | None, target_idx: Tensor, grid: tuple[int, int, int]
) -> tuple[Tensor, Tensor]:
    """`latest_earlier_context`, with the time step of the source token instead of has_source (-1: none)."""
    tokens_per_step = grid[1] * grid[2]
    ctx_t, ctx_s = context_idx.div(tokens_per_step, rounding_mode="floor"), context_idx.remainder(tokens_per_step)
    tgt_t, tgt_s = target_idx.div(tokens_per_step, rounding_mode="floor"), target_idx.remainder(tokens_per_step)
    match = (ctx_s[:, None, :] == tgt_s[:, :, None]) & (ctx_t[:, None, :] < tgt_t[:, :, None])  # (B, Nt, Nc)
    if context_valid is not None:
        match = match & context_valid[:, None, :]
    score = torch.where(match, ctx_t[:, None, :], torch.full_like(match, -1, dtype=ctx_t.dtype))
    best, slot = score.max(dim=2)  # (B, Nt)
    return slot, best
