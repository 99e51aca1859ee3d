"""Predictor: shapes, mask tokens, rotary positions, padding invariance, checkpointing, size."""

from __future__ import annotations

import math

import pytest
import torch

from worldmodel.models.predictor import Predictor

GRID = (2, 4, 4)  # 32 tokens
EMBED = 64


def tiny(**overrides) -> Predictor:
    kwargs = dict(embed_dim=EMBED, pred_dim=32, depth=2, num_heads=2, num_mask_tokens=2)
    torch.manual_seed(0)
    return Predictor(**{**kwargs, **overrides}).eval()


def randomise_mask_tokens(model: Predictor) -> None:
    with torch.no_grad():
        model.mask_tokens.normal_()


def batch():
    """Two samples: disjoint context / target index sets drawn from the 32-token grid."""
    gen = torch.Generator().manual_seed(1)
    order = torch.stack([torch.randperm(32, generator=gen) for _ in range(2)])
    context_idx, target_idx = order[:, :12], order[:, 12:20]
    context = torch.randn(2, 12, EMBED, generator=gen)
    return context, context_idx, target_idx


def test_output_shape_and_finite():
    model = tiny()
    context, context_idx, target_idx = batch()
    with torch.no_grad():
        out = model(context, context_idx, None, target_idx, None, GRID)
    assert out.shape == (2, 8, EMBED)
    assert torch.isfinite(out).all()


def test_mask_tokens_start_at_zero_and_mask_kind_selects_one():
    model = tiny()
    assert model.mask_tokens.shape == (2, 32)
    assert torch.count_nonzero(model.mask_tokens) == 0
    context, context_idx, target_idx = batch()
    with torch.no_grad():
        same = [model(context, context_idx, None, target_idx, None, GRID, mask_kind=k) for k in (0, 1)]
        torch.testing.assert_close(same[0], same[1])  # both tokens are zero at init
        randomise_mask_tokens(model)
        kinds = [model(context, context_idx, None, target_idx, None, GRID, mask_kind=k) for k in (0, 1)]
    assert not torch.allclose(kinds[0], kinds[1], atol=1e-4)
    with pytest.raises(ValueError, match="mask_kind"):
        model(context, context_idx, None, target_idx, None, GRID, mask_kind=2)


def test_mask_token_receives_gradient_only_for_its_kind():
    model = tiny().train()
    context, context_idx, target_idx = batch()
    model(context, context_idx, None, target_idx, None, GRID, mask_kind=1).square().mean().backward()
    assert model.mask_tokens.grad[1].abs().sum() > 0
    assert torch.count_nonzero(model.mask_tokens.grad[0]) == 0


def test_target_positions_come_from_target_idx():
    """Same mask tokens everywhere: targets differ only through their rotary positions."""
    model = tiny()
    context, context_idx, target_idx = batch()
    with torch.no_grad():
        out = model(context, context_idx, None, target_idx, None, GRID)
        swapped = model(context, context_idx, None, target_idx.flip(1), None, GRID)
    assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-4)
    torch.testing.assert_close(swapped, out.flip(1), atol=1e-5, rtol=1e-5)


def test_context_order_does_not_matter():
    model = tiny()
    randomise_mask_tokens(model)
    context, context_idx, target_idx = batch()
    perm = torch.randperm(12)
    with torch.no_grad():
        out = model(context, context_idx, None, target_idx, None, GRID)
        shuffled = model(context[:, perm], context_idx[:, perm], None, target_idx, None, GRID)
    torch.testing.assert_close(shuffled, out, atol=1e-5, rtol=1e-5)


def test_context_and_target_padding_do_not_change_valid_predictions():
    model = tiny()
    randomise_mask_tokens(model)
    context, context_idx, target_idx = batch()
    pad_c, pad_t = 5, 3
    padded_context = torch.cat([context, torch.randn(2, pad_c, EMBED)], dim=1)
    padded_context_idx = torch.cat([context_idx, torch.zeros(2, pad_c, dtype=torch.long)], dim=1)
    padded_target_idx = torch.cat([target_idx, torch.zeros(2, pad_t, dtype=torch.long)], dim=1)
    context_valid = torch.arange(12 + pad_c).expand(2, -1) < 12
    target_valid = torch.arange(8 + pad_t).expand(2, -1) < 8
    with torch.no_grad():
        plain = model(context, context_idx, None, target_idx, None, GRID)
        padded = model(padded_context, padded_context_idx, context_valid, padded_target_idx, target_valid, GRID)
        leaky = model(padded_context, padded_context_idx, None, padded_target_idx, None, GRID)
    assert padded.shape == (2, 8 + pad_t, EMBED)
    torch.testing.assert_close(padded[:, :8], plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[:, :8], plain, atol=1e-4)  # without validity masks padding leaks in


