"""Spatial transforms of a clip: one crop / flip for all its frames, uint8 in and uint8 out.

Workers crop and resize uint8 frames (T, H, W, C) into uint8 (C, T, h, w); the conversion to float and
the ImageNet normalisation happen on the accelerator, in the LightningModule (`normalize_video`), so
batches cross process boundaries and the host-to-device copy at a quarter of the float32 size.

Layout: a clip has the shape (C, T, h, w) but keeps the memory order the decoder wrote, (T, h, w, C)
("channels last"; `video_from_frames` makes one). Reordering 16 frames of 224 x 224 into planes took
about 1.6 ms per clip in the worker, 3 % of decoding it; the batch of such clips is a
`torch.channels_last_3d` tensor, which the tubelet Conv3d takes as it is (same speed as planar on CPU)
and whose output it flattens into tokens without a copy. Code that needs planes calls `.contiguous()`.

Resizing is bilinear with antialiasing (so downscaling averages instead of aliasing) and runs on the
uint8 tensor directly (PyTorch's fixed-point kernel: within 1 grey level of the float computation and
several times faster). All randomness comes from the `np.random.Generator` passed in, so a sample's
augmentation is a pure function of its generator's seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive (height, width), got {size}")
    return height, width


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise TypeError(
            f"expected uint8 frames (T, H, W, C), got {frames.dtype} of shape {tuple(frames.shape)}; "
            "transforms run on decoded clips, before normalize_video"
        )


def _check_out(out: torch.Tensor, frames: torch.Tensor, size: tuple[int, int]) -> None:
    """`out` must be a channels-last uint8 (C, T, size_h, size_w) clip for these (T, H, W, C) frames."""
    expected = (frames.shape[3], frames.shape[0], *size)
    if out.dtype != torch.uint8 or tuple(out.shape) != expected or not is_channels_last_video(out):
        raise ValueError(
            f"out must be a channels-last uint8 clip of shape {expected}, got {out.dtype} {tuple(out.shape)} "
            f"with strides {out.stride()}"
        )


def video_from_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, C) -> (C, T, H, W) view over (T, H, W, C)-contiguous memory (a copy only if needed)."""
    return rearrange(frames.contiguous(), "t h w c -> c t h w")


def is_channels_last_video(video: torch.Tensor) -> bool:
    """True for a (C, T, H, W) clip laid out as (T, H, W, C) in memory, as the transforms return it."""
    return video.ndim == 4 and rearrange(video, "c t h w -> t h w c").is_contiguous()


