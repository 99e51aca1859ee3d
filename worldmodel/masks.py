"""How masks are drawn: which tokens of a clip are context, which are prediction targets.

A clip of T frames at H x W pixels becomes a token grid (t, h, w) = (T / tubelet, H / patch, W / patch),
flattened in (t h w) raster order. A *mask kind* splits that grid into two disjoint index sets:

- `context_idx`: the tokens the context encoder sees;
- `target_idx`: the tokens the predictor must fill in (compared with the target encoder's features).

Two kinds exist:

- `MultiBlockMask` (V-JEPA 2's recipe): the union of a few random 3D blocks is the target, the rest is
  context. `vjepa2_mask_kinds()` gives V-JEPA 2's pair: short-range (8 blocks at 15% of the frame) and
  long-range (2 blocks at 70%), both spanning every time step ("tubes").
- `FutureMask` (the world-model objective): the first k time steps are context (all spatial
  positions), every token after them is a target.

`MaskCollator` draws, for every sample and every kind, one split and pads them into one `MaskBatch`
per kind. Each kind is its own context-encoder pass and predictor pass with its own mask token
(`MaskBatch.kind` is the predictor's mask-token index), exactly as V-JEPA 2 runs its two mask types.

What differs from V-JEPA 2, on purpose:

- A sample's split depends only on (seed, epoch, index, kind): it comes from
  `np.random.default_rng([seed, epoch, index, kind])`. V-JEPA 2 draws the block size once per batch from
  a shared counter, so a sample's mask depends on its batch-mates, the worker count and the resume
  point. Here the block size is drawn per sample (shared by that sample's blocks, so one sample's mask
  has the same distribution as one sample of V-JEPA 2).
- Nothing is truncated. V-JEPA 2 cuts every sample's context and targets to the batch minimum, which
  makes the masking ratio depend on the per-GPU batch size and drops tokens late in raster order. Here
  each index tensor is padded to the batch maximum with index 0 and `valid=False`; the encoder and
  predictor ignore padded keys and the loss ignores padded targets.
- A mixture of objectives is a list of kinds, each applied to every sample. There is no per-sample
  "apply this kind with probability p": it would make the number of samples per pass vary from batch
  to batch (empty passes, DDP ranks disagreeing about which mask tokens get gradients, recompiles),
  for nothing a loss weight per kind cannot do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

Grid = tuple[int, int, int]  # (t, h, w) tokens

# How many times a sample's blocks are redrawn when they would leave no context token at all.
MAX_MASK_TRIES = 100


def _float_range(value: Any, name: str, low: float, high: float) -> tuple[float, float]:
    """A (min, max) pair from a number or a 2-sequence (YAML gives lists), checked to lie in [low, high]."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"masks.py: {name} must be a number or a (min, max) pair, got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not (low <= lo <= hi <= high):
        raise ValueError(f"masks.py: {name}={value!r} must satisfy {low} <= min <= max <= {high}")
    return lo, hi


def _check_grid(grid: Sequence[int]) -> Grid:
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"masks.py: grid must be three positive ints (t, h, w) in tokens, got {grid!r}")
    return int(grid[0]), int(grid[1]), int(grid[2])


