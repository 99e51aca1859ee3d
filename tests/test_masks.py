"""Mask drawing: coverage, ratios, determinism per (seed, epoch, index), batch independence, padding."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from worldmodel.masks import (
    FutureMask,
    MaskBatch,
    MaskCollator,
    MultiBlockMask,
    build_mask_kinds,
    future_split,
    vjepa2_mask_kinds,
)

GRID = (8, 14, 14)  # 16 frames / tubelet 2, 224 / 16
N = math.prod(GRID)


def time_of(idx: np.ndarray, grid=GRID) -> np.ndarray:
    return np.asarray(idx) // (grid[1] * grid[2])


def valid_rows(idx: torch.Tensor, valid: torch.Tensor) -> list[list[int]]:
    return [row[ok].tolist() for row, ok in zip(idx, valid)]


@pytest.mark.parametrize("kind", vjepa2_mask_kinds() + [FutureMask(), FutureMask(context_steps=(1, 7))])
def test_context_and_targets_partition_the_grid(kind):
    collator = MaskCollator(GRID, [kind], seed=3)
    for index in range(20):
        context, target = collator.sample(epoch=0, index=index, kind=0)
        assert len(context) > 0 and len(target) > 0
        assert np.intersect1d(context, target).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([context, target])), np.arange(N))
        assert np.all(np.diff(context) > 0) and np.all(np.diff(target) > 0)  # ascending raster order


def test_vjepa2_mask_ratios_on_8x14x14():
    collator = MaskCollator(GRID, vjepa2_mask_kinds(), seed=0)
    batches = [collator.masks([0] * 16, range(b * 16, (b + 1) * 16)) for b in range(10)]  # 160 samples
    short = torch.stack([b[0].target_ratio for b in batches]).mean().item()
    long = torch.stack([b[1].target_ratio for b in batches]).mean().item()
    print(f"\nmeasured masking ratio on {GRID}: short-range {short:.3f}, long-range {long:.3f}")
    assert 0.50 <= short <= 0.75
    assert 0.75 <= long <= 0.90
    for b in batches:  # context + targets = every token, for every sample
        for m in b:
            total = m.context_valid.sum(1) + m.target_valid.sum(1)
            assert torch.all(total == N)
            assert torch.isclose(m.context_ratio + m.target_ratio, torch.tensor(1.0))


def test_block_size_follows_the_vjepa2_formulas():
    # area = int(196 * 0.15) = 29, ar = 1: h = w = round(sqrt(29)) = 5; t = max(1, int(8 * 0.5)) = 4
    kind = MultiBlockMask(num_blocks=1, spatial_scale=(0.15, 0.15), temporal_scale=(0.5, 0.5), aspect_ratio=(1.0, 1.0))
    rng = np.random.default_rng(0)
    assert kind.block_size(GRID, rng) == (4, 5, 5)
    _, target = kind.sample(GRID, rng)
    assert len(target) == 4 * 5 * 5
    t, rem = np.divmod(target, 14 * 14)
    h, w = np.divmod(rem, 14)
    for coord, size in ((t, 4), (h, 5), (w, 5)):  # one contiguous box
        assert coord.max() - coord.min() + 1 == size
    # wide aspect ratios are clipped to the grid
    wide = MultiBlockMask(num_blocks=1, spatial_scale=(0.7, 0.7), aspect_ratio=(4.0, 4.0))
    assert wide.block_size(GRID, rng) == (8, 14, 6)  # area 137: h = round(23.4) -> 14, w = round(5.85) = 6


def test_masks_are_deterministic_per_seed_epoch_index():
    a = MaskCollator(GRID, vjepa2_mask_kinds(), seed=7)
    b = MaskCollator(GRID, vjepa2_mask_kinds(), seed=7)
    for k in range(2):
        ctx_a, tgt_a = a.sample(epoch=2, index=11, kind=k)
        ctx_b, tgt_b = b.sample(epoch=2, index=11, kind=k)
        np.testing.assert_array_equal(ctx_a, ctx_b)
        np.testing.assert_array_equal(tgt_a, tgt_b)
    same = lambda x, y: np.array_equal(x[1], y[1])  # noqa: E731
    assert not same(a.sample(2, 11, 0), a.sample(3, 11, 0))  # another epoch
    assert not same(a.sample(2, 11, 0), a.sample(2, 12, 0))  # another sample
    assert not same(a.sample(2, 11, 0), MaskCollator(GRID, vjepa2_mask_kinds(), seed=8).sample(2, 11, 0))


def test_masks_do_not_depend_on_the_batch():
    collator = MaskCollator(GRID, vjepa2_mask_kinds() + [FutureMask()], seed=1)
    alone = collator.masks([4], [42])
    batch = collator.masks([4, 0, 4, 1, 9], [3, 42, 42, 7, 100])  # sample (4, 42) at position 2
    for k in range(3):
        ctx = valid_rows(batch[k].context_idx, batch[k].context_valid)[2]
        tgt = valid_rows(batch[k].target_idx, batch[k].target_valid)[2]
        assert ctx == valid_rows(alone[k].context_idx, alone[k].context_valid)[0]
        assert tgt == valid_rows(alone[k].target_idx, alone[k].target_valid)[0]


def test_padding_holds_index_zero_and_valid_false():
    plain = MaskCollator(GRID, vjepa2_mask_kinds(), seed=0).masks([0] * 6, range(6))
    padded = MaskCollator(GRID, vjepa2_mask_kinds(), seed=0, pad_to_multiple=8).masks([0] * 6, range(6))
    for m in plain + padded:
        for idx, valid in ((m.context_idx, m.context_valid), (m.target_idx, m.target_valid)):
            assert idx.dtype == torch.int64 and valid.dtype == torch.bool and idx.shape == valid.shape
            counts = valid.sum(1)
            assert len(set(counts.tolist())) > 1  # ragged rows, so there is padding to check
            # valid entries are a prefix of each row, padding is index 0
            assert torch.equal(valid, torch.arange(idx.shape[1])[None, :] < counts[:, None])
            assert torch.all(idx[~valid] == 0)
    for m, p in zip(plain, padded):
        assert m.context_idx.shape[1] == int(m.context_valid.sum(1).max())  # batch maximum, no truncation
        assert m.target_idx.shape[1] == int(m.target_valid.sum(1).max())
        assert p.context_idx.shape[1] % 8 == 0 and p.target_idx.shape[1] % 8 == 0
        assert 0 <= p.context_idx.shape[1] - m.context_idx.shape[1] < 8
        assert valid_rows(m.context_idx, m.context_valid) == valid_rows(p.context_idx, p.context_valid)
        assert valid_rows(m.target_idx, m.target_valid) == valid_rows(p.target_idx, p.target_valid)


def test_from_indices_pads_ragged_rows():
    m = MaskBatch.from_indices(1, (2, 2, 2), [np.array([0, 1, 2]), np.array([5])], [np.array([3, 4, 5, 6, 7]), np.array([0, 1])])
    assert m.kind == 1 and m.grid == (2, 2, 2)
    assert m.context_idx.tolist() == [[0, 1, 2], [5, 0, 0]]
    assert m.context_valid.tolist() == [[True, True, True], [True, False, False]]
    assert m.target_idx.tolist() == [[3, 4, 5, 6, 7], [0, 1, 0, 0, 0]]
    assert m.context_ratio.item() == pytest.approx((3 / 8 + 1 / 8) / 2)
    assert m.target_ratio.item() == pytest.approx((5 / 8 + 2 / 8) / 2)


def test_future_masks_put_every_target_after_every_context_token():
    kind = FutureMask(context_fraction=(0.25, 0.75))
    assert kind.context_range(8) == (2, 6)
    collator = MaskCollator(GRID, [kind], seed=0)
    seen_k = set()
    for index in range(60):
        context, target = collator.sample(0, index, 0)
        assert time_of(context).max() < time_of(target).min()
        k = time_of(context).max() + 1
        assert len(context) == k * 14 * 14  # every spatial position of the first k steps
        seen_k.add(int(k))
    assert seen_k == {2, 3, 4, 5, 6}
    print(f"\nfuture-mask context steps drawn on t_grid=8: {sorted(seen_k)}")
    explicit = MaskCollator(GRID, [FutureMask(context_steps=(3, 3))], seed=0)
    context, target = explicit.sample(0, 0, 0)
    np.testing.assert_array_equal(context, np.arange(3 * 196))
    np.testing.assert_array_equal(future_split(GRID, 3)[1], target)


def test_future_mask_on_short_grids_and_bad_ranges():
    assert FutureMask(context_fraction=(0.25, 0.4)).context_range(2) == (1, 1)  # no integer in range: nearest
    assert FutureMask().context_range(2) == (1, 1)
    with pytest.raises(ValueError, match="at least 2 token time steps"):
        MaskCollator((1, 14, 14), [FutureMask()])
    with pytest.raises(ValueError, match="leaves no target"):
        MaskCollator(GRID, [FutureMask(context_steps=(2, 8))])
    with pytest.raises(ValueError, match="context_steps"):
        FutureMask(context_steps=(0, 2))


def test_impossible_multiblock_raises_a_clear_error():
    collator = MaskCollator(GRID, [MultiBlockMask(num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0))])
    with pytest.raises(RuntimeError, match="no context token"):
        collator.sample(0, 0, 0)


def test_build_mask_kinds_from_plain_config():
    kinds = build_mask_kinds(
        [
            {"type": "multiblock", "num_blocks": 8, "spatial_scale": [0.15, 0.15]},
            {"type": "multiblock", "num_blocks": 2, "spatial_scale": 0.7},
            {"type": "future", "context_steps": [2, 6]},
        ]
    )
    assert kinds[:2] == vjepa2_mask_kinds()
    assert kinds[2] == FutureMask(context_steps=(2, 6))
    assert build_mask_kinds(None) == vjepa2_mask_kinds()
    with pytest.raises(ValueError, match="unknown type"):
        build_mask_kinds([{"type": "random_tube"}])
    with pytest.raises(ValueError, match="unknown keys"):
        build_mask_kinds([{"type": "multiblock", "blocks": 3}])
    with pytest.raises(ValueError, match="spatial_scale"):
        MultiBlockMask(spatial_scale=(0.5, 0.2))


def test_collator_is_fast():
    collator = MaskCollator((8, 16, 16), vjepa2_mask_kinds(), seed=0)
    start = time.perf_counter()
    for b in range(5):
        collator.masks([0] * 24, range(b * 24, (b + 1) * 24))
    per_batch = (time.perf_counter() - start) / 5
    print(f"\nmask drawing: {per_batch * 1e3:.1f} ms per batch of 24 (2 kinds, 8x16x16)")
    assert per_batch < 0.25


class _IndexDataset(Dataset):
    """Items shaped like the worldmodel datasets' (uint8 video, epoch, index)."""

    def __init__(self, epoch: int, size: int = 12):
        self.epoch, self.size = epoch, size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return {"video": torch.full((3, 4, 8, 8), index, dtype=torch.uint8), "index": index, "epoch": self.epoch}


