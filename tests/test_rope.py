"""3D rotary embedding: relative-position property, both layouts, unrotated leftover dims."""

from __future__ import annotations

import math

import pytest
import torch

from worldmodel.models.rope import Rope3D, apply_rotary


def rotate_by_formula(x: torch.Tensor, position: tuple[int, int, int], layout: str, base: float = 10000.0):
    """The layouts written out element by element, in float64 (x: (head_dim,))."""
    head_dim = x.shape[-1]
    chunk = 2 * ((head_dim // 3) // 2)
    half = chunk // 2
    out = x.clone().double()
    for axis in range(3):
        for e in range(chunk):
            freq_index = e // 2 if layout == "standard" else e % half
            theta = position[axis] * base ** (-freq_index / half)
            i = axis * chunk + e
            partner, sign = (i + 1, -1.0) if e % 2 == 0 else (i - 1, 1.0)
            out[i] = x[i] * math.cos(theta) + sign * x[partner] * math.sin(theta)
    return out


def score(rope: Rope3D, q: torch.Tensor, k: torch.Tensor, q_pos, k_pos) -> float:
    q_rot = rope(q.view(1, 1, 1, -1), torch.tensor([q_pos]))
    k_rot = rope(k.view(1, 1, 1, -1), torch.tensor([k_pos]))
    return (q_rot * k_rot).sum().item()


@pytest.mark.parametrize("head_dim", [32, 64])
def test_standard_scores_depend_only_on_relative_position(head_dim):
    gen = torch.Generator().manual_seed(0)
    rope = Rope3D(head_dim, layout="standard")
    q, k = torch.randn(head_dim, generator=gen), torch.randn(head_dim, generator=gen)
    q_pos, k_pos = (1, 2, 3), (4, 0, 5)
    reference = score(rope, q, k, q_pos, k_pos)
    for offset in [(1, 0, 0), (0, 3, 0), (0, 0, 7), (5, 2, 9)]:
        shifted = score(rope, q, k, [a + o for a, o in zip(q_pos, offset)], [a + o for a, o in zip(k_pos, offset)])
        assert shifted == pytest.approx(reference, abs=1e-4)
    # ...and it does depend on the relative position along every axis: a vector scored against itself
    # is largest at offset 0 and drops by sum |pair|^2 (1 - cos(omega d)) when the axis offset is d
    same_place = score(rope, q, q, q_pos, q_pos)
    assert same_place == pytest.approx(q.square().sum().item(), rel=1e-5)
    for axis in range(3):
        moved = list(q_pos)
        moved[axis] += 1
        assert same_place - score(rope, q, q, q_pos, moved) > 1e-2


def test_standard_layout_preserves_norms():
    rope = Rope3D(64, layout="standard")
    x = torch.randn(2, 3, 10, 64)
    positions = torch.randint(0, 16, (2, 10, 3))
    torch.testing.assert_close(rope(x, positions).norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("layout", ["standard", "vjepa2"])
@pytest.mark.parametrize("head_dim", [32, 64, 80])
def test_layouts_match_the_elementwise_formula(layout, head_dim):
    rope = Rope3D(head_dim, layout=layout)
    x = torch.randn(head_dim)
    for position in [(0, 0, 0), (1, 2, 3), (7, 15, 4)]:
        rotated = rope(x.view(1, 1, 1, -1), torch.tensor([position])).flatten().double()
        torch.testing.assert_close(rotated, rotate_by_formula(x, position, layout), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["standard", "vjepa2"])
def test_leftover_dims_are_not_rotated(layout):
    rope = Rope3D(64, layout=layout)  # 3 x 20 rotated, 4 left over
    assert (rope.chunk, rope.num_unrotated) == (20, 4)
    x = torch.randn(1, 2, 5, 64)
    positions = torch.randint(1, 9, (5, 3))
    rotated = rope(x, positions)
    assert torch.equal(rotated[..., 60:], x[..., 60:])
    assert not torch.allclose(rotated[..., :60], x[..., :60])


def test_vjepa2_layout_differs_and_is_not_a_rotation():
    """V-JEPA 2's released layout: pair elements use different frequencies, so norms change."""
    standard, vjepa2 = Rope3D(64, layout="standard"), Rope3D(64, layout="vjepa2")
    x = torch.randn(1, 1, 6, 64)
    positions = torch.tensor([[0, 0, 0], [1, 2, 3], [3, 5, 7], [2, 0, 0], [0, 4, 0], [0, 0, 6]])
    a, b = standard(x, positions), vjepa2(x, positions)
    assert torch.equal(a[0, 0, 0], x[0, 0, 0]) and torch.equal(b[0, 0, 0], x[0, 0, 0])  # position 0: identity
    assert not torch.allclose(a[..., 1:, :], b[..., 1:, :], atol=1e-3)
    assert (b.norm(dim=-1)[..., 1:] - x.norm(dim=-1)[..., 1:]).abs().max() > 1e-3
    # the first pair of each chunk does share frequency 0 in both layouts ((0, 1) -> freqs (0, 1) vs (0, 0))
    cos, sin = vjepa2.cos_sin(torch.tensor([[0, 0, 3]]))
    assert torch.allclose(cos[0, 40], torch.tensor(math.cos(3.0))) and cos[0, 41] != cos[0, 40]


def test_cos_sin_shapes_and_batched_positions():
    rope = Rope3D(32)
    positions = torch.randint(0, 8, (4, 7, 3))
    cos, sin = rope.cos_sin(positions)
    assert cos.shape == sin.shape == (4, 1, 7, 32)
    cos_single, _ = rope.cos_sin(positions[2])
    assert cos_single.shape == (7, 32)
    torch.testing.assert_close(cos[2, 0], cos_single)
    x = torch.randn(4, 3, 7, 32)
    torch.testing.assert_close(apply_rotary(x, cos, sin)[2], rope(x[2:3], positions[2])[0])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="layout"):
        Rope3D(64, layout="interleaved")
    with pytest.raises(ValueError, match="head_dim"):
        Rope3D(4)
    with pytest.raises(ValueError, match="3"):
        Rope3D(32).cos_sin(torch.zeros(5, 2, dtype=torch.long))