def test_activation_checkpointing_same_outputs_and_gradients():
    context, context_idx, target_idx = batch()
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[0, -2:] = False
    results = []
    for checkpointing in (False, True):
        model = tiny(activation_checkpointing=checkpointing).train()
        randomise_mask_tokens(model)
        out = model(context, context_idx, None, target_idx, valid, GRID, mask_kind=1)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_init_and_names_follow_vjepa2():
    model = tiny(depth=3)
    names = set(model.state_dict())
    assert {
        "predictor_embed.weight",
        "mask_tokens",
        "predictor_blocks.2.attn.qkv.weight",
        "predictor_norm.weight",
        "predictor_proj.bias",
    } <= names
    assert torch.count_nonzero(model.predictor_proj.bias) == 0
    w = model.predictor_blocks[2].mlp.fc2.weight
    assert w.std().item() == pytest.approx(0.02 / 6**0.5, rel=0.15)


def test_vjepa2_size_parameter_count():
    with torch.device("meta"):
        model = Predictor(embed_dim=1024, pred_dim=384, depth=12, num_heads=12, num_mask_tokens=2)
    # equals V-JEPA 2's vit_predictor (12 x 384, 12 heads, RoPE) for a ViT-L encoder
    assert sum(p.numel() for p in model.parameters()) == 22_082_944
    assert model.rope.chunk == 10 and model.rope.num_unrotated == 2  # head_dim 32


def test_forward_compiles_as_one_graph():
    model = tiny()
    context, context_idx, target_idx = batch()
    valid = torch.rand(2, 8) > 0.2
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model(context, context_idx, None, target_idx, valid, GRID, 1)
        torch.testing.assert_close(compiled(context, context_idx, None, target_idx, valid, GRID, 1), expected)


def test_copy_context_finds_the_latest_earlier_token_at_the_same_position():
    from worldmodel.models.predictor import latest_earlier_context

    grid = (4, 2, 2)  # 4 steps of 2 x 2
    context_idx = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])  # steps 0 and 1
    target_idx = torch.tensor([[8, 9, 12, 15, 2]])  # step 2 pos 0 / 1, step 3 pos 0 / 3, step 0 pos 2 (nothing earlier)
    slot, has = latest_earlier_context(context_idx, None, target_idx, grid)
    assert slot[0, :4].tolist() == [4, 5, 4, 7] and has[0].tolist() == [True, True, True, True, False]
    # padding slots are never a source: with step 1 invalid, step 0 is the latest valid one
    valid = torch.tensor([[True] * 4 + [False] * 4])
    slot, has = latest_earlier_context(context_idx, valid, target_idx, grid)
    assert slot[0, :4].tolist() == [0, 1, 0, 3]


def test_copy_context_changes_future_targets_only():
    torch.manual_seed(0)
    grid = (4, 2, 2)
    plain = Predictor(embed_dim=24, pred_dim=16, depth=1, num_heads=2, num_mask_tokens=1)
    copying = Predictor(embed_dim=24, pred_dim=16, depth=1, num_heads=2, num_mask_tokens=1, copy_context=True)
    copying.load_state_dict(plain.state_dict())  # no extra parameters
    context = torch.randn(1, 8, 24)
    # a tube target (same spatial position at no time in the context) is predicted identically
    tube_ctx, tube_tgt = torch.tensor([[0, 4, 8, 12, 1, 5, 9, 13]]), torch.tensor([[2, 6, 10, 14]])
    torch.testing.assert_close(
        plain(context, tube_ctx, None, tube_tgt, None, grid), copying(context, tube_ctx, None, tube_tgt, None, grid)
    )
    # future targets start from the last context frame, so they differ
    fut_ctx, fut_tgt = torch.arange(8)[None], torch.arange(8, 16)[None]
    assert not torch.allclose(plain(context, fut_ctx, None, fut_tgt, None, grid), copying(context, fut_ctx, None, fut_tgt, None, grid))