def _masks_by_index(loader) -> dict[int, list[list[int]]]:
    out = {}
    for batch in loader:
        for row, index in enumerate(batch["index"].tolist()):
            out[index] = [valid_rows(m.target_idx, m.target_valid)[row] for m in batch["masks"]]
    return out


def test_dataloader_workers_and_batch_size_do_not_change_masks():
    collator = MaskCollator((2, 4, 4), vjepa2_mask_kinds() + [FutureMask()], seed=5, collate=default_collate)
    ref = _masks_by_index(DataLoader(_IndexDataset(epoch=1), batch_size=1, collate_fn=collator))
    other = _masks_by_index(
        DataLoader(_IndexDataset(epoch=1), batch_size=5, num_workers=2, collate_fn=collator, multiprocessing_context="fork")
    )
    assert ref == other and len(ref) == 12
    batch = next(iter(DataLoader(_IndexDataset(epoch=1), batch_size=4, collate_fn=collator)))
    assert batch["video"].shape == (4, 3, 4, 8, 8)
    assert [m.kind for m in batch["masks"]] == [0, 1, 2]


def test_collator_with_the_package_collate():
    datasets = pytest.importorskip("worldmodel.data.datasets")
    assert hasattr(datasets, "collate_samples")
    samples = [
        {"video": torch.zeros(3, 4, 32, 32, dtype=torch.uint8), "label": -1, "index": i, "epoch": 0, "errors": []}
        for i in range(3)
    ]
    batch = MaskCollator((2, 2, 2), vjepa2_mask_kinds())(samples)
    assert batch["video"].shape == (3, 3, 4, 32, 32)
    assert len(batch["masks"]) == 2 and batch["masks"][0].batch_size == 3


def test_collator_requires_epoch_and_index():
    collator = MaskCollator(GRID, vjepa2_mask_kinds(), collate=default_collate)
    with pytest.raises(KeyError, match="epoch"):
        collator([{"video": torch.zeros(1), "index": 0}])
