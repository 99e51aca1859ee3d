"""Importing V-JEPA 2 checkpoints: key mapping, variant inference, rotary layout, identical outputs.

The checkpoints are written by the test in V-JEPA 2's layout ("encoder" / "target_encoder" /
"predictor" entries, "module.backbone." prefixes, unused position tables, per-token mask tokens,
optimiser junk), with random weights at a tiny size: width 192 (the vit_tiny width: 3 heads of 64, RoPE
chunks of 20), depth 2, a 96-dim predictor (3 heads of 32, RoPE chunks of 10), 10 mask tokens.

Outputs are compared with `ref_encoder` / `ref_predictor` below: a small independent re-implementation
of the reference's forward pass, written for this test with plain torch functions from the documented
facts (tubelet Conv3d; pre-norm blocks; RoPE over (t, h, w) chunks of 2*((head_dim//3)//2) dims with
the reference's tiled frequencies, leftover dims unrotated; SDPA; the predictor sorts its tokens by
position and reads rows/columns from a square grid of img_size // patch tokens per side).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from worldmodel.checkpoints import CheckpointError, SquareGridPredictor, load_model_parts, load_vjepa2
from worldmodel.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from worldmodel.models.vit import VideoViT

WIDTH, DEPTH, PRED_DIM, PRED_DEPTH, MASK_TOKENS = 192, 2, 96, 2, 10
HEADS, PRED_HEADS = 3, 3  # what V-JEPA 2's tables give: vit_tiny width -> 3 heads; predictor heads of 32
PATCH, TUBELET = 16, 2
PREFIX = "module.backbone."


# ---------------------------------------------------------------------------------------------- reference
def ref_rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Reference rotary of one chunk: x (B, H, N, c), pos (N,) or (B, N) integer coordinates."""
    half = x.shape[-1] // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32) / half)
    angles = pos.to(torch.float32)[..., None] * omega  # (..., N, c/2)
    angles = torch.cat([angles, angles], dim=-1)  # tiled, not interleaved: element e uses theta_{e mod c/2}
    if pos.ndim == 2:
        angles = angles[:, None]  # (B, 1, N, c)
    even, odd = x[..., 0::2], x[..., 1::2]
    partner = torch.stack([-odd, even], dim=-1).reshape(x.shape)  # (-x1, x0, -x3, x2, ...)
    return x * angles.cos() + partner * angles.sin()


def ref_positions(ids: torch.Tensor, per_frame: int, per_row: int) -> tuple[torch.Tensor, ...]:
    frame = ids // per_frame
    row = (ids - frame * per_frame) // per_row
    col = ids - frame * per_frame - row * per_row
    return frame, row, col


