"""Shared test helpers: real video files written with PyAV, read back with decord.

Frames written by `make_video(pattern="index")` carry their own frame index as a 4 x 4 grid of
black/white blocks (16 bits, most significant bit top-left), so a test can tell exactly which source
frames a decoder returned: `frame_index(frame)` reads it back, also after a resize.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests run on a 2-core machine next to DataLoader workers: one intra-op thread keeps them predictable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

INDEX_BITS = 16
_GRID = 4


def index_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 (H, W, 3) frame whose 4 x 4 blocks spell `index` in binary."""
    height, width = size
    bits = [(index >> (INDEX_BITS - 1 - b)) & 1 for b in range(INDEX_BITS)]
    cells = np.array(bits, dtype=np.uint8).reshape(_GRID, _GRID) * 255
    rows = np.repeat(cells, -(-height // _GRID), axis=0)[:height]
    frame = np.repeat(rows, -(-width // _GRID), axis=1)[:, :width]
    return np.repeat(frame[:, :, None], 3, axis=2)


def frame_index(frame) -> int:
    """Read back the index written by `index_frame` from a decoded (H, W, C) frame (any size)."""
    arr = torch.as_tensor(frame).float().mean(dim=-1).numpy()  # (H, W)
    height, width = arr.shape
    value = 0
    for r in range(_GRID):
        for c in range(_GRID):
            # sample the centre of each block, away from edges blurred by compression or resizing
            y0, y1 = int((r + 0.3) * height / _GRID), int((r + 0.7) * height / _GRID) + 1
            x0, x1 = int((c + 0.3) * width / _GRID), int((c + 0.7) * width / _GRID) + 1
            bit = arr[y0:y1, x0:x1].mean() > 127
            value = (value << 1) | int(bit)
    return value


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | list[np.ndarray],
    fps: float = 8.0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
) -> Path:
    """Write RGB uint8 frames (T, H, W, 3) to a video file with PyAV (lossless-ish quality).

    pix_fmt="gray" stores limited-range luma, which decoders stretch back: exact pixel values change,
    the black/white index blocks survive."""
    import av
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.ascontiguousarray(f) for f in frames]
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_vfr_video(path: str | os.PathLike, gaps_ms=(20,) * 20 + (100,) * 20, size=(64, 64)) -> Path:
    """A variable frame rate H.264 mp4: frame i shows index i (`frame_index`), and frame i + 1 starts
    gaps_ms[i] after frame i (default: frames 0-20 start 20 ms apart, at 0-0.4 s, then 100 ms apart:
    frame 39 starts at 2.3 s)."""
    import av
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, gap in enumerate(gaps_ms):
            frame = av.VideoFrame.from_ndarray(index_frame(i, size), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
            pts += gap
        container.mux(stream.encode())
    return path


@pytest.fixture
def make_video(tmp_path):
    """Factory: make_video(name_or_path, num_frames=32, fps=8.0, size=(64, 64), gray=False) -> Path.

    Frame i shows index i (see `frame_index`). gray=True writes a gray H.264 stream.
    """

    def _make(
        name: str | os.PathLike = "clip.mp4",
        num_frames: int = 32,
        fps: float = 8.0,
        size: tuple[int, int] = (64, 64),
        gray: bool = False,
    ) -> Path:
        path = Path(name)
        if not path.is_absolute():
            path = tmp_path / path
        frames = [index_frame(i, size) for i in range(num_frames)]
        return write_video(path, frames, fps=fps, pix_fmt="gray" if gray else "yuv420p")

    return _make


def moving_squares(num_frames: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """RGB uint8 (T, H, W, 3): a few coloured squares moving on a textured background."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = (rng.integers(0, 80, 3)[None, None, :] + 20 * np.sin(xx / 5.0 + rng.uniform(0, 6))[..., None]).clip(0, 255)
    frames = np.repeat(base[None], num_frames, axis=0).astype(np.uint8)
    for _ in range(3):
        side = int(rng.integers(max(2, height // 8), max(3, height // 3)))
        y, x = rng.uniform(0, height - side), rng.uniform(0, width - side)
        vy, vx = rng.uniform(-2, 2, 2)
        colour = rng.integers(60, 256, 3)
        for t in range(num_frames):
            yi, xi = int(y + vy * t) % (height - side), int(x + vx * t) % (width - side)
            frames[t, yi : yi + side, xi : xi + side] = colour
    return frames


@pytest.fixture
def video_folder(tmp_path):
    """Factory: video_folder(n=6, num_frames=24, size=(40, 40), fps=8.0) -> folder with n mp4 files and
    a manifest.csv listing them (relative paths)."""

    def _make(n: int = 6, num_frames: int = 24, size: tuple[int, int] = (40, 40), fps: float = 8.0, name="videos"):
        folder = tmp_path / name
        lines = []
        for i in range(n):
            write_video(folder / f"v{i:03d}.mp4", moving_squares(num_frames, size, seed=i), fps=fps)
            lines.append(f"v{i:03d}.mp4")
        (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
        return folder

    return _make