def test_copy_context_mean_averages_the_context_at_each_position():
    from worldmodel.models.predictor import context_mean_by_position, copy_context_mode

    grid = (4, 2, 2)  # 4 steps of 2 x 2
    context_idx = torch.tensor([[0, 1, 4, 5, 13]])  # pos 0 at steps 0, 1; pos 1 at steps 0, 1 and 3
    context = torch.tensor([[1.0, 10.0, 3.0, 20.0, 60.0]])[..., None]  # (1, 5, 1)
    target_idx = torch.tensor([[8, 9, 10, 12]])  # pos 0, 1, 2 (no context there), pos 0 again
    means = context_mean_by_position(context, context_idx, None, target_idx, grid)
    assert means[0, :, 0].tolist() == [2.0, 30.0, 0.0, 2.0]
    # padding never counts: with the step-3 token invalid, position 1 averages steps 0 and 1 only
    valid = torch.tensor([[True, True, True, True, False]])
    assert context_mean_by_position(context, context_idx, valid, target_idx, grid)[0, 1, 0].item() == 15.0
    assert [copy_context_mode(v) for v in (False, None, "none", True, "last", "mean", "blend")] == (
        [None] * 3 + ["last"] * 2 + ["mean", "blend"]
    )
    with pytest.raises(ValueError, match="copy_context"):
        copy_context_mode("first")


def test_copy_context_blend_mixes_last_and_mean_by_a_learned_gate_per_offset():
    grid = (4, 1, 2)  # 4 steps of 1 x 2
    model = Predictor(embed_dim=8, pred_dim=8, depth=1, num_heads=1, num_mask_tokens=2, copy_context="blend")
    assert model.copy_gate.shape == (2, 2, 8) and not model.copy_gate.any()  # zero init: gate 0.5
    with torch.no_grad():
        model.copy_gate[1, 0] = torch.tensor([0.0, 1.0, -1.0, 2.0]).repeat(2)  # a
        model.copy_gate[1, 1] = torch.tensor([0.5, -1.0, 0.0, 1.0]).repeat(2)  # b
    context = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], [5.0, 2.0, -3.0, 0.0]]]).repeat(1, 1, 2)  # (1, 3, P)
    context_idx = torch.tensor([[0, 1, 2]])  # pos 0 at steps 0 and 1; pos 1 at step 0
    target_idx = torch.tensor([[4, 6, 7, 5]])  # pos 0 at step 2 / 3, pos 1 at step 3, pos 1 at step 2
    copied = model._copied(context, context_idx, None, target_idx, grid, mask_kind=1)  # (1, 4, P)
    a, b = model.copy_gate[1].detach()
    mean0, last0, last1 = (context[0, 0] + context[0, 2]) / 2, context[0, 2], context[0, 1]
    for k, (last, mean, dt) in enumerate([(last0, mean0, 1), (last0, mean0, 2), (last1, last1, 3), (last1, last1, 2)]):
        gate = torch.sigmoid(a + b * math.log(dt))
        torch.testing.assert_close(copied[0, k], last + gate * (mean - last))
    # the other kind's gate is still 0.5: halfway between last and mean
    half = model._copied(context, context_idx, None, target_idx, grid, mask_kind=0)
    torch.testing.assert_close(half[0, 0], (last0 + mean0) / 2)
    # no earlier context at the position (a target before the context): the mean, as "mean" does
    early = model._copied(context[:, 1:2], torch.tensor([[3]]), None, torch.tensor([[1]]), grid, mask_kind=1)
    torch.testing.assert_close(early[0, 0], context[0, 1])
    # the training path (all kinds on the grid) equals the per-kind calls, and the gate gets gradients
    torch.manual_seed(0)
    big = Predictor(embed_dim=8, pred_dim=12, depth=1, num_heads=2, num_mask_tokens=2, copy_context="blend")
    with torch.no_grad():
        big.copy_gate.normal_()
    ctx, cidx, tidx = torch.randn(2, 4, 8), torch.arange(4).expand(2, -1), torch.arange(4, 8).expand(2, -1)
    single = big(ctx, cidx, None, tidx, None, grid, mask_kind=1)
    torch.testing.assert_close(big.forward_kinds([ctx], [cidx], [None], [tidx], [None], grid, [1])[0], single)
    single.sum().backward()
    assert big.copy_gate.grad[1].abs().sum() > 0 and big.copy_gate.grad[0].abs().sum() == 0
