"""The training step's batched paths give the per-kind results: packed context encoder, grid predictor,
complex rotary tables, and compute_loss as a whole (losses and gradients)."""

from __future__ import annotations

import pytest
import torch

from worldmodel.data.transforms import normalize_video
from worldmodel.masks import MaskBatch
from worldmodel.models.predictor import Predictor
from worldmodel.models.rope import Rope3D, apply_rotary, rotate
from worldmodel.models.vit import vit_tiny
from worldmodel.objectives import gather_tokens, jepa_loss, target_features
from worldmodel.pretrain import JEPAPretrainer


def padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged index rows -> (idx (B, K) padded with 0, valid (B, K)), like the collator."""
    width = max(len(r) for r in rows)
    idx = torch.stack([torch.cat([r, r.new_zeros(width - len(r))]) for r in rows])
    valid = torch.arange(width)[None, :] < torch.tensor([[len(r)] for r in rows])
    return idx, valid


def weighted_sum(outputs, valids, seed: int = 0) -> torch.Tensor:
    """A scalar that depends on every valid output (random weights), none of the padding."""
    gen = torch.Generator().manual_seed(seed)
    return sum((out * torch.randn(out.shape, generator=gen) * v[..., None]).sum() for out, v in zip(outputs, valids))


def test_forward_subsets_matches_one_forward_per_subset():
    torch.manual_seed(0)
    model = vit_tiny(img_size=64, num_frames=8, depth=2).train()
    video = torch.randn(3, 3, 8, 64, 64)
    num_tokens = 4 * 4 * 4
    subsets = [
        padded([torch.randperm(num_tokens)[:n] for n in (20, 13, 5)]),
        padded([torch.randperm(num_tokens)[:n] for n in (2, 9, 7)]),
    ]
    idx, valid = [s[0] for s in subsets], [s[1] for s in subsets]
    expected = [model(video, i, v) for i, v in zip(idx, valid)]
    params = list(model.parameters())
    expected_grads = torch.autograd.grad(weighted_sum(expected, valid), params)
    for counts in (None, [int(v.sum()) for v in valid]):  # counted here, or known on the host
        out = model.forward_subsets(video, idx, valid, num_valid=counts)
        for o, e, v in zip(out, expected, valid):
            assert o.shape == e.shape
            torch.testing.assert_close(o[v], e[v], atol=1e-5, rtol=1e-5)
        grads = torch.autograd.grad(weighted_sum(out, valid), params)
        for name, g, e in zip([n for n, _ in model.named_parameters()], grads, expected_grads):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=name)
    # without validity masks every index is a token
    torch.testing.assert_close(model.forward_subsets(video, [idx[0]])[0], model(video, idx[0]), atol=1e-5, rtol=1e-5)


def test_forward_subsets_with_activation_checkpointing():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32)
    idx, valid = padded([torch.tensor([0, 3, 5, 6]), torch.tensor([1, 7])])
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = vit_tiny(img_size=32, num_frames=4, depth=2, activation_checkpointing=checkpointing).train()
        out = model.forward_subsets(video, [idx, idx[:, :2]], [valid, valid[:, :2]])
        results.append((out, torch.autograd.grad(weighted_sum(out, [valid, valid[:, :2]]), list(model.parameters()))))
    (out_a, grads_a), (out_b, grads_b) = results
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


def disjoint_split(num_tokens: int, num_context: list[int], num_target: list[int] | None):
    """Per-sample disjoint context / target index rows; targets = the rest of the grid when num_target is None."""
    contexts, targets = [], []
    for b, n in enumerate(num_context):
        perm = torch.randperm(num_tokens)
        contexts.append(perm[:n].sort().values)
        targets.append(perm[n:] if num_target is None else perm[n : n + num_target[b]])
    return padded(contexts) + padded(targets)


@pytest.mark.parametrize("copy_context", [False, True, "mean"])
def test_forward_kinds_matches_one_forward_per_kind(copy_context):
    torch.manual_seed(0)
    grid = (4, 3, 3)
    model = Predictor(64, pred_dim=48, depth=2, num_heads=3, num_mask_tokens=3, copy_context=copy_context).train()
    with torch.no_grad():
        model.mask_tokens.normal_()  # distinct mask tokens, so a wrong kind would show
    kinds = [
        disjoint_split(36, [10, 4, 20], None),  # context + targets cover the grid (multi-block, future)
        disjoint_split(36, [7, 12, 3], [5, 20, 9]),  # some tokens are neither: masked out as keys
    ]
    contexts = [torch.randn(3, k[0].shape[1], 64, requires_grad=True) for k in kinds]
    mask_kinds = [2, 0]
    expected = [model(c, *k, grid, kind) for c, k, kind in zip(contexts, kinds, mask_kinds)]
    out = model.forward_kinds(contexts, *[[k[i] for k in kinds] for i in range(4)], grid, mask_kinds)
    target_valid = [k[3] for k in kinds]
    for o, e, v in zip(out, expected, target_valid):
        assert o.shape == e.shape
        torch.testing.assert_close(o[v], e[v], atol=1e-5, rtol=1e-5)
    inputs = list(model.parameters()) + contexts
    grads = torch.autograd.grad(weighted_sum(out, target_valid), inputs)
    expected_grads = torch.autograd.grad(weighted_sum(expected, target_valid), inputs)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_a_covered_grid_runs_the_predictors_attention_without_a_mask(monkeypatch):
    """When every sample's context and targets cover the grid (every built-in mask kind), the predictor's
    attention needs no key mask: the same outputs and gradients bit for bit on the CPU, without the mask's
    cost. The training step knows it from the collator's counts, on the host; a kind that leaves tokens
    out keeps the mask."""
    torch.manual_seed(0)
    grid = (4, 3, 3)
    model = Predictor(64, pred_dim=48, depth=2, num_heads=3, num_mask_tokens=2, copy_context="blend").train()
    kinds = [disjoint_split(36, [10, 4, 20], None), disjoint_split(36, [7, 12, 3], None)]
    contexts = [torch.randn(3, k[0].shape[1], 64, requires_grad=True) for k in kinds]
    args = (contexts, *[[k[i] for k in kinds] for i in range(4)], grid, [0, 1])
    fast, masked = model.forward_kinds(*args, grid_covered=True), model.forward_kinds(*args)
    assert all(torch.equal(a, b) for a, b in zip(fast, masked))
    inputs = list(model.parameters()) + contexts
    valid = [k[3] for k in kinds]
    for a, b in zip(torch.autograd.grad(weighted_sum(fast, valid), inputs), torch.autograd.grad(weighted_sum(masked, valid), inputs)):
        assert torch.equal(a, b)

    seen = []
    original = Predictor.forward_kinds
    monkeypatch.setattr(Predictor, "forward_kinds", lambda self, *a, **k: seen.append(k.get("grid_covered")) or original(self, *a, **k))
    module = JEPAPretrainer(encoder="vit_tiny", img_size=64, num_frames=8, encoder_kwargs={"depth": 1}, pred_depth=1,
                            pred_dim=48, pred_heads=3, collapse_every=0).train()
    clips = torch.randint(0, 256, (2, 3, 8, 64, 64), dtype=torch.uint8)
    batch = module.mask_collator()([{"video": clips[i], "label": -1, "index": i, "epoch": 0, "errors": []} for i in range(2)])
    module.compute_loss(batch)
    # some tokens neither context nor target (a mask kind of one's own): the mask stays
    import numpy as np

    rows = [np.random.default_rng(i).permutation(64) for i in range(2)]
    batch["masks"] = [MaskBatch.from_indices(0, (4, 4, 4), [r[:20] for r in rows], [r[20:50] for r in rows])]
    module.compute_loss(batch)
    assert seen == [True, False]


def test_forward_kinds_rejects_unknown_kind():
    model = Predictor(64, pred_dim=48, depth=1, num_heads=3, num_mask_tokens=2)
    split = disjoint_split(36, [10], None)
    with pytest.raises(ValueError, match="mask_kind 2 out of range"):
        model.forward_kinds([torch.randn(1, 10, 64)], [split[0]], [split[1]], [split[2]], [split[3]], (4, 3, 3), [2])


@pytest.mark.parametrize("head_dim", [32, 64, 80])
def test_complex_table_rotates_like_the_real_tables(head_dim):
    rope = Rope3D(head_dim)
    positions = torch.randint(0, 16, (2, 10, 3))
    x = torch.randn(2, 3, 10, head_dim)
    table = rope.table(positions)
    assert table.is_complex()
    torch.testing.assert_close(rotate(x, table), apply_rotary(x, *rope.cos_sin(positions)), atol=1e-6, rtol=1e-6)
    # a non-contiguous view (like q and k inside the fused qkv output) and bf16 inputs (autocast)
    wide = torch.randn(2, 3, 10, 3 * head_dim)
    view = wide[..., head_dim : 2 * head_dim]
    torch.testing.assert_close(rotate(view, table), apply_rotary(view, *rope.cos_sin(positions)), atol=1e-6, rtol=1e-6)
    low = rotate(x.bfloat16(), table)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), rotate(x, table), atol=0.05, rtol=0.02)
    # the V-JEPA 2 layout keeps its real tables
    assert isinstance(Rope3D(head_dim, layout="vjepa2").table(positions), tuple)


@pytest.mark.parametrize("pred_copy_context", [False, True, "mean", "blend"])
def test_compute_loss_matches_per_kind_calls(pred_copy_context):
    torch.manual_seed(0)
    masks = [
        {"type": "multiblock", "num_blocks": 8, "spatial_scale": [0.15, 0.15]},
        {"type": "multiblock", "num_blocks": 2, "spatial_scale": [0.7, 0.7]},
        {"type": "future", "context_fraction": [0.25, 0.75]},
    ]
    module = JEPAPretrainer(
        encoder="vit_tiny", img_size=64, num_frames=8, encoder_kwargs={"depth": 2}, pred_depth=2, pred_dim=96,
        pred_heads=3, pred_copy_context=pred_copy_context, masks=masks, collapse_every=0,
    ).train()
    with torch.no_grad():
        module.predictor.mask_tokens.normal_()
        if pred_copy_context == "blend":
            module.predictor.copy_gate.normal_()
    clips = torch.randint(0, 256, (4, 3, 8, 64, 64), dtype=torch.uint8)
    batch = module.mask_collator()([{"video": clips[i], "label": -1, "index": i, "epoch": 0, "errors": []} for i in range(4)])
    assert all(m.context_count == int(m.context_valid.sum()) for m in batch["masks"])
    assert all(m.to("cpu").context_count == m.context_count for m in batch["masks"])
    params = [p for p in module.parameters() if p.requires_grad]
    out = module.compute_loss(batch)
    grads = torch.autograd.grad(out.total, params)

    # the same step written with one encoder and one predictor call per kind
    video = normalize_video(batch["video"])
    grid = module.encoder.grid(video.shape)
    targets = target_features(module.forward_targets(video))
    losses = []
    for m in batch["masks"]:
        context = module.encoder(video, token_idx=m.context_idx, token_valid=m.context_valid)
        pred = module.predictor(context, m.context_idx, m.context_valid, m.target_idx, m.target_valid, grid=grid, mask_kind=m.kind)
        losses.append(jepa_loss(pred, gather_tokens(targets, m.target_idx), m.target_valid))
    expected = torch.stack(losses).mean()
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
    for kind, loss in enumerate(losses):
        torch.testing.assert_close(out.metrics[f"loss_kind{kind}"], loss.detach(), atol=1e-6, rtol=1e-6)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_mask_batch_counts_are_optional():
    m = MaskBatch(0, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool),
                  torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool), (1, 2, 2))
    assert m.context_count is None and m.to("cpu").context_count is None


def test_biases_norms_mask_tokens_and_copy_gate_are_not_weight_decayed():
    module = JEPAPretrainer(
        encoder="vit_tiny", img_size=32, num_frames=4, encoder_kwargs={"depth": 1}, pred_depth=1, pred_dim=96,
        pred_heads=3, pred_copy_context="blend", collapse_every=0,
    )
    groups = {group["wd_scale"]: {id(p) for p in group["params"]} for group in module.configure_optimizers().param_groups}
    predictor = module.predictor
    for param in (predictor.copy_gate, predictor.mask_tokens, predictor.predictor_norm.weight, predictor.predictor_proj.bias):
        assert id(param) in groups[0.0]
    for param in (predictor.predictor_proj.weight, module.encoder.blocks[0].mlp.fc1.weight):
        assert id(param) in groups[1.0]
    assert len(groups[0.0]) + len(groups[1.0]) == sum(p.requires_grad for p in module.parameters())