def ref_block(x, p, prefix, heads, pos):
    batch, num, dim = x.shape
    head_dim = dim // heads
    chunk = 2 * ((head_dim // 3) // 2)

    def rotate(z):
        parts = [ref_rotate(z[..., i * chunk : (i + 1) * chunk], pos[i]) for i in range(3)]
        return torch.cat(parts + [z[..., 3 * chunk :]], dim=-1)

    h = F.layer_norm(x, (dim,), p[prefix + "norm1.weight"], p[prefix + "norm1.bias"], eps=1e-6)
    qkv = F.linear(h, p[prefix + "attn.qkv.weight"], p[prefix + "attn.qkv.bias"])
    q, k, v = qkv.reshape(batch, num, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(rotate(q), rotate(k), v)  # (B, H, N, hd)
    out = out.transpose(1, 2).reshape(batch, num, dim)
    x = x + F.linear(out, p[prefix + "attn.proj.weight"], p[prefix + "attn.proj.bias"])
    h = F.layer_norm(x, (dim,), p[prefix + "norm2.weight"], p[prefix + "norm2.bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, p[prefix + "mlp.fc1.weight"], p[prefix + "mlp.fc1.bias"])), p[prefix + "mlp.fc2.weight"], p[prefix + "mlp.fc2.bias"])
    return x + h


def ref_encoder(p, video, heads=HEADS, token_idx=None):
    weight = p["patch_embed.proj.weight"]
    tubelet, patch = weight.shape[2], weight.shape[3]
    x = F.conv3d(video, weight, p["patch_embed.proj.bias"], stride=(tubelet, patch, patch))  # (B, D, T, H, W)
    batch, dim, frames, rows, cols = x.shape
    x = x.flatten(2).transpose(1, 2)  # (B, T*H*W, D)
    if token_idx is None:
        ids = torch.arange(frames * rows * cols)
    else:
        ids = token_idx
        x = torch.gather(x, 1, token_idx[..., None].expand(-1, -1, dim))
    pos = ref_positions(ids, rows * cols, cols)  # the encoder passes the clip's own grid
    depth = len({k.split(".")[1] for k in p if k.startswith("blocks.")})
    for i in range(depth):
        x = ref_block(x, p, f"blocks.{i}.", heads, pos)
    return F.layer_norm(x, (dim,), p["norm.weight"], p["norm.bias"], eps=1e-6)


def ref_predictor(p, context, context_idx, target_idx, per_frame, per_row, mask_index=0, heads=PRED_HEADS):
    """per_frame / per_row: the reference's grid_size**2 / grid_size (grid_size = img_size // patch)."""
    batch, num_context, _ = context.shape
    x = F.linear(context, p["predictor_embed.weight"], p["predictor_embed.bias"])
    dim = x.shape[-1]
    count = len([k for k in p if k.startswith("mask_tokens.")])
    token = p[f"mask_tokens.{mask_index % count}"]  # (1, 1, P)
    x = torch.cat([x, token.expand(batch, target_idx.shape[1], dim)], dim=1)
    ids = torch.cat([context_idx, target_idx], dim=1)
    order = torch.argsort(ids, dim=1)  # the reference sorts tokens by position
    ids = torch.gather(ids, 1, order)
    x = torch.gather(x, 1, order[..., None].expand(-1, -1, dim))
    pos = ref_positions(ids, per_frame, per_row)
    depth = len({k.split(".")[1] for k in p if k.startswith("predictor_blocks.")})
    for i in range(depth):
        x = ref_block(x, p, f"predictor_blocks.{i}.", heads, pos)
    x = F.layer_norm(x, (dim,), p["predictor_norm.weight"], p["predictor_norm.bias"], eps=1e-6)
    x = torch.gather(x, 1, torch.argsort(order, dim=1)[..., None].expand(-1, -1, dim))[:, num_context:]
    return F.linear(x, p["predictor_proj.weight"], p["predictor_proj.bias"])


# ---------------------------------------------------------------------------------------------- checkpoints
def _linear(gen, out_dim, in_dim, gain=1.0):
    return torch.randn(out_dim, in_dim, generator=gen) * gain / in_dim**0.5, 0.1 * torch.randn(out_dim, generator=gen)


def _blocks(gen, state, prefix, depth, dim):
    for i in range(depth):
        b = f"{prefix}.{i}."
        for norm in ("norm1", "norm2"):
            state[b + norm + ".weight"] = 1 + 0.1 * torch.randn(dim, generator=gen)
            state[b + norm + ".bias"] = 0.1 * torch.randn(dim, generator=gen)
        state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"] = _linear(gen, 3 * dim, dim, gain=2.0)
        state[b + "attn.proj.weight"], state[b + "attn.proj.bias"] = _linear(gen, dim, dim)
        state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"] = _linear(gen, 4 * dim, dim)
        state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"] = _linear(gen, dim, 4 * dim)


def reference_encoder_state(seed: int, width: int = WIDTH, depth: int = DEPTH) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    fan_in = 3 * TUBELET * PATCH * PATCH
    state = {
        "patch_embed.proj.weight": torch.randn(width, 3, TUBELET, PATCH, PATCH, generator=gen) / fan_in**0.5,
        "patch_embed.proj.bias": 0.1 * torch.randn(width, generator=gen),
    }
    _blocks(gen, state, "blocks", depth, width)
    state["norm.weight"] = 1 + 0.1 * torch.randn(width, generator=gen)
    state["norm.bias"] = 0.1 * torch.randn(width, generator=gen)
    return state


def reference_predictor_state(seed: int, width: int = WIDTH) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    state["predictor_embed.weight"], state["predictor_embed.bias"] = _linear(gen, PRED_DIM, width)
    for i in range(MASK_TOKENS):
        state[f"mask_tokens.{i}"] = torch.randn(1, 1, PRED_DIM, generator=gen)
    _blocks(gen, state, "predictor_blocks", PRED_DEPTH, PRED_DIM)
    state["predictor_norm.weight"] = 1 + 0.1 * torch.randn(PRED_DIM, generator=gen)
    state["predictor_norm.bias"] = 0.1 * torch.randn(PRED_DIM, generator=gen)
    state["predictor_proj.weight"], state["predictor_proj.bias"] = _linear(gen, width, PRED_DIM)
    return state


def reference_states(width: int = WIDTH) -> dict[str, dict[str, torch.Tensor]]:
    """Clean-name state dicts of the three entries (what the reference modules hold)."""
    return {
        "encoder": reference_encoder_state(1, width),
        "target_encoder": reference_encoder_state(2, width),
        "predictor": reference_predictor_state(3, width),
    }


def write_reference_checkpoint(path: Path, states=None, prefix: str = PREFIX, drop: tuple[str, ...] = ()) -> dict:
    """Save `states` the way a V-JEPA 2 run does; returns the clean states."""
    states = states or reference_states()
    ckpt = {}
    for entry, state in states.items():
        if entry in drop:
            continue
        wrapped = {prefix + k: v for k, v in state.items()}
        junk = "predictor_pos_embed" if entry == "predictor" else "pos_embed"
        wrapped[prefix + junk] = torch.zeros(1, 8, 4)  # an unused position table
        ckpt[entry] = wrapped
    ckpt.update({"opt": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "scaler": None, "epoch": 10, "loss": 0.31})
    torch.save(ckpt, path)
    return states


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("vjepa2") / "vitt.pt"
    return path, write_reference_checkpoint(path)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------- mapping
def test_mapping_variant_and_rotary_layout(reference):
    path, states = reference
    parts = load_vjepa2(path)
    config = parts.config
    assert config["variant"] == "vit_tiny" and config["format"] == "vjepa2"
    assert (config["patch_size"], config["tubelet_size"], config["img_size"], config["num_frames"]) == (16, 2, 256, 64)
    assert config["rope_layout"] == "vjepa2"
    assert config["normalization"]["mean"] == list(IMAGENET_MEAN) and config["normalization"]["std"] == list(IMAGENET_STD)
    assert config["num_mask_tokens"] == MASK_TOKENS
    assert (config["pred_dim"], config["pred_depth"], config["pred_heads"]) == (PRED_DIM, PRED_DEPTH, PRED_HEADS)
    assert config["encoder_kwargs"] == {"depth": DEPTH, "rope_layout": "vjepa2"}  # vit_tiny width, our depth
    assert parts.data_config == {"fps": 4.0, "num_frames": 64}
    assert parts.encoder_role == "target" and parts.source == str(path)

    cfg = parts.encoder.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.tubelet_size) == (WIDTH, DEPTH, HEADS, 16, 2)
    assert parts.encoder.rope.layout == "vjepa2" and parts.predictor.rope.layout == "vjepa2"
    assert (parts.encoder.rope.chunk, parts.predictor.rope.chunk) == (20, 10)  # head_dim 64 and 32
    assert type(parts.predictor) is not SquareGridPredictor  # default: positions of the clip's own grid
    assert not parts.encoder.training and not parts.predictor.training

    # every tensor maps by name (prefixes stripped, position tables dropped), the target entry by default
    ours = parts.encoder.state_dict()
    assert set(ours) == set(states["target_encoder"])
    for name, value in states["target_encoder"].items():
        assert torch.equal(ours[name], value), name
    predictor = parts.predictor.state_dict()
    assert predictor["mask_tokens"].shape == (MASK_TOKENS, PRED_DIM)
    for i in range(MASK_TOKENS):  # the list of (1, 1, P) tokens stacked in order
        assert torch.equal(predictor["mask_tokens"][i], states["predictor"][f"mask_tokens.{i}"].reshape(-1))
    for name, value in states["predictor"].items():
        if not name.startswith("mask_tokens."):
            assert torch.equal(predictor[name], value), name

    context = load_vjepa2(path, encoder="context")
    assert context.encoder_role == "context"
    for name, value in states["encoder"].items():
        assert torch.equal(context.encoder.state_dict()[name], value), name


def test_load_model_parts_recognises_a_vjepa2_checkpoint(reference):
    path, _ = reference
    direct = load_vjepa2(path, img_size=32, num_frames=16)
    routed = load_model_parts(path, img_size=32, num_frames=16)
    assert routed.config == direct.config
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(routed.encoder(video), direct.encoder(video))


def test_wrapper_prefixes_are_optional(tmp_path):
    for prefix in ("", "module.", "backbone."):
        path = tmp_path / f"p{len(prefix)}.pt"
        states = write_reference_checkpoint(path, prefix=prefix)
        parts = load_vjepa2(path, encoder="context")
        assert torch.equal(parts.encoder.state_dict()["blocks.1.mlp.fc2.weight"], states["encoder"]["blocks.1.mlp.fc2.weight"])


# ---------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("size", [(32, 32), (32, 48)], ids=["square", "non-square"])
@pytest.mark.parametrize("frames", [16, 64])
def test_encoder_outputs_equal_the_reference(reference, size, frames):
    path, states = reference
    parts = load_vjepa2(path, img_size=size, num_frames=frames)
    torch.manual_seed(frames + size[1])
    video = torch.randn(2, 3, frames, *size)
    num_tokens = (frames // TUBELET) * (size[0] // PATCH) * (size[1] // PATCH)
    token_idx = torch.stack([torch.randperm(num_tokens)[: num_tokens // 3] for _ in range(2)])  # a masked encoder
    with torch.no_grad():
        full, ref_full = parts.encoder(video), ref_encoder(states["target_encoder"], video)
        kept = parts.encoder(video, token_idx=token_idx)
        ref_kept = ref_encoder(states["target_encoder"], video, token_idx=token_idx)
        # the standard (paired-frequency) layout with the same weights is measurably different
        standard = VideoViT(dataclasses.replace(parts.encoder.cfg, rope_layout="standard")).eval()
        standard.load_state_dict(parts.encoder.state_dict())
        other = standard(video)
    assert full.shape == (2, num_tokens, WIDTH)
    assert rel_err(full, ref_full) < 1e-5
    assert rel_err(kept, ref_kept) < 1e-5
    assert rel_err(other, ref_full) > 1e-3


@pytest.mark.parametrize("size", [(32, 32), (32, 48)], ids=["square", "non-square"])
@pytest.mark.parametrize("frames", [16, 64])
def test_predictor_outputs_equal_the_reference(reference, size, frames):
    """Same context / target positions, the context from the encoder: our predictions equal the reference's.

    The reference predictor reads rows and columns from a square grid of img_size // patch tokens per
    side. For square clips at that size this is the clip's grid and our default predictor matches it;
    for the non-square clip, predictor_positions="reference" reproduces it exactly, and the default
    matches the reference's computation with the clip's real grid instead.
    """
    path, states = reference
    rows, cols = size[0] // PATCH, size[1] // PATCH
    num_tokens = (frames // TUBELET) * rows * cols
    torch.manual_seed(frames * 7 + cols)
    video = torch.randn(2, 3, frames, *size)
    perm = torch.stack([torch.randperm(num_tokens) for _ in range(2)])
    num_context = num_tokens // 3
    context_idx, target_idx = perm[:, :num_context], perm[:, num_context : num_context + num_tokens // 2]
    grid = (frames // TUBELET, rows, cols)
    square = size[0] // PATCH  # the reference's grid_size
    kind = 3

    clip_mode = load_vjepa2(path, encoder="context", img_size=size, num_frames=frames)
    reference_mode = load_vjepa2(path, encoder="context", img_size=size, num_frames=frames, predictor_positions="reference")
    assert isinstance(reference_mode.predictor, SquareGridPredictor) and reference_mode.predictor.square_grid == square
    with torch.no_grad():
        context = clip_mode.encoder(video, token_idx=context_idx)
        assert rel_err(context, ref_encoder(states["encoder"], video, token_idx=context_idx)) < 1e-5
        ours = clip_mode.predictor(context, context_idx, None, target_idx, None, grid=grid, mask_kind=kind)
        ours_ref = reference_mode.predictor(context, context_idx, None, target_idx, None, grid=grid, mask_kind=kind)
        reference_out = ref_predictor(states["predictor"], context, context_idx, target_idx, square * square, square, kind)
        clip_grid_out = ref_predictor(states["predictor"], context, context_idx, target_idx, rows * cols, cols, kind)
    assert ours.shape == (2, target_idx.shape[1], WIDTH)
    assert rel_err(ours_ref, reference_out) < 1e-5  # exactly the reference, square or not
    assert rel_err(ours, clip_grid_out) < 1e-5  # default: the reference computation on the clip's grid
    if rows == cols:
        assert rel_err(ours, reference_out) < 1e-5
    else:  # the two conventions really differ for non-square clips (the flag is not a no-op)
        assert rel_err(ours, reference_out) > 1e-3
    # the mask token matters: another kind gives other predictions
    with torch.no_grad():
        kind0 = clip_mode.predictor(context, context_idx, None, target_idx, None, grid=grid, mask_kind=0)
    assert rel_err(kind0, ours) > 1e-3


# ---------------------------------------------------------------------------------------------- bad files
def test_bad_checkpoints_are_named_and_explained(tmp_path, reference):
    path, states = reference
    text = tmp_path / "notes.pt"
    text.write_text("not weights\n")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_vjepa2(text)

    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*truncated"):
        load_vjepa2(cut)

    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, other)
    with pytest.raises(CheckpointError, match="other.pt.*not a model checkpoint"):
        load_model_parts(other)
    with pytest.raises(CheckpointError, match=r"other.pt: not a V-JEPA 2 checkpoint.*found \['model'\]"):
        load_vjepa2(other)

    no_target = tmp_path / "no_target.pt"
    write_reference_checkpoint(no_target, states, drop=("target_encoder",))
    with pytest.raises(CheckpointError, match="no_target.pt.*no 'target_encoder' entry.*--encoder context"):
        load_vjepa2(no_target)
    assert load_vjepa2(no_target, encoder="context").encoder_role == "context"

    no_predictor = tmp_path / "no_predictor.pt"
    write_reference_checkpoint(no_predictor, states, drop=("predictor",))
    with pytest.raises(CheckpointError, match="no_predictor.pt.*no 'predictor' entry"):
        load_vjepa2(no_predictor)

    odd = tmp_path / "odd_width.pt"
    write_reference_checkpoint(odd, {
        "encoder": reference_encoder_state(1, width=200), "target_encoder": reference_encoder_state(2, width=200),
        "predictor": reference_predictor_state(3, width=200),
    })
    with pytest.raises(CheckpointError, match="odd_width.pt.*width 200.*matches no V-JEPA 2 variant"):
        load_vjepa2(odd)
    assert load_vjepa2(odd, num_heads=4).encoder.cfg.num_heads == 4  # a known head count makes it loadable

    extra = tmp_path / "extra.pt"
    changed = {k: dict(v) for k, v in states.items()}
    changed["target_encoder"]["blocks.0.attn.q_norm.weight"] = torch.ones(64)
    write_reference_checkpoint(extra, changed)
    with pytest.raises(CheckpointError, match=r"extra.pt.*target_encoder weights do not fit.*unexpected \['blocks.0.attn.q_norm.weight'\]"):
        load_vjepa2(extra)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['WM_EVIL_MARK']}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch, reference):
    _, states = reference
    mark = tmp_path / "pwned"
    monkeypatch.setenv("WM_EVIL_MARK", str(mark))
    path = tmp_path / "evil.pt"
    torch.save({**{k: v for k, v in states.items()}, "opt": _Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*refused"):
        load_vjepa2(path)
    with pytest.raises(CheckpointError, match="evil.pt.*refused"):
        load_model_parts(path)
    assert not mark.exists()