class MaskKind(Protocol):
    """What the collator needs from a mask kind; write your own to add one (no registry needed)."""

    def check(self, grid: Grid) -> None:
        """Raise ValueError if this kind cannot be drawn on `grid`."""

    def sample(self, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(context_idx, target_idx): disjoint, non-empty int64 token indices; all randomness from `rng`."""


# --------------------------------------------------------------------------------------------------
# Mask kinds


@dataclass(frozen=True)
class MultiBlockMask:
    """Targets = the union of `num_blocks` random 3D blocks; context = every other token.

    Block size, drawn once per sample and shared by its blocks (V-JEPA 2's formulas):
    t = max(1, int(t_grid * s_t)) with s_t ~ U(temporal_scale); area = int(h_grid * w_grid * s) with
    s ~ U(spatial_scale); ar ~ U(aspect_ratio); h = round(sqrt(area * ar)), w = round(sqrt(area / ar)),
    each clipped to [1, grid side]. Each block is then placed uniformly at random. A draw whose blocks
    cover the whole grid (no context) is redrawn, up to MAX_MASK_TRIES times.
    """

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)

    def __post_init__(self) -> None:
        if int(self.num_blocks) < 1:
            raise ValueError(f"masks.py: MultiBlockMask.num_blocks must be >= 1, got {self.num_blocks}")
        object.__setattr__(self, "num_blocks", int(self.num_blocks))
        for name in ("spatial_scale", "temporal_scale"):
            object.__setattr__(self, name, _float_range(getattr(self, name), f"MultiBlockMask.{name}", 0.0, 1.0))
        object.__setattr__(
            self, "aspect_ratio", _float_range(self.aspect_ratio, "MultiBlockMask.aspect_ratio", 1e-3, 1e3)
        )

    def check(self, grid: Grid) -> None:
        _check_grid(grid)

    def block_size(self, grid: Grid, rng: np.random.Generator) -> tuple[int, int, int]:
        """One (t, h, w) block size in tokens."""
        t_grid, h_grid, w_grid = grid
        s_t = rng.uniform(*self.temporal_scale)
        s = rng.uniform(*self.spatial_scale)
        ar = rng.uniform(*self.aspect_ratio)
        t = max(1, int(t_grid * s_t))
        area = int(h_grid * w_grid * s)
        h = round(math.sqrt(area * ar))
        w = round(math.sqrt(area / ar))
        return min(t, t_grid), min(max(h, 1), h_grid), min(max(w, 1), w_grid)

    def sample(self, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(context_idx, target_idx): int64 token indices into the (t h w) grid, ascending, disjoint."""
        t_grid, h_grid, w_grid = grid
        t, h, w = self.block_size(grid, rng)
        for _ in range(MAX_MASK_TRIES):
            starts = rng.integers(0, t_grid - t + 1, size=self.num_blocks)  # (K,)
            tops = rng.integers(0, h_grid - h + 1, size=self.num_blocks)
            lefts = rng.integers(0, w_grid - w + 1, size=self.num_blocks)
            in_t = _span(starts, t, t_grid)  # (K, T) bool
            in_h = _span(tops, h, h_grid)  # (K, H)
            in_w = _span(lefts, w, w_grid)  # (K, W)
            blocks = in_t[:, :, None, None] & in_h[:, None, :, None] & in_w[:, None, None, :]  # (K, T, H, W)
            masked = blocks.any(axis=0).reshape(-1)  # (N,) True = target
            if not masked.all():
                return np.flatnonzero(~masked), np.flatnonzero(masked)
        raise RuntimeError(
            f"masks.py: {self} covered the whole {grid} token grid in {MAX_MASK_TRIES} draws, leaving no "
            "context token; lower num_blocks or spatial_scale, or use a larger grid."
        )


def _span(starts: np.ndarray, length: int, size: int) -> np.ndarray:
    """(K, size) bool: position p is inside [start_k, start_k + length)."""
    positions = np.arange(size)
    return (positions >= starts[:, None]) & (positions < starts[:, None] + length)


@dataclass(frozen=True)
class FutureMask:
    """Context = the first k time steps of the token grid (every spatial position); targets = the rest.

    k is drawn uniformly per sample. With `context_steps=(k_min, k_max)` (in tubelets, i.e. token time
    steps) k ~ U{k_min..k_max}, and the range must fit 1 <= k_min <= k_max < t_grid. Otherwise k is drawn
    from the integers with k / t_grid in `context_fraction`, clipped to 1 <= k < t_grid; when the range
    holds no integer on a short grid, k is the integer nearest to its middle (so tiny CPU configs work).
    """

    context_fraction: tuple[float, float] = (0.25, 0.75)
    context_steps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "context_fraction", _float_range(self.context_fraction, "FutureMask.context_fraction", 0.0, 1.0)
        )
        if self.context_steps is not None:
            steps = self.context_steps
            pair = (steps, steps) if isinstance(steps, int) else tuple(int(k) for k in steps)
            if len(pair) != 2 or not 1 <= pair[0] <= pair[1]:
                raise ValueError(
                    f"masks.py: FutureMask.context_steps must be an int or (k_min, k_max) with "
                    f"1 <= k_min <= k_max, got {steps!r}"
                )
            object.__setattr__(self, "context_steps", pair)

    def context_range(self, t_grid: int) -> tuple[int, int]:
        """The inclusive range (k_min, k_max) of context time steps on a grid with t_grid time steps."""
        if t_grid < 2:
            raise ValueError(
                f"masks.py: FutureMask needs at least 2 token time steps, the grid has {t_grid}; "
                "use more frames (num_frames / tubelet_size >= 2)."
            )
        if self.context_steps is not None:
            k_min, k_max = self.context_steps
            if k_max >= t_grid:
                raise ValueError(
                    f"masks.py: FutureMask.context_steps={self.context_steps} leaves no target on a grid "
                    f"with {t_grid} time steps; use k_max <= {t_grid - 1}."
                )
            return k_min, k_max
        lo, hi = self.context_fraction
        k_min = min(max(math.ceil(lo * t_grid - 1e-9), 1), t_grid - 1)
        k_max = min(max(math.floor(hi * t_grid + 1e-9), 1), t_grid - 1)
        if k_max < k_min:
            k_min = k_max = min(max(round((lo + hi) / 2 * t_grid), 1), t_grid - 1)
        return k_min, k_max

    def check(self, grid: Grid) -> None:
        self.context_range(_check_grid(grid)[0])

    def sample(self, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(context_idx, target_idx): int64 token indices into the (t h w) grid, ascending, disjoint."""
        k_min, k_max = self.context_range(grid[0])
        return future_split(grid, int(rng.integers(k_min, k_max + 1)))


def future_split(grid: Grid, context_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic split behind FutureMask: the first `context_steps` time steps are context.

    Useful at inference (forecasting): `MaskBatch.from_indices(0, grid, [ctx] * B, [tgt] * B)`.
    """
    t_grid, h_grid, w_grid = _check_grid(grid)
    if not 1 <= context_steps < t_grid:
        raise ValueError(f"masks.py: context_steps must be in [1, {t_grid - 1}] for grid {grid}, got {context_steps}")
    split = context_steps * h_grid * w_grid  # raster order is (t h w): time is the slowest axis
    tokens = np.arange(t_grid * h_grid * w_grid)
    return tokens[:split], tokens[split:]


def vjepa2_mask_kinds() -> list[MultiBlockMask]:
    """V-JEPA 2's masks: short-range (8 blocks x 15% area) and long-range (2 blocks x 70%), full-time tubes."""
    return [
        MultiBlockMask(num_blocks=8, spatial_scale=(0.15, 0.15)),
        MultiBlockMask(num_blocks=2, spatial_scale=(0.7, 0.7)),
    ]


_KIND_TYPES: dict[str, type] = {"multiblock": MultiBlockMask, "future": FutureMask}


def build_mask_kinds(spec: Sequence[dict | MaskKind] | str | None) -> list[MaskKind]:
    """Mask kinds from a plain config, e.g. YAML:

        - {type: multiblock, num_blocks: 8, spatial_scale: [0.15, 0.15]}
        - {type: multiblock, num_blocks: 2, spatial_scale: [0.7, 0.7]}
        - {type: future, context_fraction: [0.25, 0.75]}      # or context_steps: [2, 6]

    Built kinds (anything with `check` and `sample`, see MaskKind) pass through unchanged; None or
    "vjepa2" gives `vjepa2_mask_kinds()`.
    """
    if spec is None or spec == "vjepa2":
        return vjepa2_mask_kinds()
    if isinstance(spec, (dict, str)):
        raise ValueError(f"masks.py: mask kinds must be a list of kinds (dicts with a 'type'), got {spec!r}")
    kinds: list[MaskKind] = []
    for i, entry in enumerate(spec):
        if hasattr(entry, "sample") and hasattr(entry, "check"):
            kinds.append(entry)
            continue
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"masks.py: mask kind #{i} must be a dict with a 'type' key, got {entry!r}")
        options = dict(entry)
        kind_type = str(options.pop("type")).lower()
        if kind_type not in _KIND_TYPES:
            raise ValueError(
                f"masks.py: mask kind #{i} has unknown type {kind_type!r}; use one of {sorted(_KIND_TYPES)}"
            )
        cls = _KIND_TYPES[kind_type]
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(
                f"masks.py: mask kind #{i} ({kind_type}) has unknown keys {unknown}; allowed: {sorted(allowed)}"
            )
        kinds.append(cls(**options))
    if not kinds:
        raise ValueError("masks.py: the list of mask kinds is empty; give at least one kind")
    return kinds


# --------------------------------------------------------------------------------------------------
# Batches


@dataclass
class MaskBatch:
    """One mask kind's context/target indices for a batch, padded to the batch maximum.

    Padding positions hold index 0 and valid False. Not frozen, so Lightning can move it to the device.
    """

    kind: int  # index into the collator's kinds == the predictor's mask-token index
    context_idx: torch.Tensor  # (B, Nc) int64 token indices into the flattened (t h w) grid
    context_valid: torch.Tensor  # (B, Nc) bool, False at padding
    target_idx: torch.Tensor  # (B, Nt) int64
    target_valid: torch.Tensor  # (B, Nt) bool
    grid: Grid | None = None  # (t, h, w) token grid the indices refer to
    # valid entries in the whole batch, known on the host when the collator builds the batch: lets the
    # training step pack tokens without reading them back from the device (None: count when needed)
    context_count: int | None = None
    target_count: int | None = None

    @classmethod
    def from_indices(
        cls,
        kind: int,
        grid: Grid,
        contexts: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        pad_to_multiple: int = 1,
    ) -> MaskBatch:
        """Pad per-sample index arrays (ragged) into a batch."""
        context_idx, context_valid = _pad(contexts, pad_to_multiple)
        target_idx, target_valid = _pad(targets, pad_to_multiple)
        return cls(
            kind, context_idx, context_valid, target_idx, target_valid, tuple(grid),
            context_count=sum(len(c) for c in contexts), target_count=sum(len(t) for t in targets),
        )

    @property
    def batch_size(self) -> int:
        return self.context_idx.shape[0]

    @property
    def num_tokens(self) -> int:
        if self.grid is None:
            raise ValueError("masks.py: MaskBatch.grid is not set, so the token count N is unknown")
        return math.prod(self.grid)

    @property
    def covers_grid(self) -> bool:
        """Whether every sample's valid context and target tokens together are the whole grid, known on the
        host from the counts (False when they are not known). Every built-in kind splits the grid so: its
        context and targets are disjoint, so the counts summing to B * N means each sample covers it."""
        if self.context_count is None or self.target_count is None or self.grid is None:
            return False
        return self.context_count + self.target_count == self.batch_size * self.num_tokens

    @property
    def context_ratio(self) -> torch.Tensor:
        """Mean over samples of (valid context tokens / N); a 0-dim tensor on the batch's device."""
        return (self.context_valid.sum(dim=1, dtype=torch.float32) / self.num_tokens).mean()

    @property
    def target_ratio(self) -> torch.Tensor:
        """Mean over samples of (valid target tokens / N): the effective masking ratio."""
        return (self.target_valid.sum(dim=1, dtype=torch.float32) / self.num_tokens).mean()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskBatch:
        move = lambda x: x.to(device, non_blocking=non_blocking)  # noqa: E731
        return MaskBatch(
            self.kind, move(self.context_idx), move(self.context_valid),
            move(self.target_idx), move(self.target_valid), self.grid, self.context_count, self.target_count,
        )

    def pin_memory(self) -> MaskBatch:
        """Called by DataLoader(pin_memory=True)."""
        return MaskBatch(
            self.kind, self.context_idx.pin_memory(), self.context_valid.pin_memory(),
            self.target_idx.pin_memory(), self.target_valid.pin_memory(), self.grid, self.context_count,
            self.target_count,
        )


def _pad(rows: Sequence[np.ndarray], multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)  # (B,)
    width = int(lengths.max(initial=0))
    if multiple > 1:
        width = -(-width // multiple) * multiple
    valid = np.arange(width)[None, :] < lengths[:, None]  # (B, L); valid positions are a prefix of each row
    idx = np.zeros(valid.shape, dtype=np.int64)
    if len(rows):
        idx[valid] = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    return torch.from_numpy(idx), torch.from_numpy(valid)


class MaskCollator:
    """DataLoader collate_fn: `collate(samples)` plus "masks": one MaskBatch per kind, in `kinds` order.

    grid: the (t, h, w) token grid of the clips (`VideoViT.grid(video_shape)`).
    kinds: mask kinds (objects, or dicts for `build_mask_kinds`); kind i uses predictor mask token i.
    seed: with each sample's "epoch" and "index", fixes its masks: rng = default_rng([seed, epoch, index, kind]).
    pad_to_multiple: round padded lengths up to a multiple of this (e.g. 8 for tensor-core friendly shapes).
    collate: stacks the samples; default `worldmodel.data.datasets.collate_samples`.
    """

    def __init__(
        self,
        grid: tuple[int, int, int],
        kinds: Sequence[MaskKind | dict] | str | None = None,
        seed: int = 0,
        pad_to_multiple: int = 1,
        collate: Callable[[list[dict]], dict] | None = None,
    ) -> None:
        self.grid = _check_grid(grid)
        self.kinds = build_mask_kinds(kinds)
        for kind in self.kinds:
            kind.check(self.grid)
        if seed < 0:
            raise ValueError(f"masks.py: seed must be >= 0, got {seed}")
        if pad_to_multiple < 1:
            raise ValueError(f"masks.py: pad_to_multiple must be >= 1, got {pad_to_multiple}")
        self.seed = int(seed)
        self.pad_to_multiple = int(pad_to_multiple)
        self.collate = collate

    def sample(self, epoch: int, index: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
        """(context_idx, target_idx) of one sample for one kind: a pure function of its arguments and the seed."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index), int(kind)])
        return self.kinds[kind].sample(self.grid, rng)

    def masks(self, epochs: Sequence[int], indices: Sequence[int]) -> list[MaskBatch]:
        """One MaskBatch per kind for the samples (epochs[i], indices[i])."""
        batches = []
        for k in range(len(self.kinds)):
            splits = [self.sample(e, i, k) for e, i in zip(epochs, indices)]
            batches.append(
                MaskBatch.from_indices(
                    k, self.grid, [c for c, _ in splits], [t for _, t in splits], self.pad_to_multiple
                )
            )
        return batches

    def __call__(self, samples: list[dict]) -> dict:
        try:
            epochs = [int(s["epoch"]) for s in samples]
            indices = [int(s["index"]) for s in samples]
        except KeyError as err:
            raise KeyError(
                f"masks.py: MaskCollator needs 'epoch' and 'index' in every sample (missing {err}); "
                "use a worldmodel dataset, or add them to your dataset's items."
            ) from None
        collate = self.collate
        if collate is None:
            from worldmodel.data.datasets import collate_samples as collate  # lazy: data imports stay optional here
        batch = collate(samples)
        batch["masks"] = self.masks(epochs, indices)
        return batch

    def __repr__(self) -> str:
        return (
            f"MaskCollator(grid={self.grid}, kinds={self.kinds}, seed={self.seed}, "
            f"pad_to_multiple={self.pad_to_multiple})"
        )