def resize_frames(frames: torch.Tensor, size: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (T, C, h, w) -> uint8 (T, C, size_h, size_w), bilinear, antialiased when downscaling.

    out: a uint8 (T, C, size_h, size_w) tensor (any strides, e.g. a clip's slot in a batch) to write
    the result into instead of allocating one; returned. The values are the same either way.
    """
    size = (int(size[0]), int(size[1]))
    if out is not None and (out.dtype != torch.uint8 or tuple(out.shape) != (*frames.shape[:2], *size)):
        raise ValueError(f"out must be uint8 of shape {(*frames.shape[:2], *size)}, got {out.dtype} {tuple(out.shape)}")
    if tuple(frames.shape[-2:]) == size:
        return frames if out is None else out.copy_(frames)
    # the uint8 kernel is fastest on channels-last memory. A crop of (T, H, W, C) frames is a strided
    # view with channels innermost, which the kernel reads as it is (copying it first cost ~0.4 ms of
    # a 16 x 224 px clip's ~3 ms resize); anything else is made channels-last first.
    if frames.stride(1) != 1:
        frames = frames.contiguous(memory_format=torch.channels_last)
    if frames.dtype == torch.uint8 and frames.device.type == "cpu" and (out is None or out.device.type == "cpu"):
        # PyTorch's antialiased uint8 kernel, for upscales too: there antialiasing changes nothing (the
        # result is bit-identical to the plain kernel's, tested) and it ran 5-15 % faster on 224 px crops.
        # With out=, it writes straight into `out` when `out` has the strides it would have chosen
        # (channels last, as a batch slot is): no result tensor, no copy into the batch.
        try:
            if out is None:
                return torch.ops.aten._upsample_bilinear2d_aa(frames, list(size), False, None, None)
            torch.ops.aten._upsample_bilinear2d_aa.out(frames, list(size), False, None, None, out=out)
            return out
        except RuntimeError:
            pass  # no such uint8 kernel in this build: the general path below
    antialias = frames.shape[-2] > size[0] or frames.shape[-1] > size[1]  # only when shrinking
    try:
        resized = F.interpolate(frames, size=size, mode="bilinear", antialias=antialias, align_corners=False)
    except RuntimeError:  # no uint8 kernel for this device / build: compute in float, round back
        resized = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=antialias, align_corners=False)
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized if out is None else out.copy_(resized)


class RandomResizedCropVideo:
    """Random crop of the clip (area fraction in `scale`, aspect ratio w/h in `ratio`), resized to `size`.

    The box is drawn as in the Inception / torchvision recipe: up to 10 tries of an area uniform in
    `scale` times the frame area and an aspect ratio log-uniform in `ratio`; the first box that fits
    is placed uniformly at random. If none fits, the centre crop of the whole frame with the aspect
    ratio clamped into `ratio`. Then a horizontal flip with probability `hflip_p`. The same box and
    flip apply to every frame.
    """

    accepts_out = True  # writes into a given clip: `transform(frames, rng, out=clip)`

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_p: float = 0.5,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip_p = float(hflip_p)

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, crop_h, crop_w) for a frame of height x width."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(rng.integers(0, height - crop_h + 1))
                left = int(rng.integers(0, width - crop_w + 1))
                return top, left, crop_h, crop_w
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_w, crop_h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            crop_h, crop_w = height, round(height * self.ratio[1])
        else:
            crop_h, crop_w = height, width
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def __call__(
        self, frames: torch.Tensor, rng: np.random.Generator, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 (T, H, W, C) -> uint8 (C, T, size_h, size_w), channels last (see the module note).

        out: a channels-last uint8 (C, T, size_h, size_w) tensor to write the clip into (its slot in a
        batch, see `ClipDataset.__getitems__`); returned. The values are the same either way.
        """
        _check_frames(frames)
        top, left, crop_h, crop_w = self.crop_box(frames.shape[1], frames.shape[2], rng)
        flip = rng.random() < self.hflip_p
        crop = frames[:, top : top + crop_h, left : left + crop_w]  # (T, h, w, C), a view
        if flip:  # mirrored in the copy into contiguous memory that the resize makes anyway (same result)
            crop = crop.flip(2)
        # the uint8 kernel reads and writes channels-last memory: (T, h, w, C) order, kept as it is
        if out is not None:
            _check_out(out, frames, self.size)
            resize_frames(rearrange(crop, "t h w c -> t c h w"), self.size, out=rearrange(out, "c t h w -> t c h w"))
            return out
        resized = resize_frames(rearrange(crop, "t h w c -> t c h w"), self.size)
        return video_from_frames(rearrange(resized, "t c h w -> t h w c"))  # (C, T, h, w), channels last


class ResizeCenterCropVideo:
    """Evaluation view: resize (shorter side to `resize`), then the centre `size` crop.

    resize=None scales the frame just enough to cover `size`. The scale is never smaller than that,
    so the crop always fits.
    """

    accepts_out = True  # writes into a given clip: `transform(frames, rng, out=clip)`

    def __init__(self, size: int | tuple[int, int], resize: int | None = None) -> None:
        self.size = _pair(size)
        if resize is not None and resize < 1:
            raise ValueError(f"resize must be positive, got {resize}")
        self.resize = resize

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        out_h, out_w = self.size
        scale = max(out_h / height, out_w / width)
        if self.resize is not None:
            scale = max(scale, self.resize / min(height, width))
        return max(out_h, round(height * scale)), max(out_w, round(width * scale))

    def __call__(
        self, frames: torch.Tensor, rng: np.random.Generator | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 (T, H, W, C) -> uint8 (C, T, size_h, size_w), channels last; rng is unused (deterministic).

        out: a channels-last uint8 (C, T, size_h, size_w) tensor to write the clip into; returned.
        """
        _check_frames(frames)
        new_h, new_w = self.resized_shape(frames.shape[1], frames.shape[2])
        video = resize_frames(rearrange(frames, "t h w c -> t c h w"), (new_h, new_w))  # (T, C, new_h, new_w)
        out_h, out_w = self.size
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        video = rearrange(video[..., top : top + out_h, left : left + out_w], "t c h w -> t h w c")
        if out is not None:
            _check_out(out, frames, self.size)
            rearrange(out, "c t h w -> t h w c").copy_(video)
            return out
        return video_from_frames(video)


def normalize_video(
    video_uint8: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (B, C, T, H, W) (or (C, T, H, W)) on any device -> float32 ((x / 255) - mean) / std per channel."""
    if video_uint8.dtype != torch.uint8 or video_uint8.ndim not in (4, 5):
        raise TypeError(
            f"normalize_video expects uint8 (B, C, T, H, W), "
            f"got {video_uint8.dtype} of shape {tuple(video_uint8.shape)}"
        )
    channels = video_uint8.shape[-4]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {channels} channels")
    device = video_uint8.device
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    scale = (1.0 / (255.0 * std_t)).view(channels, 1, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float32, device=device) / std_t).view(channels, 1, 1, 1)
    return torch.addcmul(shift, video_uint8.to(torch.float32), scale)
