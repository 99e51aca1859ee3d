"""VideoViT: the video encoder (V-JEPA 2 style ViT with 3D rotary positions).

video (B, C, T, H, W) --tubelet embedding (Conv3d, kernel = stride = (tubelet, p, p))--> tokens
(B, N, D) in (t h w) raster order --[optional: keep token_idx]--> pre-norm blocks with 3D RoPE
--> LayerNorm --> (B, N or K, D).

No CLS token and no position table: positions enter only through the rotary embedding of each
token's (t, h, w) grid coordinate, so any frame count (divisible by the tubelet), any frame size
(divisible by the patch) and any subset of tokens work with the same weights.

Parameter names follow V-JEPA 2 (`patch_embed.proj`, `blocks.{i}.…`, `norm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from worldmodel.models.layers import (
    Block,
    PackedSequences,
    init_layer_norm,
    init_linear_or_conv,
    key_padding_mask,
    run_blocks,
    run_blocks_packed,
    take_tokens,
)
from worldmodel.models.rope import Rope3D


def token_positions(token_idx: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Flat (t h w) raster indices (...,) -> integer (t, h, w) coordinates (..., 3)."""
    _, grid_h, grid_w = grid
    t, rest = token_idx.div(grid_h * grid_w, rounding_mode="floor"), token_idx.remainder(grid_h * grid_w)
    h, w = rest.div(grid_w, rounding_mode="floor"), rest.remainder(grid_w)
    return torch.stack((t, h, w), dim=-1)


def grid_positions(grid: tuple[int, int, int], device: torch.device | str | None = None) -> Tensor:
    """(t, h, w) coordinates of every token of a grid, in raster order: int64 (N, 3), N = t*h*w."""
    grid_t, grid_h, grid_w = grid
    return token_positions(torch.arange(grid_t * grid_h * grid_w, device=device), grid)


@dataclass
class VideoViTConfig:
    img_size: int | tuple[int, int] = 224  # nominal (H, W); any multiple of patch_size runs
    patch_size: int = 16
    num_frames: int = 16  # nominal; any multiple of tubelet_size runs
    tubelet_size: int = 2
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    rope_layout: str = "standard"  # "vjepa2" only for imported V-JEPA 2 checkpoints
    activation_checkpointing: bool = False


