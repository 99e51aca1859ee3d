"""3D rotary position embedding (RoPE) over (time, height, width) token coordinates.

A query or key vector of size `head_dim` is split into three equal chunks of even size
`chunk = 2 * ((head_dim // 3) // 2)`, in the order time, height, width, followed by
`head_dim - 3 * chunk` leftover dims that are passed through unrotated (head_dim 64 -> 20+20+20 +4,
80 -> 26*3 + 2, 32 -> 10*3 + 2). Within a chunk, the axis coordinate `p` (an integer grid
coordinate: tubelet index, patch row, patch column; never rescaled) and the frequencies

    omega_j = 1 / base ** (j / (chunk / 2)),      j = 0 .. chunk/2 - 1

give the angles `theta_j = p * omega_j`. Elements are rotated in interleaved pairs (2i, 2i+1):

    out[2i]   = x[2i]   * cos(a) - x[2i+1] * sin(a)
    out[2i+1] = x[2i+1] * cos(b) + x[2i]   * sin(b)

which is `x * cos + pairswap(x) * sin` with `pairswap(x) = (-x1, x0, -x3, x2, ...)`, where the
per-element angle vectors `cos`, `sin` (length `chunk`) are built from the chunk/2 angles theta in one
of two layouts:

- ``layout="standard"``: each pair shares one frequency, a = b = theta_i (theta repeated
  element-wise: theta_0, theta_0, theta_1, theta_1, ...). This is a true 2-D rotation of every pair, so
  it preserves norms and q . k depends only on the relative position of q and k.
- ``layout="vjepa2"``: the layout of Meta's released V-JEPA 2 checkpoints. The angle vector is the
  chunk/2 angles tiled twice (theta_0 .. theta_{c/2-1}, theta_0 .. theta_{c/2-1}), so element e of
  the chunk uses theta_{e mod (chunk/2)}: pair (2i, 2i+1) uses a = theta_{2i mod c/2} and
  b = theta_{(2i+1) mod c/2}. The two elements of a pair do not share a frequency, so the map is NOT
  a rotation (it does not preserve norms, and scores are not purely relative). Everything else is
  identical to the standard layout: same chunk sizes and order (time, height, width), the same
  interleaved pair swap (not the rotate-half style), leftover dims last and unrotated, base 10000,
  integer coordinates without scaling. Use it only to run imported V-JEPA 2 weights. (The
  reference builds its tables in the dtype of q, so under bf16 autocast its angles are bf16; ours are
  always float32. In float32 both give bit-identical rotations.)

In the V-JEPA 2 encoder and predictor the coordinates are those of each token in the (t, h, w) grid
of the clip it came from (t in tubelet units); the predictor uses the same grid as the encoder. (The
reference predictor derives rows and columns from a square grid of img_size // patch_size per side,
so it agrees with this only for square inputs at that size, the only ones its checkpoints were trained
on; `worldmodel.checkpoints.load_vjepa2(..., predictor_positions="reference")` reproduces it exactly.)

`Rope3D.table(positions)` computes the rotation table once per forward pass; every block then calls
`rotate(q_and_k, table)`. For the standard layout (and an even head_dim) the table is the complex
unit e^{i theta} of every pair, so a rotation is one complex multiply of the pairs read as complex
numbers (no pair swap, no temporaries; equal to `apply_rotary` up to float rounding); the V-JEPA 2
layout, whose pairs do not share a frequency, keeps the real tables of `Rope3D.cos_sin` and
`apply_rotary`.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

ROPE_LAYOUTS = ("standard", "vjepa2")

RotaryTable = Tensor | tuple[Tensor, Tensor]  # complex e^{i theta} (standard layout) or (cos, signed_sin)


def apply_rotary(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotate `x` (..., N, head_dim) with the tables of `Rope3D.cos_sin` (broadcastable to x).

    x * cos + pairswap(x) * sin, with the sign of pairswap folded into the table:
    (x1, x0, x3, x2, ...) * (-sin, sin, -sin, sin, ...).
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
    return x * cos.to(x.dtype) + swapped * signed_sin.to(x.dtype)


def rotate(x: Tensor, table: RotaryTable) -> Tensor:
    """Rotate `x` (..., N, head_dim) with a table of `Rope3D.table` (broadcastable to x).

    A complex table rotates each pair (x[2i], x[2i+1]), read as the complex number x[2i] + i x[2i+1],
    by multiplying it with e^{i theta_i}. Reduced-precision inputs (bf16 / fp16 under autocast, which
    have no complex type here) are rotated in float32 and rounded back once.
    """
    if isinstance(table, tuple):
        return apply_rotary(x, *table)
    dtype = x.dtype
    pairs = x if dtype in (torch.float32, torch.float64) else x.float()
    if pairs.stride(-1) != 1 or any(s % 2 for s in pairs.stride()[:-1]) or (
        not torch.compiler.is_compiling() and pairs.storage_offset() % 2
    ):  # complex views need pairs at even offsets (true of the attention's q/k views)
        pairs = pairs.contiguous()
    rotated = torch.view_as_real(torch.view_as_complex(pairs.unflatten(-1, (-1, 2))) * table).flatten(-2)
    return rotated if rotated.dtype == dtype else rotated.to(dtype)


class Rope3D(nn.Module):
    """Rotary embedding of (t, h, w) grid coordinates for attention heads of size `head_dim`."""

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "standard") -> None:
        super().__init__()
        if layout not in ROPE_LAYOUTS:
            raise ValueError(
                f"worldmodel/models/rope.py: unknown rope layout {layout!r}; use one of {ROPE_LAYOUTS} "
                "('vjepa2' only to run imported V-JEPA 2 checkpoints)"
            )
        if head_dim % 2:
            raise ValueError(
                f"worldmodel/models/rope.py: attention head size {head_dim} (width / heads) is odd; rotary "
                "embedding rotates pairs of dims, so choose a width and head count whose ratio is even"
            )
        chunk = 2 * ((head_dim // 3) // 2)
        if chunk == 0:
            raise ValueError(
                f"worldmodel/models/rope.py: head_dim {head_dim} is too small for 3D rotary embedding; "
                "use at least 6 dims per attention head (fewer heads or a wider model)"
            )
        self.head_dim = head_dim
        self.base = float(base)
        self.layout = layout
        self.chunk = chunk  # rotated dims per axis (t, h, w)
        self.num_unrotated = head_dim - 3 * chunk

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, chunk={self.chunk}, base={self.base:g}, layout={self.layout!r}"

    def frequencies(self, device: torch.device | None = None) -> Tensor:
        """omega_j = 1 / base ** (j / (chunk / 2)), float32 (chunk/2,)."""
        half = self.chunk // 2
        exponent = torch.arange(half, dtype=torch.float32, device=device) / (half * 1.0)
        return 1.0 / (self.base**exponent)

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Angle tables for integer (t, h, w) coordinates, computed once per forward pass.

        positions: (N, 3) or (B, N, 3). Returns float32 (cos, signed_sin), each (N, head_dim) or
        (B, 1, N, head_dim): broadcastable against queries/keys (B, heads, N, head_dim). signed_sin is
        sin with its even elements negated (see `apply_rotary`); leftover dims hold cos 1, sin 0.
        """
        if positions.shape[-1] != 3:
            raise ValueError(
                f"worldmodel/models/rope.py: positions must end in 3 (t, h, w) coordinates, got shape "
                f"{tuple(positions.shape)}"
            )
        angles = positions.to(torch.float32)[..., None] * self.frequencies(positions.device)  # (..., N, 3, c/2)
        if self.layout == "standard":
            angles = repeat(angles, "... n a f -> ... n (a f pair)", pair=2)  # (..., N, 3c)
        else:
            angles = repeat(angles, "... n a f -> ... n (a tile f)", tile=2)  # (..., N, 3c)
        cos, sin = angles.cos(), angles.sin()
        signed_sin = torch.stack((-sin[..., 0::2], sin[..., 1::2]), dim=-1).flatten(-2)  # (-s0, s1, -s2, ...)
        if self.num_unrotated:
            pad = angles.new_zeros(*angles.shape[:-1], self.num_unrotated)
            cos = torch.cat([cos, pad + 1.0], dim=-1)  # leftover dims: identity
            signed_sin = torch.cat([signed_sin, pad], dim=-1)
        if positions.ndim == 3:
            cos, signed_sin = (rearrange(t, "b n d -> b 1 n d") for t in (cos, signed_sin))
        return cos, signed_sin

    def table(self, positions: Tensor) -> RotaryTable:
        """The rotation table that `rotate` applies, computed once per forward pass.

        Standard layout with an even head_dim: complex64 e^{i theta} per pair, (N, head_dim/2) or
        (B, 1, N, head_dim/2) (leftover pairs hold 1). Otherwise the real tables of `cos_sin`.
        """
        if self.layout != "standard" or self.head_dim % 2:
            return self.cos_sin(positions)
        if positions.shape[-1] != 3:
            raise ValueError(
                f"worldmodel/models/rope.py: positions must end in 3 (t, h, w) coordinates, got shape "
                f"{tuple(positions.shape)}"
            )
        angles = (positions.to(torch.float32)[..., None] * self.frequencies(positions.device)).flatten(-2)  # (..., N, 3c/2)
        if self.num_unrotated:
            angles = torch.cat([angles, angles.new_zeros(*angles.shape[:-1], self.num_unrotated // 2)], dim=-1)
        table = torch.polar(torch.ones_like(angles), angles)  # (..., N, head_dim/2) complex
        if positions.ndim == 3:
            table = rearrange(table, "b n d -> b 1 n d")
        return table

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x (B, heads, N, head_dim); positions (B, N, 3) or (N, 3) integer (t, h, w) coordinates."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"worldmodel/models/rope.py: x has {x.shape[-1]} dims per head, this Rope3D was built "
                f"for head_dim={self.head_dim}"
            )
        return rotate(x, self.table(positions))
