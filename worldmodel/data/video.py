"""Decoding video clips with decord: which frames make a clip, and what happens when a file is bad.

How a clip is sampled
---------------------
A clip is `num_frames` (T) frames. Their *offsets* from the clip's first frame come from exactly one
of three settings of `ClipSampler` (video_fps is the video's average frame rate, see below):

- ``frame_step=s``: ``offset[i] = i * s``.
- ``fps=f`` (a target frame rate): ``offset[i] = floor(i * video_fps / f + 0.5)``, i.e. the source frame
  nearest to time ``i / f`` after the clip start, ties rounded up. A target above the video's own rate
  repeats frames.
- ``duration_s=d``: the T frames cover d seconds evenly, each standing for ``d / T`` seconds:
  ``offset[i] = floor(i * d * video_fps / T + 0.5)``, exactly ``fps = T / d``.

A clip needs ``span = offset[T-1] + 1`` source frames. Its start frame is then chosen by `mode`:
``"random"`` uniform over ``[0, num_frames - span]`` (training), ``"center"`` ``(num_frames - span) // 2``,
``"start"`` 0, ``"uniform"`` K starts ``floor(k * (num_frames - span) / (K - 1) + 0.5)`` for k = 0..K-1
(the first clip starts at the first frame, the last one ends at the last frame; K = 1 is "center").

Videos shorter than a clip (``span > num_frames``) follow `short_policy`: ``"repeat_last"`` starts
every clip at frame 0 and clamps offsets past the end to the last frame; ``"skip"`` raises
``VideoError(reason="too_short")``.

Time
----
A video's rate is its *average* rate: the container's (decord's `get_avg_fps`), which mp4 / mov
compute from the frames' own durations. Other containers (Matroska, WebM, AVI, ...) may report a
nominal rate instead, so for them the frames' timestamps are read too (the span from the first
frame's start to the last frame's end) and their count over that span replaces a container rate it
contradicts by more than 1 %. A rate that is missing or absurd (0, NaN, > 1000) is recomputed the
same way; when that fails too the video is refused (``reason="unsupported"``).

Constant frame rate videos (almost all files) put frame i at ``i / fps`` seconds, and the formulas
above hold as written. Every video's frame start times are read too (from the container's index,
no decoding: about 0.3 ms a file, cached per process); when some frame strays from the constant rate
of the same first and last frame by more than half a frame and 20 ms, the video has a *variable* frame
rate (phones, screen captures, dropped frames) and `VideoInfo.frame_starts` holds the real start
times (seconds from the first frame). Files whose container gives no usable times (AVI and MPEG-PS
often store a "no timestamp" marker) are read at their average rate (`variable_rate_starts`). Then
clips are placed by time, not by frame number: with ``fps`` or ``duration_s``, frame i of a clip that
starts at frame s is the frame whose start is nearest to ``start(s) + offset_time[i]`` (ties to the
later frame), where ``offset_time[i]`` is ``i / fps`` or ``i * d / T``; a clip fits when its last
time is less than half an average frame after the last frame's start; the start frame s is chosen by
`mode` in time among the starts that fit: the frame starting last at or before a time drawn uniformly
from the first such start to the next frame after the last one ("random": each frame in proportion
to its duration, exactly uniform over frames at a constant rate), the frame nearest to their midpoint
("center") or to K evenly spaced times ("uniform"), so a stretch recorded at twice the rate gets no
more clips; `indices_ending_at` ends at the last frame
starting at or before ``end_s``. ``frame_step`` counts frames whatever their times.
`Clip.timestamps` are the frames' real start times.

Pixel formats
-------------
Frames come back as RGB uint8 (T, H, W, 3) whatever the source. decord (its bundled FFmpeg 4.1)
converts gray (8 to 16 bit; H.264 monochrome arrives as yuv420p), 10/12/16-bit YUV 4:2:0 / 4:4:4,
RGB(A) and odd widths / heights to the right frames and colours (the tests check the frames and
compare pixels with the source or with PyAV's current FFmpeg). Known small deviations from current
FFmpeg: 10-bit 4:2:0 chroma is upsampled differently at sharp colour edges (no farther from the
source), monochrome 10-bit HEVC is read as limited range (about 8% more contrast), 10/16-bit RGB is
off by one level. A decoder output of any other shape is refused with ``reason="unsupported"`` and
the ffmpeg command that converts the file. MPEG program and transport streams (.mpg, .vob, .ts,
.m2ts) are refused the same way: decord returns wrong frames from them (remux to mp4 first). decord
0.6 cannot hand out some small resize widths (8, 16, 24, 48, 72, ...); those are decoded at the
native size and resized with `resize_frames`.

Failures
--------
Every problem with a file is a `VideoError` carrying the path and one reason code (see
`VideoError.REASONS`); decord's own exceptions never escape. decord (FFmpeg) may also print to stderr.
decord says little more than "Error reading" for most bad files, so the reason comes from the bytes:
missing / directory / zero bytes first; then the container signature (no known one: ``not_video``);
for mp4 / mov the top-level boxes are walked: a box running past the end of the file or no ``moov``
index is ``truncated``; a Matroska / WebM file shorter than its Segment's declared size, or an AVI shorter
than its RIFF chunk's, is ``truncated`` too (checked whenever one is opened: decord would read its first
part without complaint); anything else the decoder rejects is ``corrupt``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch
from einops import rearrange
from torch.utils.dlpack import from_dlpack

# MPEG program / transport streams: decord returns wrong frames from them, so they are refused with the
# command that remuxes them into mp4 (see _refuse_by_header), and an annotation lookup takes them last
REMUX_EXTENSIONS: tuple[str, ...] = (".mpg", ".mpeg", ".vob", ".ts", ".mts", ".m2ts")
# Files with these extensions are videos to a folder manifest and to annotation lookups (any case). The
# MPEG streams are listed so that they are refused with advice, not left out without a word.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".3gp", ".3g2", ".flv", ".wmv", ".asf", ".ogv",
    *REMUX_EXTENSIONS,
)  # fmt: skip

# A sane average frame rate lies in this range (frames per second); outside it, decord's value is
# treated as unknown (containers sometimes report 0, NaN or the time base, e.g. 90000).
FPS_RANGE: tuple[float, float] = (1e-3, 1000.0)

SAMPLING_MODES: tuple[str, ...] = ("random", "center", "start", "uniform")
SHORT_POLICIES: tuple[str, ...] = ("repeat_last", "skip")

_CONVERT_HINT = "convert it with `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`, or drop it from the manifest"


def worker_message(cls: type, text: str) -> str:
    """The message of a `cls` exception raised inside a DataLoader worker, from the text PyTorch rebuilds it with.

    PyTorch re-raises a worker's exception in the main process as ``cls(text)``, where `text` is "Caught
    cls in DataLoader worker process N.", the worker's traceback, and last the line(s) "pkg.mod.cls:
    MESSAGE". Exceptions whose constructor passes its argument through this keep their type and their
    own message across the worker boundary (no traceback text to parse where they are caught). Any
    other text is returned unchanged.
    """
    if not (text.startswith(f"Caught {cls.__name__} ") and "\nOriginal Traceback" in text):
        return text
    heads = list(re.finditer(rf"^(?:[A-Za-z_][\w]*\.)*{re.escape(cls.__name__)}: ", text, flags=re.M))
    return text[heads[-1].end():].rstrip("\n") if heads else text


class VideoError(RuntimeError):
    """A video that cannot be used: `.path` (str), `.reason` (one short code), `.detail` (human text).

    Reasons: ``missing`` (no such file, or unreadable), ``empty`` (zero bytes), ``not_video`` (not a
    video container at all), ``corrupt`` (the decoder fails), ``truncated`` (the file was cut short),
    ``too_short`` (fewer frames than a clip needs, with ``short_policy="skip"``), ``unsupported`` (a
    real video that cannot be used as is: unknown frame rate, odd decoder output).

    ``VideoError(message)`` with one argument rebuilds the error from its text "PATH: REASON: DETAIL";
    that is how a VideoError raised in a DataLoader worker reaches the main process as a VideoError
    (see `worker_message`).
    """

    REASONS = ("missing", "empty", "not_video", "corrupt", "truncated", "too_short", "unsupported")

    def __init__(self, path: str | os.PathLike, reason: str | None = None, detail: str | None = None) -> None:
        if reason is None and detail is None:
            text = worker_message(type(self), os.fspath(path))
            parsed = re.fullmatch(rf"(?s)(.+?): ({'|'.join(self.REASONS)}): (.*)", text)
            if parsed is None:
                raise TypeError(f"VideoError(path, reason, detail), or VideoError('PATH: REASON: DETAIL'); got {text!r}")
            path, reason, detail = parsed.groups()
        if reason not in self.REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}; use one of {self.REASONS}")
        self.path, self.reason, self.detail = os.fspath(path), reason, detail
        super().__init__(f"{self.path}: {reason}: {detail}")

    def __reduce__(self):  # picklable across DataLoader / multiprocessing workers
        return type(self), (self.path, self.reason, self.detail)


# frame times are kept to the microsecond: comparisons between times allow this much, so a time half way
# between two frames (a tie) is a tie, as in the constant-rate formulas, not decided by rounding
TIME_TOLERANCE_S = 2e-6


@dataclass(frozen=True)
class VideoInfo:
    """What sampling needs to know about a video: its frame count and average frame rate, and for a
    variable frame rate video the start time of every frame (seconds from the first frame)."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    frame_starts: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.frame_starts is not None and (len(self.frame_starts) != self.num_frames or not self.num_frames):
            raise ValueError(
                f"{self.path}: frame_starts holds {len(self.frame_starts)} times for {self.num_frames} frames"
            )

    @property
    def duration_s(self) -> float:
        """num_frames / fps; for a variable frame rate video, the last frame's start + one average frame."""
        if self.frame_starts is not None and len(self.frame_starts):
            return float(self.frame_starts[-1]) + 1.0 / self.fps
        return self.num_frames / self.fps

    @property
    def variable_rate(self) -> bool:
        return self.frame_starts is not None

    def times_of(self, indices: np.ndarray) -> np.ndarray:
        """Start times (seconds) of the frames at `indices`: float64. Indices past the last frame (a clip
        the video is too short for) continue from it at the average rate."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.frame_starts is None:
            return indices / self.fps
        last = len(self.frame_starts) - 1
        inside = self.frame_starts[np.clip(indices, 0, last)]
        return np.where(indices > last, self.frame_starts[last] + (indices - last) / self.fps, inside)

    def frames_nearest(self, times: np.ndarray, ties: str = "later") -> np.ndarray:
        """Index of the frame whose start is nearest to each time (`ties`: "later" or "earlier" frame, within
        TIME_TOLERANCE_S), clamped to the video: int64. Of frames sharing a start, the last one. Only for
        variable frame rate videos (constant ones use the module's formulas)."""
        starts = self.frame_starts
        if starts is None:
            raise ValueError(f"{self.path}: frames_nearest is for variable frame rate videos")
        times = np.asarray(times, dtype=np.float64)
        # before: the last frame starting at or before the time (the last of frames sharing a start)
        after = np.clip(np.searchsorted(starts, times, side="right"), 1, len(starts) - 1)
        before = after - 1
        margin = TIME_TOLERANCE_S if ties == "later" else -TIME_TOLERANCE_S
        later = (starts[after] - times) <= (times - starts[before]) + margin
        after = np.searchsorted(starts, starts[after], side="right") - 1  # the last frame sharing its start
        nearest = np.where(later, after, before)
        nearest = np.where(times < starts[0], 0, nearest)
        return np.where(times >= starts[-1], len(starts) - 1, nearest).astype(np.int64)

    def last_frame_at(self, time_s: float) -> int:
        """The last frame that starts at or before `time_s` seconds, clamped to [0, num_frames - 1]."""
        # 1e-9 absorbs float error when time_s falls exactly on a frame's start
        if self.frame_starts is None:
            last = math.floor(time_s * self.fps + 1e-9)
        else:
            last = int(np.searchsorted(self.frame_starts, time_s + TIME_TOLERANCE_S, side="right")) - 1
        return max(0, min(last, self.num_frames - 1))


@dataclass
class ClipSampler:
    """Which source frames make a clip (see the module docstring for the exact formulas)."""

    num_frames: int = 16
    fps: float | None = None  # exactly one of fps / frame_step / duration_s is set
    frame_step: int | None = None
    duration_s: float | None = None
    short_policy: str = "repeat_last"  # or "skip": raise VideoError(reason="too_short")

    def __post_init__(self) -> None:
        chosen = [name for name in ("fps", "frame_step", "duration_s") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"ClipSampler needs exactly one of fps, frame_step, duration_s; got {chosen or 'none'}. "
                "Example: ClipSampler(num_frames=16, fps=4)."
            )
        if isinstance(self.num_frames, bool) or int(self.num_frames) != self.num_frames or self.num_frames < 1:
            raise ValueError(f"ClipSampler.num_frames must be a whole number >= 1, got {self.num_frames}")
        self.num_frames = int(self.num_frames)
        value = getattr(self, chosen[0])
        if not value > 0:
            raise ValueError(f"ClipSampler.{chosen[0]} must be > 0, got {value}")
        if self.frame_step is not None and int(self.frame_step) != self.frame_step:
            raise ValueError(f"ClipSampler.frame_step must be an integer, got {self.frame_step}")
        if self.short_policy not in SHORT_POLICIES:
            raise ValueError(f"ClipSampler.short_policy must be one of {SHORT_POLICIES}, got {self.short_policy!r}")

    def span_indices(self, info: VideoInfo) -> np.ndarray:
        """Offsets of the T frames from the clip's first frame at the video's average rate: int64 (T,),
        non-decreasing, [0] == 0 (exact for constant frame rate videos and for ``frame_step``)."""
        i = np.arange(self.num_frames, dtype=np.float64)
        if self.frame_step is not None:
            return (i * int(self.frame_step)).astype(np.int64)
        step = info.fps / self.fps if self.fps is not None else self.duration_s * info.fps / self.num_frames
        return np.floor(i * step + 0.5).astype(np.int64)

    def offset_times(self) -> np.ndarray:
        """Times of the T frames from the clip's start (``fps`` / ``duration_s`` only): float64 (T,)."""
        if self.frame_step is not None:
            raise ValueError("a frame_step clip is given in frames, not seconds")
        i = np.arange(self.num_frames, dtype=np.float64)
        return i / self.fps if self.fps is not None else i * (self.duration_s / self.num_frames)

    def _timed(self, info: VideoInfo) -> bool:
        """Whether this video's clips are placed by the frames' real start times (see the module docstring)."""
        return info.frame_starts is not None and self.frame_step is None

    def _last_start(self, info: VideoInfo) -> int:
        """The last frame a whole clip can start at; -1 when the video is shorter than one clip."""
        if self._timed(info):
            starts = info.frame_starts
            # the last start s with starts[s] + times[-1] < starts[-1] + half a frame
            limit = starts[-1] + 0.5 / info.fps - TIME_TOLERANCE_S - self.offset_times()[-1]
            return int(np.searchsorted(starts, limit, side="left")) - 1
        return info.num_frames - (int(self.span_indices(info)[-1]) + 1)

    def fits(self, info: VideoInfo) -> bool:
        """Whether one clip fits in the video without repeating its last frame."""
        return self._last_start(info) >= 0

    def span_text(self, info: VideoInfo, frames: str = "frames") -> str:
        """How much of the video one clip spans, for messages: seconds for a clip placed by time (a
        variable frame rate video), else "<n> `frames` (<seconds> s)"."""
        if self._timed(info):
            return f"{self.offset_times()[-1] + 1.0 / info.fps:.2f} s"
        span = int(self.span_indices(info)[-1]) + 1
        return f"{span} {frames} ({span / info.fps:.2f} s)"

    def indices(
        self,
        info: VideoInfo,
        mode: str = "random",
        num_clips: int = 1,
        rng: np.random.Generator | None = None,
    ) -> list[np.ndarray]:
        """Source frame indices of `num_clips` clips: each int64 (T,) within [0, num_frames - 1].

        mode "random" draws each start from `rng` (a fresh unseeded generator when None); "center" and
        "start" give one clip; "uniform" spreads `num_clips` clips evenly from the first to the last frame.
        """
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; use one of {SAMPLING_MODES}")
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        if mode in ("center", "start") and num_clips != 1:
            raise ValueError(f"mode={mode!r} gives one clip; use mode='uniform' for {num_clips} clips")
        timed = self._timed(info)
        times = self.offset_times() if timed else None  # (T,) seconds from the clip's first frame
        offsets = None if timed else self.span_indices(info)  # (T,) frames from the clip's first frame
        max_start = self._last_start(info)
        if max_start < 0:
            if self.short_policy == "skip":
                raise VideoError(
                    info.path,
                    "too_short",
                    f"a {self.num_frames}-frame clip spans {self.span_text(info)} but the video has {info.num_frames} "
                    f"frames ({info.duration_s:.2f} s); use shorter clips or short_policy='repeat_last'",
                )
            clamped = info.frames_nearest(times) if timed else np.minimum(offsets, info.num_frames - 1)
            return [clamped.copy() for _ in range(num_clips)]
        if mode == "random":
            rng = rng if rng is not None else np.random.default_rng()
        if timed:
            # starts chosen in time, not frames: a stretch recorded at twice the rate gets no more clips
            first, last = info.frame_starts[0], info.frame_starts[max_start]
            if mode == "random":  # the frame starting last at or before a uniform time: in proportion to its duration
                stop = info.frame_starts[max_start + 1] if max_start + 1 < info.num_frames else last + 1.0 / info.fps
                start_times = rng.uniform(first, stop, size=num_clips) if stop > first else np.full(num_clips, first)
                starts_at = np.searchsorted(info.frame_starts, start_times, side="right") - 1
            else:
                if mode == "start":
                    start_times = np.array([first])
                elif mode == "center" or num_clips == 1:
                    start_times = np.array([(first + last) / 2])
                else:  # uniform
                    start_times = first + np.arange(num_clips) * (last - first) / (num_clips - 1)
                # the nearest frame; ties as the frame-number formulas round: "center" down, "uniform" up
                starts_at = info.frames_nearest(start_times, ties="earlier" if len(start_times) == 1 else "later")
            # among the frames a whole clip can start at (frames sharing a start resolve to the last)
            starts_at = np.clip(starts_at, 0, max_start)
            return [info.frames_nearest(info.frame_starts[int(start)] + times) for start in starts_at]
        if mode == "random":
            starts_at = rng.integers(0, max_start + 1, size=num_clips)
        elif mode == "start":
            starts_at = np.zeros(1, dtype=np.int64)
        elif mode == "center" or num_clips == 1:
            starts_at = np.array([max_start // 2])
        else:  # uniform
            starts_at = np.floor(np.arange(num_clips) * max_start / (num_clips - 1) + 0.5)
        return [int(start) + offsets for start in starts_at]

    def indices_ending_at(self, info: VideoInfo, end_s: float) -> np.ndarray:
        """The T frames whose last one is the last frame at or before `end_s` seconds: int64 (T,).

        The last frame is ``floor(end_s * fps)`` (clamped to the video; for a variable frame rate video the
        last frame starting at or before `end_s`); indices before the video start clamp to 0, so the first
        frame repeats (an action early in a video still gets a full context).
        """
        last = info.last_frame_at(end_s)
        if self._timed(info):
            times, starts = self.offset_times(), info.frame_starts
            # as the constant-rate formula: the clip's first frame (nearest, ties to the earlier), then
            # forward from it; before the video, frames continue back at the average rate (and clamp to 0)
            first_time = starts[last] - times[-1]
            if first_time >= starts[0]:
                start = starts[int(info.frames_nearest(np.array([first_time]), ties="earlier")[0])]
            else:
                back = math.ceil((first_time - starts[0]) * info.fps - 0.5 - TIME_TOLERANCE_S * info.fps)
                start = starts[0] + back / info.fps
            indices = np.minimum(info.frames_nearest(start + times), last)
            # the clip ends at `last` as promised: where the rate changes within the clip, stepping forward
            # from the first frame can land frames short of it (the same on regular frames)
            indices[-1] = last
            return indices
        offsets = self.span_indices(info)  # (T,)
        return np.clip(last - offsets[-1] + offsets, 0, info.num_frames - 1).astype(np.int64)

    def indices_starting_at(self, info: VideoInfo, start_s: float) -> np.ndarray:
        """The T frames of a clip whose first frame is the one nearest to `start_s` seconds: int64 (T,).

        Not clamped: frames the clip needs past the video's end get indices >= num_frames (continuing at
        the average rate), so that callers can say how much is missing.
        """
        if info.frame_starts is None:
            return math.floor(start_s * info.fps + 0.5) + self.span_indices(info)
        past_end = start_s - info.frame_starts[-1]
        if past_end >= 0.5 / info.fps - TIME_TOLERANCE_S:  # no frame there: continue at the average rate, as for the rest
            first = info.num_frames - 1 + math.floor(past_end * info.fps + 0.5 + TIME_TOLERANCE_S * info.fps)
            return first + self.span_indices(info)
        first = int(info.frames_nearest(np.array([start_s]))[0])
        if self.frame_step is not None:
            return first + self.span_indices(info)
        times = info.frame_starts[first] + self.offset_times()
        past = times - info.frame_starts[-1]
        beyond = info.num_frames - 1 + np.floor(past * info.fps + 0.5 + TIME_TOLERANCE_S * info.fps).astype(np.int64)
        inside = past < 0.5 / info.fps - TIME_TOLERANCE_S
        return np.where(inside, info.frames_nearest(times), np.maximum(beyond, info.num_frames))


@dataclass
class Clip:
    frames: torch.Tensor  # uint8 (T, H, W, 3)
    indices: np.ndarray  # int64 (T,) source frame indices
    timestamps: np.ndarray  # float64 (T,) seconds: indices / fps, or the frames' real starts (variable rate)
    path: str
    padded: bool = False  # the video is shorter than the clip: its last frame repeats (short_policy "repeat_last")


# ---------------------------------------------------------------------------------------------------
# Public readers


def read_video_info(path: str | os.PathLike, num_threads: int = 1) -> VideoInfo:
    """Frame count, average frame rate and native size of a video (decodes its first frame), and the
    frames' start times when its frame rate is variable."""
    path = os.fspath(path)
    reader = _open_reader(path, None, num_threads)
    num_frames, fps = _frame_count_and_fps(path, reader)
    first = _decode(path, reader, np.zeros(1, dtype=np.int64), None)  # (1, H, W, 3)
    return VideoInfo(
        path=path, num_frames=num_frames, fps=fps, width=first.shape[2], height=first.shape[1],
        frame_starts=_variable_starts(path, reader, num_frames, fps),
    )


def frame_start_times(path: str | os.PathLike, num_threads: int = 1) -> np.ndarray:
    """Presentation time (seconds) at which each frame starts, as the container stores it: (num_frames,)."""
    path = os.fspath(path)
    return _frame_starts(path, _open_reader(path, None, num_threads))


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    size: int | tuple[int, int] | None = None,
    num_threads: int = 1,
) -> torch.Tensor:
    """Decode the given source frames: uint8 (T, H, W, 3), in the order asked (repeats allowed).

    size: None keeps the native size; (height, width) resizes inside decord (cheap for large videos);
    an int resizes the shorter side to it, keeping the aspect ratio (probes the size with PyAV once).
    Indices past the end raise VideoError("too_short").
    """
    path = os.fspath(path)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    reader = _open_reader(path, size, num_threads)
    num_frames = len(reader)
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise VideoError(
            path, "too_short", f"frames {indices.min()}..{indices.max()} asked, the video has {num_frames}"
        )
    return _decode(path, reader, indices, _decode_size(path, size), num_threads)


def read_clips(
    path: str | os.PathLike,
    sampler: ClipSampler,
    mode: str = "random",
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
    size: int | tuple[int, int] | None = None,
    num_threads: int = 1,
) -> list[Clip]:
    """Sample `num_clips` clips with `sampler` and decode them together (one decoder pass).

    size as in `read_frames`. num_threads: decord decoding threads (1 inside DataLoader workers).
    """
    if not isinstance(sampler, ClipSampler):
        raise TypeError(f"read_clips needs a ClipSampler, e.g. ClipSampler(num_frames=16, fps=4), got {sampler!r}")
    path = os.fspath(path)
    reader = _open_reader(path, size, num_threads)
    num_frames, fps = _frame_count_and_fps(path, reader)
    # sampling needs only the frame count, rate and (variable rate) frame times; the native size is not
    # known without decoding
    starts = _variable_starts(path, reader, num_frames, fps)
    info = VideoInfo(path=path, num_frames=num_frames, fps=fps, width=0, height=0, frame_starts=starts)
    clip_indices = sampler.indices(info, mode=mode, num_clips=num_clips, rng=rng)
    padded = not sampler.fits(info)
    all_indices = np.concatenate(clip_indices)  # (K*T,)
    frames = _decode(path, reader, all_indices, _decode_size(path, size), num_threads)  # (K*T, H, W, 3)
    clips = []
    for k, idx in enumerate(clip_indices):
        clip_frames = frames[k * len(idx) : (k + 1) * len(idx)]
        clips.append(Clip(frames=clip_frames, indices=idx, timestamps=info.times_of(idx), path=path, padded=padded))
    return clips


# ---------------------------------------------------------------------------------------------------
# decord, wrapped so that every failure becomes a VideoError


def _open_reader(path: str, size: int | tuple[int, int] | None, num_threads: int):
    import decord

    check_file(path)
    _refuse_by_header(path)
    height, width = _decode_size(path, size) or (-1, -1)
    try:
        return decord.VideoReader(path, width=width, height=height, num_threads=num_threads)
    except Exception as exc:  # DECORDError, RuntimeError, AssertionError (zero frames), ...
        raise _diagnose(path, exc, at_open=True) from None


def _decode(
    path: str, reader, indices: np.ndarray, size: tuple[int, int] | None, num_threads: int = 1
) -> torch.Tensor:
    """Frames at `indices` as uint8 (T, H, W, 3); each distinct frame is decoded once, in file order."""
    unique, inverse = np.unique(indices, return_inverse=True)
    try:
        batch = _as_tensor(reader.get_batch(unique))  # (U, H, W, 3)
    except Exception as exc:
        if "DECORDArrayCopyFromTo" not in str(exc):
            raise _diagnose(path, exc) from None
        # decord 0.6 cannot copy out frames of some small widths (8, 16, 24, 48, 72, ...). At the native
        # size PyAV decodes them instead (the same FFmpeg conversion: identical pixels, checked); asked
        # for another size, decode natively and resize here (the transforms' antialiased bilinear resize)
        if size is None:
            batch = _decode_with_pyav(path, unique)
        else:
            from worldmodel.data.transforms import resize_frames

            native = _decode(path, _open_reader(path, None, num_threads), unique, None)  # (U, H0, W0, 3)
            resized = resize_frames(rearrange(native, "u h w c -> u c h w"), size)
            batch = rearrange(resized, "u c h w -> u h w c").contiguous()
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[-1] != 3 or batch.dtype != torch.uint8:
        raise VideoError(
            path,
            "unsupported",
            f"the decoder returned {batch.dtype} frames of shape {tuple(batch.shape)} for pixel format "
            f"{_pixel_format(path)}; {_CONVERT_HINT}",
        )
    if size is not None and tuple(batch.shape[1:3]) != tuple(size):
        got = tuple(batch.shape[1:3])
        raise VideoError(path, "unsupported", f"asked to decode at {size}, got {got}; {_CONVERT_HINT}")
    if len(unique) != len(indices) or not np.array_equal(unique, indices):
        batch = batch[torch.from_numpy(inverse.reshape(-1))]
    return batch


def _decode_with_pyav(path: str, unique: np.ndarray) -> torch.Tensor:
    """Frames `unique` (sorted, distinct) as decord would return them, uint8 (U, H, W, 3), decoded by PyAV
    from the start (the fallback for the frame widths decord cannot copy out; such videos are small).
    Frames are counted in presentation order, as decord indexes them, and an mp4 / mov display rotation
    is applied as decord applies it (np.rot90 by the frame's rotation; decord's FFmpeg reads it from
    no other container)."""
    import av

    wanted = {int(i): k for k, i in enumerate(unique)}
    frames: list[np.ndarray | None] = [None] * len(unique)
    rotates = _is_iso_bmff(path)
    try:
        with av.open(path) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    array = frame.to_ndarray(format="rgb24")
                    turns = round(getattr(frame, "rotation", 0) / 90) % 4 if rotates else 0
                    frames[wanted[index]] = np.ascontiguousarray(np.rot90(array, turns))
                if index >= unique[-1]:
                    break
    except Exception as exc:
        raise _diagnose(path, exc) from None
    missing = [int(i) for i, frame in zip(unique, frames) if frame is None]
    if missing:
        raise VideoError(path, "truncated", f"frames {missing[0]}..{missing[-1]} could not be decoded")
    return torch.from_numpy(np.stack(frames))


def _as_tensor(array) -> torch.Tensor:
    """decord's output as a CPU tensor whatever bridge someone set globally (native, torch, ...).

    decord's own NDArray is taken over through DLPack, without a copy: `asnumpy()` copied every
    decoded clip once more (about 0.5 ms of a 16-frame 256 px clip's 70 ms).
    """
    if isinstance(array, torch.Tensor):
        return array
    if hasattr(array, "to_dlpack"):
        return from_dlpack(array.to_dlpack())
    if hasattr(array, "asnumpy"):
        return torch.from_numpy(array.asnumpy())
    return torch.from_numpy(np.asarray(array))


def _frame_count_and_fps(path: str, reader) -> tuple[int, float]:
    num_frames = len(reader)
    try:
        avg_fps = float(reader.get_avg_fps())
        span_s = float("nan")
        fps = sound_fps(avg_fps, num_frames, span_s)  # the container's rate, when it is sane
        # mp4 / mov derive their average rate from the frames' own durations; other containers
        # (Matroska, WebM, AVI, ...) may report a nominal rate that the frames do not follow. So the
        # timestamps (about 0.4 ms a file, on every clip a loader reads) are read for those, and
        # for any file whose rate is not sane.
        check = fps is not None and not _is_iso_bmff(path)
        if (fps is None or check) and num_frames:
            times = reader.get_frame_timestamp([0, num_frames - 1])  # (2, 2): start, end of each
            span_s = float(times[1, 1]) - float(times[0, 0])
            fps = sound_fps(avg_fps, num_frames, span_s, prefer_timestamps=check)
    except Exception as exc:
        raise _diagnose(path, exc) from None
    if fps is None:
        raise VideoError(
            path,
            "unsupported",
            f"unknown frame rate (container says {avg_fps}, {num_frames} frames spanning {span_s} s); "
            "re-encode it at a constant rate: `ffmpeg -i IN -r 30 OUT.mp4`",
        )
    return num_frames, fps


def _frame_starts(path: str, reader) -> np.ndarray:
    """Every frame's start time as the container stores it (decord's float32 seconds, as float64)."""
    try:
        times = reader.get_frame_timestamp(np.arange(len(reader)))  # (N, 2): start, end of each frame
        return np.asarray(times, dtype=np.float64).reshape(-1, 2)[:, 0]
    except Exception as exc:
        raise _diagnose(path, exc) from None


# frame times that stray less than this from a constant rate are a constant rate (see variable_rate_starts)
VARIABLE_RATE_MIN_STRAY_S = 0.02


def _time_grid(relative: np.ndarray) -> float:
    """The step every time lies on (the smallest gap between frame starts, when all times are whole
    multiples of it), else 0.

    decord rounds a stream's timestamps to float32 before it subtracts the start time, so a file whose
    clock starts at 1e6 s or 1e9 ms (a capture clock kept with -copyts) has every time on a coarse grid
    (1/16 s, 64 ms): frames of a constant rate then look uneven by up to that step."""
    gaps = np.diff(relative)
    positive = gaps[gaps > 1e-4]  # closer starts are one time twice (float32 noise), not a 10 kHz frame rate
    if not len(positive):
        return 0.0
    multiples = np.round(relative / positive.min())
    step = float(np.dot(relative, multiples) / np.dot(multiples, multiples))  # least squares over all times
    on_grid = np.abs(relative - multiples * step) <= 1e-6 + 1e-6 * np.abs(relative)  # float32 seconds
    return step if bool(np.all(on_grid)) else 0.0


def variable_rate_starts(raw: np.ndarray, fps: float) -> np.ndarray | None:
    """Frame start times relative to the first frame (rounded to the microsecond) when they show a
    variable frame rate, else None.

    Variable: some frame strays by more than half a frame and more than 20 ms from the constant rate of
    the same first and last frame (less matters to no clip, and decord's float32 seconds round the times
    of files with a large first timestamp, e.g. a capture clock, by up to 16 ms), and by more than the
    grid such rounding put every time on (64 ms for a clock at 1e9 ms; a grid coarser than a frame leaves
    nothing to tell, and the file is read at its average rate). None also when the times
    cannot be used: fewer than 3 frames, a 'no timestamp' marker for every frame (AVI and MPEG-PS
    files give one), times that go backwards, or a span that contradicts the frame count and `fps`
    by more than 2x; such files are read at their average rate, as every file was before.
    """
    num_frames = len(raw)
    if num_frames < 3 or not np.all(np.isfinite(raw)) or np.abs(raw).max() > 1e9:
        return None
    relative = raw - raw[0]  # exact: float32 values in float64
    # decord's float32 seconds: 0.1 s comes back as 0.10000000149; to the microsecond, it is 0.1
    starts = np.round(relative, 6)
    span, expected = float(starts[-1]), (num_frames - 1) / fps
    if not (span > 0 and 0.5 <= span / expected <= 2.0) or np.any(np.diff(starts) < 0):
        return None
    grid = _time_grid(relative)
    if grid > 1.0 / fps:  # times coarser than a frame (decord's rounding) cannot show a variable rate
        return None
    slack = max(0.5 / fps, VARIABLE_RATE_MIN_STRAY_S, grid)
    constant = np.arange(num_frames) * (span / (num_frames - 1))
    return starts if np.abs(starts - constant).max() > slack else None


_MISSING = object()
_starts_cache: dict[tuple[str, int, int], np.ndarray | None] = {}
_STARTS_CACHE_ENTRIES = 4096  # files per process (a worker may see millions)
_STARTS_CACHE_FRAMES = 10_000_000  # frame times kept per process (80 MB)
_starts_cache_frames = 0  # frame times held now


def _variable_starts(path: str, reader, num_frames: int, fps: float) -> np.ndarray | None:
    """`variable_rate_starts` of the file, cached per (path, size, mtime) in this process: the container
    index is read once per file, not once per clip."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    cached = _starts_cache.get(key, _MISSING)
    if cached is not _MISSING:
        return cached
    global _starts_cache_frames
    result = variable_rate_starts(_frame_starts(path, reader)[:num_frames], fps) if num_frames else None
    _starts_cache[key] = result
    _starts_cache_frames += 0 if result is None else len(result)
    while len(_starts_cache) > 1 and (
        len(_starts_cache) > _STARTS_CACHE_ENTRIES or _starts_cache_frames > _STARTS_CACHE_FRAMES
    ):
        dropped = _starts_cache.pop(next(iter(_starts_cache)))  # oldest first
        _starts_cache_frames -= 0 if dropped is None else len(dropped)
    return result


# containers whose frames decord 0.6 hands out wrong: asked for frames 34, 44, 54, 64 of an MPEG-PS
# (.mpg, .vob) file it returns frames 10, 8, 6, 4, and in MPEG-TS (.ts, .m2ts) even frame 0 is frame 12-25
_UNSEEKABLE = {"mpeg_ps": "an MPEG program stream (.mpg / .vob)", "mpeg_ts": "an MPEG transport stream (.ts / .m2ts)"}


def _refuse_by_header(path: str) -> None:
    """VideoError("unsupported") for a container whose frames decord returns out of place, and
    VideoError("truncated") for a Matroska / WebM or AVI file shorter than its header says (decord reads
    such a file's first part without complaint; an mp4's truncation makes decord fail, `_bmff_problem`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        size = os.path.getsize(path)
    except OSError:
        return  # the reader says what is wrong
    family = _container_family(head)
    declared = _declared_size(family, head)
    if declared is not None and size < declared:
        raise VideoError(
            path,
            "truncated",
            f"its {'Matroska' if family == 'matroska' else 'RIFF (AVI)'} header says {declared} bytes, the file has "
            f"{size} (cut short: an interrupted download or copy?); download or copy it again, or drop it from the manifest",
        )
    if family in _UNSEEKABLE:
        raise VideoError(
            path,
            "unsupported",
            f"{_UNSEEKABLE[family]}: the decoder returns the wrong frames from such files (frame numbers are "
            "not where it seeks); remux it into mp4 first: `ffmpeg -i IN -c copy OUT.mp4` (or re-encode: "
            "`ffmpeg -i IN -c:v libx264 OUT.mp4`)",
        )


def _ebml_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, next position), None past `data`. Element IDs keep
    their length marker bit (`keep_marker`); sizes drop it, and a size of all ones (unknown) is -1."""
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 8 - data[pos].bit_length() + 1
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos : pos + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
        if value == (1 << (7 * length)) - 1:
            value = -1
    return value, pos + length


def _declared_size(family: str | None, head: bytes) -> int | None:
    """The file size a Matroska / WebM (its Segment's size) or AVI (its first RIFF chunk's) header declares,
    from the file's first bytes; None for other containers, unknown sizes (live-written files) or headers
    that cannot be read."""
    if family == "riff" and len(head) >= 12 and head[8:12] == b"AVI ":
        declared = int.from_bytes(head[4:8], "little")
        return declared + 8 if 0 < declared < 0xFFFFFFFF else None
    if family != "matroska":
        return None
    pos = 0
    for expected in (0x1A45DFA3, 0x18538067):  # the EBML header, then the Segment that holds everything
        element = _ebml_vint(head, pos, keep_marker=True)
        size = _ebml_vint(head, element[1], keep_marker=False) if element else None
        if element is None or size is None or element[0] != expected:
            return None
        if expected == 0x18538067:
            return None if size[0] < 0 else size[1] + size[0]
        pos = size[1] + size[0]
    return None


def _is_iso_bmff(path: str) -> bool:
    """Whether the file is an mp4 / mov (ISO BMFF), by its first bytes; False when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return _container_family(f.read(16)) == "iso_bmff"
    except OSError:
        return False


# the container's average rate is kept while the timestamps agree with it to this fraction
RATE_TOLERANCE = 0.01


def sound_fps(avg_fps: float, num_frames: int, span_s: float, prefer_timestamps: bool = False) -> float | None:
    """The average frame rate of a video: the container's if sane, else frames / seconds spanned, else None.

    span_s: from the first frame's start to the last frame's end (NaN when not read). With
    prefer_timestamps, frames / span_s replaces a sane container rate that it contradicts by more than
    RATE_TOLERANCE (a nominal rate that the frames do not follow, or a variable rate).
    """
    low, high = FPS_RANGE
    estimate = None
    if num_frames > 0 and math.isfinite(span_s) and span_s > 0 and low <= num_frames / span_s <= high:
        estimate = num_frames / span_s
    if math.isfinite(avg_fps) and low <= avg_fps <= high:
        if prefer_timestamps and estimate is not None and abs(estimate - avg_fps) > RATE_TOLERANCE * avg_fps:
            return estimate
        return avg_fps
    return estimate


def _decode_size(path: str, size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(height, width) to decode at, or None for the native size."""
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        height, width = (int(s) for s in size)
        if height < 1 or width < 1:
            raise ValueError(f"decode size must be positive (height, width), got {size}")
        return height, width
    short = int(size)
    if short < 1:
        raise ValueError(f"decode size must be positive, got {size}")
    native_h, native_w = _native_size(path)
    scale = short / min(native_h, native_w)
    return max(1, round(native_h * scale)), max(1, round(native_w * scale))


_native_size_cache: dict[tuple[str, int, int], tuple[int, int]] = {}


def _native_size(path: str) -> tuple[int, int]:
    """(height, width) of the frames as decord returns them, cached per (path, size, mtime) in this
    process: the stream's coded size (PyAV reads the header), turned a quarter when an mp4 / mov says
    to display the video rotated by 90 or 270 degrees (phones store portrait video so), because decord
    applies that rotation (from the track header's matrix; its FFmpeg 4.1 takes it from no other container)."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _native_size_cache:
        import av

        try:
            with av.open(path) as container:
                ctx = container.streams.video[0].codec_context
                height, width = ctx.height, ctx.width
        except Exception as exc:
            raise _diagnose(path, exc) from None
        quarter = _bmff_quarter_turn(path)
        _native_size_cache[key] = (width, height) if quarter else (height, width)
        if len(_native_size_cache) > 4096:  # bounded: a worker may see millions of files
            _native_size_cache.pop(next(iter(_native_size_cache)))
    return _native_size_cache[key]


def _stream_kinds(path: str) -> list[str]:
    """The kinds of the file's streams ('audio', 'video', ...) as FFmpeg reads them; [] when it cannot."""
    try:
        import av

        with av.open(path) as container:
            return sorted({str(stream.type) for stream in container.streams})
    except Exception:
        return []


def _pixel_format(path: str) -> str:
    """The stream's pixel format as FFmpeg names it (for messages); '?' when PyAV cannot tell."""
    try:
        import av

        with av.open(path) as container:
            return str(container.streams.video[0].codec_context.pix_fmt)
    except Exception:
        return "?"


# ---------------------------------------------------------------------------------------------------
# What is wrong with a file


def check_file(path: str) -> None:
    """Problems visible without a decoder: missing, a directory, unreadable, zero bytes."""
    if not os.path.exists(path):
        raise VideoError(
            path, "missing", "no such file (a relative path in a manifest is resolved against the manifest's folder)"
        )
    if os.path.isdir(path):
        raise VideoError(path, "not_video", "is a directory, not a video file")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "missing", "the file exists but cannot be read (permissions)")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty", "the file has zero bytes (a failed download or copy?); fetch it again")


def _container_family(head: bytes) -> str | None:
    """Which video container the first bytes announce, or None when they look like no video at all."""
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "iso_bmff"  # mp4 / mov / m4v / 3gp
    signatures = {
        b"\x1a\x45\xdf\xa3": "matroska",  # mkv / webm
        b"RIFF": "riff",  # avi
        b"\x00\x00\x01\xba": "mpeg_ps",
        b"\x00\x00\x01\xb3": "mpeg_video",
        b"FLV": "flv",
        b"OggS": "ogg",
        b"\x30\x26\xb2\x75": "asf",
        b"\x00\x00\x00\x01": "annexb",  # raw H.264 / H.265
    }
    for magic, family in signatures.items():
        if head.startswith(magic):
            return family
    for first, packet in ((0, 188), (4, 192)):  # MPEG-TS; BDAV / M2TS (a 4-byte time code before each packet)
        if len(head) > first + 2 * packet and all(head[first + k * packet] == 0x47 for k in range(3)):
            return "mpeg_ts"
    return None


class _BoxWalk(NamedTuple):
    """The ISO-BMFF boxes found between two bytes of a file, and how the walk ended."""

    boxes: list[tuple[bytes, int, int]]  # (type, payload start, box end)
    cut: str | None = None  # the range ends inside a box or box header: what the cut left unfinished
    garbled: bool = False  # bytes that are no box header: corruption, not a cut


def _boxes(f, start: int, end: int) -> _BoxWalk:
    """Walk the ISO-BMFF boxes between byte `start` and `end` of file `f` (see `_BoxWalk`)."""
    boxes: list[tuple[bytes, int, int]] = []
    pos = start
    while pos < end:
        f.seek(pos)
        header = f.read(min(16, end - pos))
        if len(header) < 8:
            return _BoxWalk(boxes, f"the file ends inside a box header at byte {pos} of {end}")
        size, kind, payload = int.from_bytes(header[:4], "big"), header[4:8], pos + 8
        if not re.fullmatch(rb"[\x20-\x7e]{4}", kind):
            return _BoxWalk(boxes, garbled=True)
        if size == 1:
            if len(header) < 16:
                return _BoxWalk(boxes, f"the file ends inside the '{kind.decode()}' box header")
            size, payload = int.from_bytes(header[8:16], "big"), pos + 16
        elif size == 0:
            size = end - pos  # extends to the end
        if size < payload - pos:
            return _BoxWalk(boxes, garbled=True)
        if pos + size > end:
            return _BoxWalk(boxes, (
                f"the '{kind.decode()}' box needs {pos + size} bytes but the file has {end}: "
                "it was cut short (interrupted download, copy or recording)"
            ))  # fmt: skip
        boxes.append((kind, payload, pos + size))
        pos += size
    return _BoxWalk(boxes)


def _bmff_quarter_turn(path: str) -> bool:
    """Whether an mp4 / mov file's video track is displayed turned by 90 or 270 degrees (its track header
    matrix [a b; c d] has |b| > |a|); False for other files and anything unreadable."""
    try:
        with open(path, "rb") as f:
            if _container_family(f.read(16)) != "iso_bmff":
                return False
            end = os.path.getsize(path)
            for kind, start, stop in _boxes(f, 0, end).boxes:
                if kind != b"moov":
                    continue
                for trak, t_start, t_stop in _boxes(f, start, stop).boxes:
                    if trak != b"trak":
                        continue
                    children = {k: (s, e) for k, s, e in _boxes(f, t_start, t_stop).boxes}
                    if b"tkhd" not in children or b"mdia" not in children:
                        continue
                    handler = {k: s for k, s, _ in _boxes(f, *children[b"mdia"]).boxes}.get(b"hdlr")
                    if handler is None:
                        continue
                    f.seek(handler + 8)  # version / flags, pre_defined, then the handler type
                    if f.read(4) != b"vide":
                        continue
                    f.seek(children[b"tkhd"][0])
                    version = f.read(1)[0]
                    # version, flags, times, track id, reserved, duration; reserved, layer, group, volume, reserved
                    f.seek(children[b"tkhd"][0] + (4 + 32 if version == 1 else 4 + 20) + 16)
                    a, b = (int.from_bytes(f.read(4), "big", signed=True) for _ in range(2))
                    return abs(b) > abs(a)
    except (OSError, IndexError, ValueError):
        pass
    return False


def _bmff_problem(path: str) -> str | None:
    """Walk the top-level boxes of an mp4/mov: a description of the truncation, or None if intact."""
    with open(path, "rb") as f:
        walk = _boxes(f, 0, os.path.getsize(path))
    if walk.garbled:
        return None  # garbage where a box should start: corrupt, not cut short
    if walk.cut is not None:
        return walk.cut
    if b"moov" not in [kind for kind, _, _ in walk.boxes]:
        return "no 'moov' index box: the recording or copy was not finished"
    return None


def _decoder_message(exc: BaseException) -> str:
    """decord's message without its log prefix and stack trace."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", text)  # "[03:24:49] /src/video_reader.cc:83: "
    return text[:300]


def _diagnose(path: str, exc: BaseException, at_open: bool = False) -> VideoError:
    """Turn a decoder failure into a VideoError with the most specific reason the file's bytes support.

    at_open: decord failed to open the file (not to decode frames of it); then a file that a current
    FFmpeg (PyAV) decodes is "unsupported" (a codec decord's FFmpeg 4.1 lacks), not "corrupt"."""
    if isinstance(exc, VideoError):
        return exc
    try:
        check_file(path)
        with open(path, "rb") as f:
            head = f.read(512)
        family = _container_family(head)
        if family is None:
            detail = f"not a video container (it starts with {head[:16]!r}); if a manifest lists it, remove it there"
            return VideoError(path, "not_video", detail)
        if family == "iso_bmff":
            problem = _bmff_problem(path)
            if problem is not None:
                detail = f"{problem}; download or copy it again, or drop it from the manifest"
                return VideoError(path, "truncated", detail)
    except VideoError as err:
        return err
    except OSError as err:
        return VideoError(path, "missing", f"cannot be read: {err}")
    message = _decoder_message(exc)
    if "cannot find video stream" in message.lower():  # audio only, or a damaged index: FFmpeg tells
        streams = _stream_kinds(path)
        if streams and "video" not in streams:
            detail = f"the file holds no video stream, only {', '.join(streams)}; if a manifest lists it, remove it there"
            return VideoError(path, "not_video", detail)
    codec = _codec_decodable_elsewhere(path) if at_open else None
    if codec is not None:  # intact: decord's FFmpeg 4.1 lacks what this file needs
        return VideoError(
            path, "unsupported",
            f"decord cannot read this file's {codec} video ({message}), though current FFmpeg can; {_CONVERT_HINT}",
        )  # fmt: skip
    return VideoError(path, "corrupt", f"the decoder failed ({message}); {_CONVERT_HINT}")


def _codec_decodable_elsewhere(path: str) -> str | None:
    """The codec's name when PyAV (a current FFmpeg) decodes the file's first frames, else None."""
    try:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            codec = str(stream.codec_context.name)
            frames = 0
            for frame in container.decode(stream):
                frames += 1
                if frames >= 2:  # enough: the stream decodes (an error before this returns None below)
                    break
            return codec if frames else None
    except Exception:
        return None

