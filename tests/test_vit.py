"""VideoViT: shapes, token selection by index, padding invariance, checkpointing, init, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from worldmodel.models.vit import (
    VideoViT,
    VideoViTConfig,
    grid_positions,
    vit_giant,
    vit_huge,
    vit_large,
    vit_small,
    vit_tiny,
)


def tiny(**overrides) -> VideoViT:
    cfg = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=64, depth=2, num_heads=2)
    torch.manual_seed(0)
    return VideoViT(VideoViTConfig(**{**cfg, **overrides})).eval()


@pytest.mark.parametrize(
    "shape, grid",
    [
        ((2, 3, 4, 32, 32), (2, 4, 4)),  # square
        ((2, 3, 4, 16, 32), (2, 2, 4)),  # non-square
        ((1, 3, 2, 32, 24), (1, 4, 3)),  # one tubelet
        ((1, 3, 6, 16, 16), (3, 2, 2)),  # frame count other than the nominal one
        ((2, 3, 32, 16), (1, 4, 2)),  # image
    ],
)
def test_output_shapes(shape, grid):
    model = tiny()
    assert model.grid(shape) == grid
    with torch.no_grad():
        tokens = model(torch.randn(shape))
    assert tokens.shape == (shape[0], math.prod(grid), 64)
    assert torch.isfinite(tokens).all()


def test_image_is_one_repeated_tubelet():
    model = tiny()
    image = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        as_image = model(image)
        as_video = model(image[:, :, None].repeat(1, 1, 2, 1, 1))
    torch.testing.assert_close(as_image, as_video)


def test_bad_shapes_raise_with_a_hint():
    model = tiny()
    with pytest.raises(ValueError, match="tubelet"):
        model.grid((1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match="patch size"):
        model.grid((1, 3, 4, 30, 32))
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        model.grid((3, 32, 32))


def test_grid_positions_are_raster_order():
    positions = grid_positions((2, 3, 4))
    assert positions.shape == (24, 3) and positions.dtype == torch.int64
    assert positions[0].tolist() == [0, 0, 0]
    assert positions[1].tolist() == [0, 0, 1]
    assert positions[4].tolist() == [0, 1, 0]
    assert positions[12].tolist() == [1, 0, 0]
    assert positions[23].tolist() == [1, 2, 3]


def test_tubelet_embedding_is_t_h_w_raster_order():
    """Token n of the output comes from the tubelet at grid_positions[n] (checked via locality)."""
    model = tiny(depth=0)
    video = torch.zeros(1, 3, 4, 16, 32)
    video[:, :, 2:4, 8:16, 24:32] = 1.0  # tubelet t=1, row 1, column 3 -> index 1*8 + 1*4 + 3 = 15
    with torch.no_grad():
        tokens = model.patch_embed(video)  # (1, 16, D) before the blocks
    changed = (tokens[0] - tokens[0, 0]).abs().sum(-1) > 1e-6
    assert changed.nonzero().flatten().tolist() == [15]
    assert grid_positions((2, 2, 4))[15].tolist() == [1, 1, 3]


@pytest.mark.parametrize("layout", ["standard", "vjepa2"])
def test_all_indices_in_any_order_equal_the_permuted_full_forward(layout):
    model = tiny(rope_layout=layout)
    video = torch.randn(2, 3, 4, 16, 32)
    num_tokens = math.prod(model.grid(video.shape))
    order = torch.stack([torch.randperm(num_tokens), torch.randperm(num_tokens)])  # (B, N)
    with torch.no_grad():
        full = model(video)
        permuted = model(video, token_idx=order)
    expected = torch.take_along_dim(full, order[..., None], dim=1)
    torch.testing.assert_close(permuted, expected, atol=1e-5, rtol=1e-5)


def test_an_index_outside_the_clip_raises_instead_of_reading_past_it():
    """Token indices (the encoder's context, the predictor's positions) are not range-checked up front (that
    would cost a device sync per step), but the gather that uses them checks them, on the CPU too."""
    model = tiny()
    video = torch.randn(2, 3, 4, 16, 32)
    num_tokens = math.prod(model.grid(video.shape))
    with torch.no_grad(), pytest.raises(RuntimeError, match="out of bounds"):
        model(video, token_idx=torch.tensor([[0, num_tokens], [1, 2]]))


def test_one_index_row_picks_the_same_tokens_of_every_clip():
    model = tiny()
    video = torch.randn(2, 3, 4, 16, 32)
    keep = torch.tensor([[0, 3, 5]])
    with torch.no_grad():
        shared = model(video, token_idx=keep)
        each = model(video, token_idx=keep.expand(2, -1))
    assert shared.shape == (2, 3, model.cfg.embed_dim) and torch.equal(shared, each)


def test_channels_last_clips_are_refused_with_what_to_do():
    model = tiny()
    with pytest.raises(ValueError, match=r"expected 3 channels in dim 1 .*rearrange"):
        model(torch.randn(1, 4, 16, 32, 3))  # (B, T, H, W, C)


def test_subset_sees_only_its_tokens():
    model = tiny()
    video = torch.randn(1, 3, 4, 32, 32)
    keep = torch.tensor([[0, 5, 17, 30]])
    changed = video.clone()
    changed[:, :, :, 24:, 24:] = 0.0  # the last column/row of every frame: not among the kept tokens
    with torch.no_grad():
        subset, subset_changed = model(video, token_idx=keep), model(changed, token_idx=keep)
        full, full_changed = model(video), model(changed)
    torch.testing.assert_close(subset, subset_changed)
    assert not torch.allclose(full[:, keep[0]], full_changed[:, keep[0]])


def test_padding_does_not_change_valid_tokens():
    model = tiny()
    video = torch.randn(2, 3, 4, 32, 32)
    token_idx = torch.tensor([[3, 9, 20, 31, 12], [0, 1, 2, 27, 15]])
    padded_idx = torch.cat([token_idx, torch.zeros(2, 4, dtype=torch.long)], dim=1)  # padding holds index 0
    valid = torch.cat([torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        plain = model(video, token_idx=token_idx)
        padded = model(video, token_idx=padded_idx, token_valid=valid)
        unmasked = model(video, token_idx=padded_idx)
    assert padded.shape == (2, 9, 64)
    torch.testing.assert_close(padded[:, :5], plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[:, :5], plain, atol=1e-4)  # without the mask, padding leaks in
    # ragged valid counts in one batch: sample 1 keeps only 3 tokens
    valid[1, 3:] = False
    with torch.no_grad():
        ragged = model(video, token_idx=padded_idx, token_valid=valid)
        alone = model(video[1:], token_idx=token_idx[1:, :3])
    torch.testing.assert_close(ragged[1, :3], alone[0], atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_same_outputs_and_gradients():
    video = torch.randn(2, 3, 4, 32, 32)
    token_idx = torch.tensor([[1, 4, 9, 16, 0], [2, 3, 5, 7, 0]])
    valid = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    results = []
    for checkpointing in (False, True):
        model = tiny(activation_checkpointing=checkpointing).train()
        out = model(video, token_idx=token_idx, token_valid=valid)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    assert grads_a["blocks.0.attn.qkv.weight"].abs().sum() > 0


def test_init_follows_the_reference():
    model = tiny(depth=4, embed_dim=192, num_heads=3)
    for name, param in model.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            assert torch.count_nonzero(param) == 0, name
    assert torch.equal(model.norm.weight, torch.ones(192)) and torch.count_nonzero(model.norm.bias) == 0
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.patch_embed.proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.blocks[0].attn.qkv.weight.abs().max() <= 2.0
    for layer_id, block in enumerate(model.blocks, start=1):
        expected = 0.02 / math.sqrt(2 * layer_id)
        assert block.attn.proj.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert block.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_state_dict_names_follow_vjepa2():
    names = set(tiny().state_dict())
    assert {
        "patch_embed.proj.weight",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.norm2.bias",
        "blocks.1.mlp.fc1.weight",
        "blocks.1.mlp.fc2.bias",
        "norm.weight",
    } <= names
    assert not any("rope" in n or "pos_embed" in n for n in names)


def test_factories_take_the_same_overrides():
    model = vit_tiny(img_size=(32, 48), patch_size=8, num_frames=4, tubelet_size=2, rope_layout="vjepa2")
    assert (model.cfg.embed_dim, model.cfg.depth, model.cfg.num_heads) == (192, 12, 3)
    assert model.cfg.img_size == (32, 48) and model.rope.layout == "vjepa2"
    assert model.grid((1, 3, 4, 32, 48)) == (2, 4, 6)
    small = vit_small(depth=1)
    assert (small.embed_dim, len(small.blocks)) == (384, 1)
    with pytest.raises(TypeError, match="unknown options"):
        vit_tiny(embed=64)


@pytest.mark.parametrize(
    "factory, expected, heads, head_dim",
    [
        # the reference models' exact counts (patch 16, tubelet 2, 3 channels, no position table)
        (vit_large, 303_885_312, 16, 64),
        (vit_huge, 631_648_000, 16, 80),
        (vit_giant, 1_012_173_952, 22, 64),
    ],
)
def test_parameter_counts_match_the_reference(factory, expected, heads, head_dim):
    with torch.device("meta"):
        model = factory(img_size=256, activation_checkpointing=True)
    assert sum(p.numel() for p in model.parameters()) == expected
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim) == (heads, head_dim)


def test_forward_has_no_host_syncs_or_data_dependent_branches():
    """Compiles as one graph (an .item(), nonzero() or branch on tensor values would break it)."""
    model = tiny()
    video = torch.randn(2, 3, 4, 32, 32)
    token_idx = torch.randint(0, 32, (2, 10))
    valid = torch.rand(2, 10) > 0.3
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(video, token_idx, valid), model(video, token_idx, valid))