class TubeletEmbed(nn.Module):
    """Non-overlapping (tubelet x p x p) patches -> tokens (B, N, D) in (t h w) raster order."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def init_weights(self) -> None:
        init_linear_or_conv(self.proj)

    def forward(self, video: Tensor) -> Tensor:
        return rearrange(self.proj(video), "b d t h w -> b (t h w) d")


class VideoViT(nn.Module):
    """The video encoder (see the module note). Build a named size with `vit_tiny` ... `vit_giant` or
    `build_vit(name, **overrides)`, or any shape with a `VideoViTConfig`.

    `model(video)` takes float (B, C, T, H, W) clips (normalised, channels first; T divisible by the
    tubelet, H and W by the patch) or (B, C, H, W) images, and returns (B, N, D) tokens in (t h w) raster
    order; `model(video, token_idx)` runs only the tokens at `token_idx` (B, K) (the context), `grid(shape)`
    gives the (t, h, w) token grid, `forward_subsets` runs several token subsets of one clip at once.
    """

    def __init__(self, cfg: VideoViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_embed = TubeletEmbed(cfg.patch_size, cfg.tubelet_size, cfg.in_chans, cfg.embed_dim)
        self.rope = Rope3D(cfg.embed_dim // cfg.num_heads, layout=cfg.rope_layout)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.init_weights()

    def init_weights(self) -> None:
        self.patch_embed.init_weights()
        for layer_id, block in enumerate(self.blocks, start=1):
            block.init_weights(layer_id)
        init_layer_norm(self.norm)

    def grid(self, video_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """(t, h, w) token grid of a (B, C, T, H, W) video, or of a (B, C, H, W) image (t = 1)."""
        cfg = self.cfg
        if len(video_shape) == 4:
            frames, (height, width) = cfg.tubelet_size, video_shape[-2:]
        elif len(video_shape) == 5:
            frames, height, width = video_shape[-3:]
        else:
            raise ValueError(
                f"worldmodel/models/vit.py: expected a video (B, C, T, H, W) or an image (B, C, H, W), "
                f"got shape {tuple(video_shape)}"
            )
        if frames % cfg.tubelet_size:
            raise ValueError(
                f"worldmodel/models/vit.py: {frames} frames is not a multiple of the tubelet size "
                f"{cfg.tubelet_size}; sample a frame count divisible by it"
            )
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(
                f"worldmodel/models/vit.py: frame size {height}x{width} is not a multiple of the patch size "
                f"{cfg.patch_size}; crop or resize to a multiple of it"
            )
        return frames // cfg.tubelet_size, height // cfg.patch_size, width // cfg.patch_size

    def forward(
        self,
        video: Tensor,
        token_idx: Tensor | None = None,
        token_valid: Tensor | None = None,
    ) -> Tensor:
        """Encode a clip.

        video: float (B, C, T, H, W), or (B, C, H, W): an image, repeated to one tubelet.
        token_idx: (B, K) int64 indices into the (t h w) raster of tokens: keep only these (taken after
            the tubelet embedding, positions from the indices). One outside the grid raises (checked by
            the gather itself: no host sync).
        token_valid: (B, K) bool (or (B, N) without token_idx): False marks padding, which no token
            attends to. Outputs at padding positions are finite but meaningless.
        Returns (B, K, D) with token_idx, else (B, N, D), N = t*h*w in (t h w) raster order.
        """
        if not video.is_floating_point():
            raise TypeError(
                f"VideoViT takes normalised float video, got {video.dtype}; uint8 clips go through "
                "worldmodel.data.transforms.normalize_video first (WorldModel.encode does it)"
            )
        if video.ndim in (4, 5) and video.shape[1] != self.cfg.in_chans:
            raise ValueError(
                f"worldmodel/models/vit.py: expected {self.cfg.in_chans} channels in dim 1 of a (B, C, T, H, W) video "
                f"(or (B, C, H, W) image), got shape {tuple(video.shape)}; channels-last clips (B, T, H, W, C) "
                "need `einops.rearrange(x, 'b t h w c -> b c t h w')` first"
            )
        grid = self.grid(video.shape)
        if video.ndim == 4:
            video = repeat(video, "b c h w -> b c t h w", t=self.cfg.tubelet_size)
        x = self.patch_embed(video)  # (B, N, D)
        if token_idx is not None and token_idx.dtype != torch.long:
            token_idx = token_idx.long()
        if token_idx is None:
            positions = grid_positions(grid, device=x.device)  # (N, 3)
        else:
            x = take_tokens(x, token_idx)  # (B, K, D)
            positions = token_positions(token_idx, grid)  # (B, K, 3)
        rope = self.rope.table(positions)  # once per call, shared by all blocks
        checkpointing = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        x = run_blocks(self.blocks, x, rope, key_padding_mask(token_valid), checkpointing)
        return self.norm(x)

    def forward_subsets(
        self,
        video: Tensor,
        token_idx: Sequence[Tensor],
        token_valid: Sequence[Tensor | None] | None = None,
        num_valid: Sequence[int | None] | None = None,
    ) -> list[Tensor]:
        """Encode several token subsets of the same clips in one pass (e.g. one per mask kind).

        Returns `[self(video, idx, valid) for idx, valid in zip(token_idx, token_valid)]`, equal up to
        float rounding, but the tubelet embedding runs once, and the blocks run once over the valid
        tokens of all subsets packed together (padding costs nothing in the linear layers and MLPs);
        attention runs per subset on its padded layout, each sequence attending to its own valid tokens.

        token_idx[j]: (B, K_j) indices as in `forward`; token_valid[j]: (B, K_j) bool or None (all valid).
        num_valid[j]: the number of valid entries of token_valid[j] when the caller knows it on the host
            (`MaskBatch.context_count`): packing then needs no device-to-host sync. Otherwise it is counted.
        Outputs at padding positions are finite but meaningless, as in `forward`.
        """
        token_valid = list(token_valid) if token_valid is not None else [None] * len(token_idx)
        num_valid = list(num_valid) if num_valid is not None else [None] * len(token_idx)
        if not (len(token_idx) == len(token_valid) == len(num_valid)) or not token_idx:
            raise ValueError(
                "worldmodel/models/vit.py: forward_subsets needs one token_valid and num_valid entry per token_idx "
                f"(got {len(token_idx)}, {len(token_valid)}, {len(num_valid)})"
            )
        counts = [
            idx.numel() if valid is None else (int(valid.sum()) if count is None else int(count))
            for idx, valid, count in zip(token_idx, token_valid, num_valid)
        ]
        if sum(counts) == 0:  # nothing to pack: every position is padding
            return [self(video, idx, valid) for idx, valid in zip(token_idx, token_valid)]

        grid = self.grid(video.shape)
        if video.ndim == 4:
            video = repeat(video, "b c h w -> b c t h w", t=self.cfg.tubelet_size)
        tokens = self.patch_embed(video)  # (B, N, D), once for every subset
        batch, num_tokens, dim = tokens.shape
        device = tokens.device
        sources, pad_rows, shapes, ropes, masks, unpad_rows = [], [], [], [], [], []
        packed_offset = padded_offset = 0
        for idx, valid, count in zip(token_idx, token_valid, counts):
            groups, length = idx.shape
            slots = torch.arange(groups * length, device=device)  # padded slots of this subset, (B*K,)
            kept = slots if valid is None else torch.nonzero_static(valid.reshape(-1), size=count)[:, 0]  # (T_j,)
            rows = idx + torch.arange(groups, device=device)[:, None] * num_tokens  # (B, K) rows of tokens.flatten(0, 1)
            sources.append(rows.reshape(-1)[kept])
            packed = torch.arange(packed_offset, packed_offset + count, device=device)
            pad_rows.append(torch.zeros_like(slots).scatter(0, kept, packed))  # padding slots -> packed row 0
            shapes.append((groups, length))
            ropes.append(self.rope.table(token_positions(idx, grid)))  # (B, 1, K, ...) for the padded layout
            masks.append(None if count == groups * length else key_padding_mask(valid))  # no padding: no mask
            unpad_rows.append(kept + padded_offset)
            packed_offset += count
            padded_offset += groups * length
        layout = PackedSequences(pad_rows, shapes, ropes, masks, torch.cat(unpad_rows))
        x = tokens.reshape(batch * num_tokens, dim).index_select(0, torch.cat(sources))  # (T, D)
        checkpointing = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        x = self.norm(run_blocks_packed(self.blocks, x, layout, checkpointing))  # (T, D)
        return [x.index_select(0, rows).view(*shape, dim) for rows, shape in zip(pad_rows, shapes)]  # [(B, K_j, D)]


# V-JEPA 2's sizes: (embed_dim, depth, num_heads, mlp_ratio). vit_giant is their `vit_giant_xformers`
# (22 heads of 64 dims), the one all V-JEPA 2 ViT-g checkpoints use.
VIT_SIZES: dict[str, dict] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "vit_giant": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
}


def build_vit(name: str, **overrides) -> VideoViT:
    """Build a named size, e.g. build_vit("vit_large", img_size=256, rope_layout="vjepa2")."""
    if name not in VIT_SIZES:
        raise ValueError(f"worldmodel/models/vit.py: unknown model size {name!r}; use one of {sorted(VIT_SIZES)}")
    known = {f.name for f in fields(VideoViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"worldmodel/models/vit.py: {name}() got unknown options {unknown}; valid: {sorted(known)}")
    return VideoViT(VideoViTConfig(**{**VIT_SIZES[name], **overrides}))


def vit_tiny(**overrides) -> VideoViT:
    """ViT-tiny/16: 192 wide, 12 deep, 3 heads; overrides: any `VideoViTConfig` field (img_size, num_frames, ...)."""
    return build_vit("vit_tiny", **overrides)


def vit_small(**overrides) -> VideoViT:
    """ViT-small/16: 384 wide, 12 deep, 6 heads; overrides: any `VideoViTConfig` field (img_size, num_frames, ...)."""
    return build_vit("vit_small", **overrides)


def vit_base(**overrides) -> VideoViT:
    """ViT-base/16: 768 wide, 12 deep, 12 heads; overrides: any `VideoViTConfig` field (img_size, num_frames, ...)."""
    return build_vit("vit_base", **overrides)


def vit_large(**overrides) -> VideoViT:
    """ViT-large/16: 1024 wide, 24 deep, 16 heads (V-JEPA 2's ViT-L, 300M); overrides: any `VideoViTConfig` field (img_size, num_frames, ...)."""
    return build_vit("vit_large", **overrides)


def vit_huge(**overrides) -> VideoViT:
    """ViT-huge/16: 1280 wide, 32 deep, 16 heads (V-JEPA 2's ViT-H, 600M); overrides: any `VideoViTConfig` field (img_size, num_frames, ...)."""
    return build_vit("vit_huge", **overrides)


def vit_giant(**overrides) -> VideoViT:
    """ViT-giant/16: 1408 wide, 40 deep, 22 heads (V-JEPA 2's ViT-g, 1B); overrides: any `VideoViTConfig` field (img_size, num_frames, ...)."""
    return build_vit("vit_giant", **overrides)
