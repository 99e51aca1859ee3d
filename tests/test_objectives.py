"""Loss, EMA, SIGReg and collapse statistics, checked against hand-computed values."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from worldmodel.masks import FutureMask, MaskCollator, MultiBlockMask, future_split
from worldmodel.objectives import (
    CollapseMonitor,
    collapse_stats,
    copy_context_loss,
    ema_update,
    gather_tokens,
    jepa_loss,
    sigreg,
    sigreg_null_level,
    target_features,
)


def test_target_features_are_layer_normed_per_token():
    x = torch.randn(2, 5, 16) * 3 + 7
    y = target_features(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_gather_tokens_picks_per_sample_indices():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # (B, N, D)
    idx = torch.tensor([[3, 0], [1, 1]])
    out = gather_tokens(tokens, idx)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[0], tokens[0, [3, 0]])
    torch.testing.assert_close(out[1], tokens[1, [1, 1]])


def test_jepa_loss_hand_values():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, -1.0], [5.0, 5.0]]])  # (B=2, M=2, D=2)
    target = torch.zeros_like(pred)
    valid = torch.tensor([[True, True], [True, False]])
    # valid tokens: clip 0 has (1, 2) and (0, 0), clip 1 has (3, -1); mean per clip, then over clips
    assert jepa_loss(pred, target, valid, "l1").item() == pytest.approx((((1 + 2) / 2 + 0) / 2 + (3 + 1) / 2) / 2)
    assert jepa_loss(pred, target, valid, "l2").item() == pytest.approx((((1 + 4) / 2 + 0) / 2 + (9 + 1) / 2) / 2)
    assert jepa_loss(pred, target, None, "l1").item() == pytest.approx((1.5 + 0 + 2 + 5) / 4)
    with pytest.raises(ValueError, match="l1"):
        jepa_loss(pred, target, valid, "huber")


def test_jepa_loss_ignores_padded_tokens():
    torch.manual_seed(0)
    pred = torch.randn(3, 7, 8, requires_grad=True)
    target = torch.randn(3, 7, 8)
    valid = torch.rand(3, 7) > 0.4
    valid[0, 0] = True
    base = jepa_loss(pred, target, valid)
    for junk in (1e6, float("inf"), float("nan")):
        pred2 = pred.detach().clone()
        target2 = target.clone()
        pred2[~valid] = junk
        target2[~valid] = -junk
        assert jepa_loss(pred2, target2, valid).item() == pytest.approx(base.item())
    base.backward()
    assert torch.all(pred.grad[~valid] == 0) and pred.grad[valid].abs().sum() > 0
    nothing = torch.zeros(3, 7, dtype=torch.bool)
    assert jepa_loss(pred, target, nothing).item() == 0.0  # no targets: 0, not nan


def test_jepa_loss_is_float32_under_low_precision_inputs():
    pred = torch.randn(2, 3, 4).bfloat16()
    assert jepa_loss(pred, torch.zeros_like(pred), torch.ones(2, 3, dtype=torch.bool)).dtype == torch.float32


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)  # has buffers


def test_ema_update_hand_computed():
    torch.manual_seed(0)
    online = _Tiny()
    target = copy.deepcopy(online).requires_grad_(False)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        online.norm.running_mean.fill_(3.0)
        online.norm.num_batches_tracked.fill_(5)
    before_target = {k: v.clone() for k, v in target.state_dict().items()}
    before_online = {k: v.clone() for k, v in online.state_dict().items()}
    m = 0.9
    ema_update(target, online, m)
    for name, p in target.named_parameters():
        expected = m * before_target[name] + (1 - m) * before_online[name]
        torch.testing.assert_close(p, expected)
        assert not torch.equal(p, before_online[name])
    assert torch.all(target.norm.running_mean == 3.0) and target.norm.num_batches_tracked.item() == 5
    for name, v in online.state_dict().items():  # the online model is untouched
        assert torch.equal(v, before_online[name])
    ema_update(target, online, 1.0)  # momentum 1: frozen target
    torch.testing.assert_close(target.linear.weight, m * before_target["linear.weight"] + (1 - m) * before_online["linear.weight"])
    with pytest.raises(ValueError, match="differ"):
        ema_update(target, nn.Linear(3, 2), 0.99)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, online, 1.5)


def test_sigreg_is_near_its_null_level_for_gaussians_and_large_for_collapse():
    g = torch.Generator().manual_seed(0)
    n, d = 1024, 32
    gaussian = torch.randn(n, d, generator=g)
    null = sigreg_null_level()
    values = {
        "gaussian": sigreg(gaussian, seed=1).item(),
        "constant+noise": sigreg(torch.ones(n, d) + 1e-3 * torch.randn(n, d, generator=g), seed=1).item(),
        "line": sigreg(torch.randn(n, 1, generator=g) * torch.ones(1, d) / math.sqrt(d), seed=1).item(),
        "narrow": sigreg(0.5 * gaussian, seed=1).item(),
        "wide": sigreg(2.0 * gaussian, seed=1).item(),
        "shifted": sigreg(gaussian + 1.0, seed=1).item(),
    }
    print(f"\nSIGReg (null level {null:.3f}): " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    assert 0.5 * null < values["gaussian"] < 2.0 * null
    for name in ("constant+noise", "line", "narrow", "wide", "shifted"):
        assert values[name] > 3 * values["gaussian"], name
    assert values["constant+noise"] > 100 * values["gaussian"]


def test_sigreg_directions_and_gradients():
    z = torch.randn(256, 16, requires_grad=True)
    a, b = sigreg(z, num_slices=64, seed=3), sigreg(z, num_slices=64, seed=3)
    assert a.item() == b.item()  # same seed, same directions: what ranks rely on
    assert sigreg(z, num_slices=64, seed=4).item() != a.item()
    gen = torch.Generator().manual_seed(3)
    assert sigreg(z, num_slices=64, generator=gen).item() == pytest.approx(a.item())
    shrunk = (0.5 * z.detach()).requires_grad_()
    loss = sigreg(shrunk, num_slices=64, seed=3)
    loss.backward()
    # the gradient pushes a too-narrow cloud outwards: -grad points along z
    assert (-(shrunk.grad) * shrunk.detach()).sum() > 0
    assert sigreg(torch.randn(4, 8, 16), num_slices=8).shape == ()  # leading dims are samples


def test_collapse_stats_separate_healthy_and_collapsed_features():
    g = torch.Generator().manual_seed(0)
    b, n, d = 8, 64, 32
    healthy = target_features(torch.randn(b, n, d, generator=g))
    point = target_features(torch.randn(1, 1, d, generator=g).expand(b, n, d) + 1e-4 * torch.randn(b, n, d, generator=g))
    low_rank = torch.randn(b, n, 2, generator=g) @ torch.randn(2, d, generator=g)  # dimensional collapse
    stats = {name: collapse_stats(x) for name, x in (("healthy", healthy), ("point", point), ("low_rank", low_rank))}
    for name, s in stats.items():
        print(f"\n{name}: " + ", ".join(f"{k} {v.item():.3f}" for k, v in s.items()), end="")
    assert stats["healthy"]["feature_std"].item() == pytest.approx(1.0, abs=0.05)
    assert stats["point"]["feature_std"].item() < 0.01
    assert stats["healthy"]["token_effective_rank"].item() > 25  # of at most 32
    assert stats["low_rank"]["token_effective_rank"].item() <= 2.0 + 1e-3
    assert stats["healthy"]["effective_rank"].item() > 5  # of at most b - 1 = 7
    assert stats["low_rank"]["effective_rank"].item() <= 2.0 + 1e-3
    monitor = CollapseMonitor()
    assert monitor.check(stats["healthy"]) == []
    assert any("feature_std" in w for w in monitor.check(stats["point"]))
    assert any("token_effective_rank" in w for w in monitor.check(stats["low_rank"]))
    assert CollapseMonitor(min_feature_std=None).check({"feature_std": 0.0}) == []
    assert len(CollapseMonitor().check({"feature_std": float("nan")})) == 1
    # the pooled rank of B clips is at most B - 1: with 2 or 3 clips a rank of 1 says nothing
    assert CollapseMonitor().check({"effective_rank": 1.0}, batch_size=2) == []
    assert len(CollapseMonitor().check({"effective_rank": 1.0}, batch_size=8)) == 1


def test_effective_rank_of_a_constant_matrix_is_one():
    stats = collapse_stats(torch.ones(4, 10, 8))
    assert stats["effective_rank"].item() == pytest.approx(1.0)
    assert stats["token_effective_rank"].item() == pytest.approx(1.0)
    assert torch.isfinite(stats["feature_std"]) and stats["feature_std"].item() == pytest.approx(0.0, abs=1e-6)


def test_collapse_stats_over_processes_equal_those_of_the_whole_batch():
    """With `gather` (two processes simulated: each half of the batch on one), the token std and the pooled
    rank are those of the whole batch; the token rank is the mean of the halves' own."""
    torch.manual_seed(0)
    features = torch.randn(6, 10, 16) @ torch.randn(16, 16)  # anisotropic, so the std is not trivially 1
    halves = features.chunk(2)
    shared: list = []

    def run(rank: int) -> dict:
        # each call of `gather` collects the same call's tensors from both "processes"
        calls = iter(shared)
        return collapse_stats(halves[rank], gather=lambda t: next(calls))

    # record what each half sends, in call order, then answer every call with both halves' tensors stacked
    sent = [[], []]
    for rank in (0, 1):
        collapse_stats(halves[rank], gather=lambda t, r=rank: sent[r].append(t) or torch.stack([t, t]))
    shared[:] = [torch.stack([a, b]) for a, b in zip(*sent)]
    whole = collapse_stats(features)
    # collapsed features: 0, as one process computes it (float32 moments left about 1e-4)
    point = torch.ones(2, 10, 16) * 3.0 + torch.arange(16.0)
    assert collapse_stats(point, gather=lambda t: torch.stack([t, t]))["feature_std"].item() == pytest.approx(0.0, abs=1e-6)
    for rank in (0, 1):
        split = run(rank)
        torch.testing.assert_close(split["feature_std"], whole["feature_std"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(split["effective_rank"], whole["effective_rank"], rtol=1e-5, atol=1e-6)
        own = [collapse_stats(h)["token_effective_rank"] for h in halves]
        torch.testing.assert_close(split["token_effective_rank"], torch.stack(own).mean())


def _as_batch(splits):
    from worldmodel.masks import MaskBatch

    return MaskBatch.from_indices(0, GRID, [c for c, _ in splits], [t for _, t in splits])


GRID = (4, 3, 3)


def test_copy_context_loss_future_mask_copies_the_last_context_frame():
    t_grid, hw = GRID[0], GRID[1] * GRID[2]
    d = 5
    spatial = torch.randn(2, 1, hw, d)  # (B, 1, HW, D): a static scene
    static = spatial.expand(2, t_grid, hw, d).reshape(2, t_grid * hw, d)
    m = _as_batch([future_split(GRID, 1), future_split(GRID, 2)])
    args = (m.context_idx, m.context_valid, m.target_idx, m.target_valid)
    assert copy_context_loss(static, *args, grid=GRID).item() == pytest.approx(0.0, abs=1e-7)
    assert copy_context_loss(static, *args).item() > 0.1  # the context mean does not know positions
    # features grow linearly in time: copying the last context frame k-1 misses target t by (t - k + 1)
    ramp = torch.arange(t_grid, dtype=torch.float32).repeat_interleave(hw)[None, :, None].expand(2, -1, d).contiguous()
    # sample 0: k=1, targets t=1..3 -> errors 1, 2, 3; sample 1: k=2, targets t=2, 3 -> errors 1, 2
    expected_l1 = ((1 + 2 + 3) / 3 + (1 + 2) / 2) / 2  # per clip, then over clips
    assert copy_context_loss(ramp, *args, kind="l1", grid=GRID).item() == pytest.approx(expected_l1)
    expected_l2 = ((1 + 4 + 9) / 3 + (1 + 4) / 2) / 2
    assert copy_context_loss(ramp, *args, kind="l2", grid=GRID).item() == pytest.approx(expected_l2)
    # mean baseline, hand-computed: sample 0 predicts 0 (mean of t=0), sample 1 predicts 0.5
    expected_mean = ((1 + 2 + 3) / 3 + (1.5 + 2.5) / 2) / 2
    assert copy_context_loss(ramp, *args, kind="l1").item() == pytest.approx(expected_mean)


def test_copy_context_loss_nearest_time_and_padding():
    hw = GRID[1] * GRID[2]
    # context = times 0 and 3 at spatial position 0 only; targets: position 0 at times 1, 2 (nearest: 0 tie-> earlier, 3)
    context = np.array([0, 3 * hw])
    target = np.array([1 * hw, 2 * hw, 4])  # token 4 = (t 0, spatial 4): no context in its column -> mean
    m = _as_batch([(context, target), (np.array([0]), np.array([hw]))])
    feats = torch.zeros(2, 4 * hw, 1)
    feats[0, 0], feats[0, 3 * hw], feats[0, hw], feats[0, 2 * hw], feats[0, 4] = 0.0, 6.0, 1.0, 5.0, 10.0
    feats[1, 0], feats[1, hw] = 2.0, 2.0
    loss = copy_context_loss(feats, m.context_idx, m.context_valid, m.target_idx, m.target_valid, grid=GRID)
    # sample 0: t=1 copies t=0 (err 1), t=2 copies t=3 (err 1), token 4 gets the mean 3 (err 7); sample 1: err 0
    assert loss.item() == pytest.approx(((1 + 1 + 7) / 3 + 0) / 2)
    # garbage behind the padding (sample 1's extra slots) changes nothing
    feats[1, 3 * hw] = 100.0
    context_idx, target_idx = m.context_idx.clone(), m.target_idx.clone()
    context_idx[1, 1:] = 3 * hw  # a padded context slot pointing at a far-off value
    target_idx[1, 1:] = 3 * hw
    assert not m.context_valid[1, 1] and not m.target_valid[1, 1]
    for grid in (GRID, None):
        before = copy_context_loss(feats, m.context_idx, m.context_valid, m.target_idx, m.target_valid, grid=grid)
        after = copy_context_loss(feats, context_idx, m.context_valid, target_idx, m.target_valid, grid=grid)
        assert after.item() == pytest.approx(before.item())


def test_copy_context_loss_runs_on_collated_masks():
    collator = MaskCollator(GRID, [MultiBlockMask(num_blocks=2, spatial_scale=(0.3, 0.3)), FutureMask()], seed=0)
    feats = target_features(torch.randn(3, 36, 8))
    for m in collator.masks([0, 0, 0], [0, 1, 2]):
        for grid in (None, GRID):
            value = copy_context_loss(feats, m.context_idx, m.context_valid, m.target_idx, m.target_valid, grid=grid)
            assert torch.isfinite(value) and value.item() > 0
