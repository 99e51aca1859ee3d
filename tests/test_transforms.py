"""Clip transforms: one crop and flip for every frame, uint8 in and out, normalisation on the device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldmodel.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomResizedCropVideo,
    ResizeCenterCropVideo,
    is_channels_last_video,
    normalize_video,
    resize_frames,
)


def coordinate_clip(num_frames: int = 6, height: int = 120, width: int = 160) -> torch.Tensor:
    """uint8 (T, H, W, 3): red = row, green = column (both scaled into 0..255), blue = 20 * t."""
    rows = torch.linspace(0, 255, height).round().to(torch.uint8)[:, None].expand(height, width)
    cols = torch.linspace(0, 255, width).round().to(torch.uint8)[None, :].expand(height, width)
    frames = []
    for t in range(num_frames):
        blue = torch.full((height, width), 20 * t, dtype=torch.uint8)
        frames.append(torch.stack([rows, cols, blue], dim=-1))
    return torch.stack(frames)


def test_random_crop_shapes_and_dtype():
    clip = coordinate_clip()
    out = RandomResizedCropVideo((48, 64))(clip, np.random.default_rng(0))
    assert out.shape == (3, 6, 48, 64) and out.dtype == torch.uint8
    assert is_channels_last_video(out) and not out.is_contiguous()  # (T, H, W, C) memory, as decoded


def test_identical_frames_stay_identical():
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    clip = image[None].expand(8, -1, -1, -1)
    transform = RandomResizedCropVideo(56, scale=(0.2, 0.5))
    for seed in range(5):
        out = transform(clip, np.random.default_rng(seed))  # (C, T, h, w)
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(1, 8))


def test_same_box_for_every_frame_of_a_moving_clip():
    clip = coordinate_clip()
    transform = RandomResizedCropVideo(32, scale=(0.1, 0.3), hflip_p=0.0)
    for seed in range(5):
        out = transform(clip, np.random.default_rng(seed))
        # rows / columns seen are the same in every frame: the same box
        assert all(torch.equal(out[:2, 0], out[:2, t]) for t in range(1, 6))
        # the per-frame content still differs (frame t is not frame 0)
        assert [int(out[2, t].float().mean().round()) for t in range(6)] == [20 * t for t in range(6)]
        # a small box: the rows seen span far less than the full frame
        assert int(out[0, 0].max()) - int(out[0, 0].min()) < 200


def test_crop_box_follows_scale_and_ratio():
    transform = RandomResizedCropVideo(16, scale=(0.3, 0.6), ratio=(0.75, 1.25))
    height, width = 200, 300
    for seed in range(100):
        top, left, crop_h, crop_w = transform.crop_box(height, width, np.random.default_rng(seed))
        assert 0 <= top and top + crop_h <= height and 0 <= left and left + crop_w <= width
        assert 0.29 <= crop_h * crop_w / (height * width) <= 0.61
        assert 0.74 <= crop_w / crop_h <= 1.26


def test_crop_box_falls_back_to_a_centre_crop():
    # a 10 x 100 strip cannot hold a square of 90% of its area: centre square of the full height
    transform = RandomResizedCropVideo(8, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    assert transform.crop_box(10, 100, np.random.default_rng(0)) == (0, 45, 10, 10)


def test_crop_is_reproducible_from_the_generator():
    clip = coordinate_clip()
    transform = RandomResizedCropVideo(40)
    first = transform(clip, np.random.default_rng(3))
    assert torch.equal(first, transform(clip, np.random.default_rng(3)))
    assert not torch.equal(first, transform(clip, np.random.default_rng(4)))


def test_horizontal_flip():
    clip = coordinate_clip()
    kept = RandomResizedCropVideo(40, hflip_p=0.0)(clip, np.random.default_rng(5))
    flipped = RandomResizedCropVideo(40, hflip_p=1.0)(clip, np.random.default_rng(5))
    assert torch.equal(flipped, kept.flip(-1))
    # columns increase left to right without the flip, decrease with it
    assert kept[1, 0, 0, 0] < kept[1, 0, 0, -1] and flipped[1, 0, 0, 0] > flipped[1, 0, 0, -1]
    # hflip_p=0.5 flips about half of the clips
    halves = [RandomResizedCropVideo(8, hflip_p=0.5)(clip, np.random.default_rng(s))[1, 0, 0] for s in range(60)]
    num_flipped = sum(int(row[0] > row[-1]) for row in halves)
    assert 15 <= num_flipped <= 45


def test_centre_crop_geometry_without_resize():
    clip = coordinate_clip(height=60, width=80)
    out = ResizeCenterCropVideo((40, 50), resize=60)(clip)  # 60 is already the short side: no resize
    expected = clip[:, 10:50, 15:65].permute(3, 0, 1, 2)
    assert torch.equal(out, expected)


def test_centre_crop_resizes_short_side_and_stays_centred():
    height, width = 90, 162  # resized to 60 x 108: even margins around a 48 x 48 crop
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disk = (((yy - 44.5) ** 2 + (xx - 80.5) ** 2) < 30**2).to(torch.uint8) * 255  # centred, symmetric
    clip = disk[None, :, :, None].expand(4, height, width, 3).contiguous()
    transform = ResizeCenterCropVideo(48, resize=60)
    assert transform.resized_shape(height, width) == (60, 108)
    out = transform(clip)
    assert out.shape == (3, 4, 48, 48)
    assert (out.int() - out.flip(-1).int()).abs().max() <= 1  # left-right symmetric: centred
    assert (out.int() - out.flip(-2).int()).abs().max() <= 1
    # resize=None: just enough to cover the crop
    assert ResizeCenterCropVideo((32, 64)).resized_shape(90, 160) == (36, 64)


def test_uint8_resize_matches_float_bilinear():
    frames = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 3, 70, 90), dtype=np.uint8))
    for size in [(35, 40), (100, 130)]:
        ours = resize_frames(frames, size)
        antialias = size[0] < 70
        reference = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=antialias, align_corners=False)
        assert ours.dtype == torch.uint8 and ours.shape == (3, 3, *size)
        assert (ours.int() - reference.round().clamp(0, 255).int()).abs().max() <= 1


def test_upscales_are_exactly_the_plain_bilinear_kernel():
    # resize_frames runs every uint8 resize through the antialiased kernel, which for an upscale must
    # give the plain bilinear result bit for bit (antialiasing only acts when shrinking)
    rng = np.random.default_rng(4)
    for h, w, size in [(20, 31, (224, 224)), (140, 200, (224, 224)), (96, 96, (112, 112)), (57, 80, (96, 128))]:
        frames = torch.from_numpy(rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
        plain = F.interpolate(frames, size=size, mode="bilinear", antialias=False, align_corners=False)
        assert torch.equal(resize_frames(frames, size), plain)
        assert torch.equal(resize_frames(frames.contiguous(), size), plain)  # planar memory too


def test_transforms_write_into_a_given_clip():
    frames = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (4, 30, 40, 3), dtype=np.uint8))
    batch = torch.zeros(2, 4, 16, 24, 3, dtype=torch.uint8).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W), channels last
    for seed in range(6):  # crops smaller and larger than the output (upscale and antialiased downscale), flips
        transform = RandomResizedCropVideo((16, 24), scale=(0.1, 1.0))
        expected = transform(frames, np.random.default_rng(seed))
        assert transform(frames, np.random.default_rng(seed), out=batch[1]).data_ptr() == batch[1].data_ptr()
        assert torch.equal(batch[1], expected) and not batch[0].any()
    centre = ResizeCenterCropVideo((16, 24))
    centre(frames, out=batch[0])
    assert torch.equal(batch[0], centre(frames))
    with pytest.raises(ValueError, match="channels-last uint8 clip of shape"):
        centre(frames, out=torch.zeros(3, 4, 16, 24, dtype=torch.uint8))  # planar memory
    with pytest.raises(ValueError, match="channels-last uint8 clip of shape"):
        RandomResizedCropVideo(8)(frames, np.random.default_rng(0), out=batch[0])  # wrong size
    # resize_frames(out=): the same values, in the given memory
    planes = frames.permute(0, 3, 1, 2)
    for size in [(12, 20), (45, 50)]:
        out = torch.empty(4, *size, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
        assert resize_frames(planes, size, out=out).data_ptr() == out.data_ptr()
        assert torch.equal(out, resize_frames(planes, size))


def test_transforms_reject_float_input():
    with pytest.raises(TypeError, match="uint8"):
        RandomResizedCropVideo(8)(torch.zeros(2, 16, 16, 3), np.random.default_rng(0))


def test_normalize_video():
    video = torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8)
    video[1] = 255
    out = normalize_video(video)
    assert out.dtype == torch.float32 and out.shape == video.shape
    for c in range(3):
        assert out[0, c].unique().tolist() == pytest.approx([-IMAGENET_MEAN[c] / IMAGENET_STD[c]], abs=1e-6)
        assert out[1, c].unique().tolist() == pytest.approx([(1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]], abs=1e-6)
    mid = normalize_video(torch.full((3, 2, 4, 4), 128, dtype=torch.uint8))  # one clip (C, T, H, W)
    assert math.isclose(mid[0, 0, 0, 0].item(), (128 / 255 - 0.485) / 0.229, rel_tol=1e-5)
    with pytest.raises(TypeError):
        normalize_video(video.float())
