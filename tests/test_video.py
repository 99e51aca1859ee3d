"""Clip sampling and decoding on real mp4 files (PyAV writes them, decord reads them)."""

from __future__ import annotations

import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from conftest import frame_index, index_frame, write_vfr_video, write_video
from worldmodel.data.video import (
    ClipSampler,
    VideoError,
    VideoInfo,
    read_clips,
    read_frames,
    read_video_info,
    sound_fps,
)


def decoded_indices(frames: torch.Tensor) -> list[int]:
    return [frame_index(frame) for frame in frames]


def info(num_frames: int = 40, fps: float = 8.0) -> VideoInfo:
    return VideoInfo(path="synthetic.mp4", num_frames=num_frames, fps=fps, width=64, height=64)


def pyav_rgb(path) -> np.ndarray:
    """Reference decode with PyAV (current FFmpeg): uint8 (T, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# --- which frames make a clip ---------------------------------------------------------------------


def test_frame_step_offsets_and_decoded_frames(make_video):
    path = make_video("step.mp4", num_frames=40, fps=8.0)
    sampler = ClipSampler(num_frames=5, frame_step=3)
    (clip,) = read_clips(path, sampler, mode="start")
    assert clip.indices.tolist() == [0, 3, 6, 9, 12]
    assert decoded_indices(clip.frames) == [0, 3, 6, 9, 12]
    np.testing.assert_allclose(clip.timestamps, np.array([0, 3, 6, 9, 12]) / 8.0)
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (5, 64, 64, 3)
    assert clip.path == str(path)


def test_fps_offsets_round_to_nearest_frame(make_video):
    path = make_video("fps.mp4", num_frames=40, fps=8.0)
    # offsets floor(i * 8 / 3 + 0.5): 0, 2.67 -> 3, 5.33 -> 5, 8, 10.67 -> 11
    sampler = ClipSampler(num_frames=5, fps=3.0)
    assert sampler.span_indices(read_video_info(path)).tolist() == [0, 3, 5, 8, 11]
    (clip,) = read_clips(path, sampler, mode="start")
    assert decoded_indices(clip.frames) == [0, 3, 5, 8, 11]


def test_fps_offsets_for_ntsc_rate_follow_the_formula():
    sampler = ClipSampler(num_frames=16, fps=4.0)
    video_fps = 30000 / 1001
    expected = [int(np.floor(i * video_fps / 4.0 + 0.5)) for i in range(16)]
    assert sampler.span_indices(info(300, video_fps)).tolist() == expected
    assert expected[:4] == [0, 7, 15, 22]


def test_duration_covers_the_seconds_evenly(make_video):
    path = make_video("dur.mp4", num_frames=40, fps=8.0)
    sampler = ClipSampler(num_frames=4, duration_s=2.0)  # 16 frames of video, one every 4
    (clip,) = read_clips(path, sampler, mode="start")
    assert clip.indices.tolist() == [0, 4, 8, 12]
    assert decoded_indices(clip.frames) == [0, 4, 8, 12]
    # same as a target rate of T / duration_s
    assert np.array_equal(
        ClipSampler(num_frames=6, duration_s=1.5).span_indices(info(fps=25.0)),
        ClipSampler(num_frames=6, fps=4.0).span_indices(info(fps=25.0)),
    )


def test_center_start_and_uniform_modes(make_video):
    path = make_video("modes.mp4", num_frames=40, fps=8.0)
    sampler = ClipSampler(num_frames=4, frame_step=2)  # span 7, starts 0..33
    (center,) = read_clips(path, sampler, mode="center")
    assert center.indices.tolist() == [16, 18, 20, 22]
    assert decoded_indices(center.frames) == [16, 18, 20, 22]
    (start,) = read_clips(path, sampler, mode="start")
    assert start.indices.tolist() == [0, 2, 4, 6]
    clips = read_clips(path, sampler, mode="uniform", num_clips=3)
    assert [c.indices[0] for c in clips] == [0, 17, 33]
    assert [decoded_indices(c.frames) for c in clips] == [[0, 2, 4, 6], [17, 19, 21, 23], [33, 35, 37, 39]]
    only = sampler.indices(info(40), mode="uniform", num_clips=1)
    assert only[0].tolist() == center.indices.tolist()
    with pytest.raises(ValueError, match="uniform"):
        sampler.indices(info(40), mode="center", num_clips=2)


def test_random_mode_is_reproducible_and_covers_the_video(make_video):
    sampler = ClipSampler(num_frames=4, frame_step=2)
    starts = [sampler.indices(info(40), rng=np.random.default_rng(seed))[0][0] for seed in range(200)]
    assert min(starts) >= 0 and max(starts) <= 33
    assert len(set(starts)) > 20  # spread, not a fixed start
    again = [sampler.indices(info(40), rng=np.random.default_rng(seed))[0][0] for seed in range(200)]
    assert starts == again
    path = make_video("random.mp4", num_frames=40, fps=8.0)
    clips = read_clips(path, sampler, mode="random", num_clips=2, rng=np.random.default_rng(7))
    for clip in clips:
        assert decoded_indices(clip.frames) == clip.indices.tolist()
        assert np.all(np.diff(clip.indices) == 2)


def test_short_video_repeat_last(make_video):
    path = make_video("short.mp4", num_frames=10, fps=8.0)
    sampler = ClipSampler(num_frames=8, frame_step=2, short_policy="repeat_last")  # needs 15 frames
    for mode in ("random", "center", "uniform"):
        clips = read_clips(path, sampler, mode=mode, rng=np.random.default_rng(0))
        assert clips[0].indices.tolist() == [0, 2, 4, 6, 8, 9, 9, 9]
        assert decoded_indices(clips[0].frames) == [0, 2, 4, 6, 8, 9, 9, 9]


def test_short_video_skip_raises_too_short(make_video):
    path = make_video("short.mp4", num_frames=10, fps=8.0)
    sampler = ClipSampler(num_frames=8, frame_step=2, short_policy="skip")
    with pytest.raises(VideoError) as err:
        read_clips(path, sampler, mode="center")
    assert err.value.reason == "too_short" and str(path) in str(err.value)
    assert "15 frames" in str(err.value) and "has 10" in str(err.value)


def test_indices_ending_at_clamps_before_the_start():
    sampler = ClipSampler(num_frames=4, frame_step=2)
    video = info(40, 8.0)
    assert sampler.indices_ending_at(video, 3.0).tolist() == [18, 20, 22, 24]  # frame 24 is at exactly 3.0 s
    assert sampler.indices_ending_at(video, 3.12).tolist() == [18, 20, 22, 24]  # 3.12 s * 8 = 24.96
    assert sampler.indices_ending_at(video, 0.25).tolist() == [0, 0, 0, 2]
    assert sampler.indices_ending_at(video, 100.0).tolist() == [33, 35, 37, 39]


def test_sampler_needs_exactly_one_rate_setting():
    with pytest.raises(ValueError, match="exactly one"):
        ClipSampler(num_frames=4)
    with pytest.raises(ValueError, match="exactly one"):
        ClipSampler(num_frames=4, fps=4.0, frame_step=2)
    with pytest.raises(ValueError, match="short_policy"):
        ClipSampler(num_frames=4, fps=4.0, short_policy="pad")


# --- decoding ----------------------------------------------------------------------------------------


def test_read_frames_keeps_order_and_repeats(make_video):
    path = make_video("order.mp4", num_frames=20)
    frames = read_frames(path, [5, 5, 3, 19, 5])
    assert decoded_indices(frames) == [5, 5, 3, 19, 5]
    with pytest.raises(VideoError) as err:
        read_frames(path, [3, 20])
    assert err.value.reason == "too_short"


def test_resize_on_decode(make_video):
    path = make_video("big.mp4", num_frames=12, size=(64, 128))
    frames = read_frames(path, [0, 7, 11], size=(32, 48))
    assert frames.shape == (3, 32, 48, 3)
    assert decoded_indices(frames) == [0, 7, 11]
    short_side = read_frames(path, [7], size=32)  # shorter side to 32, aspect kept
    assert short_side.shape == (1, 32, 64, 3) and frame_index(short_side[0]) == 7
    clips = read_clips(path, ClipSampler(num_frames=3, frame_step=4), mode="start", size=(16, 16))
    assert clips[0].frames.shape == (3, 16, 16, 3)


def test_a_video_stored_rotated_keeps_its_displayed_shape_when_resized_by_its_shorter_side(tmp_path):
    """Phones store portrait video as landscape frames plus a 90 degree display rotation, which decord
    applies. A shorter-side resize must size the rotated frame, not squeeze it into the stored shape."""
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"  # stored 32 high, 64 wide
        stream.set_display_rotation(90)
        for _ in range(4):
            image = np.zeros((32, 64, 3), np.uint8)
            image[:, :16] = 255  # a white band on the left of the stored frame
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    native = read_frames(path, [0])
    assert native.shape == (1, 64, 32, 3)  # displayed: portrait
    for frames in (read_frames(path, [0], size=16), read_clips(path, ClipSampler(num_frames=2, frame_step=1), size=16)[0].frames):
        assert frames.shape[1:] == (32, 16, 3)  # the shorter side (the width) to 16, the aspect kept
        # and it is the displayed picture made smaller: the band lies along the same side
        small = torch.nn.functional.interpolate(native.permute(0, 3, 1, 2).float(), size=(32, 16), mode="area")
        assert (frames[0].float() - small[0].permute(1, 2, 0)).abs().mean() < 8
    info = read_video_info(path)
    assert (info.height, info.width) == (64, 32)


def test_widths_decord_cannot_copy_out_decode_at_their_native_size(tmp_path):
    """decord 0.6 fails to copy out frames 8, 16, 24, 48 or 72 px wide (it reported such files "corrupt",
    and re-encoding does not change their width). They decode through PyAV instead: the right frames, the
    display rotation applied as decord applies it, and the same pixels decord gives where it can."""
    for width, height in ((48, 32), (8, 16), (72, 40)):
        path = write_video(tmp_path / f"w{width}.mp4", [index_frame(i, (height, width)) for i in range(12)])
        frames = read_frames(path, [9, 0, 4, 4])
        assert frames.shape == (4, height, width, 3) and decoded_indices(frames) == [9, 0, 4, 4]
        assert read_frames(path, [9], size=(height // 2, width // 2)).shape == (1, height // 2, width // 2, 3)

    def rotated(path, width, height, rotation):
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.set_display_rotation(rotation)
            for _ in range(3):
                image = np.zeros((height, width, 3), np.uint8)
                image[: height // 2, : width // 4] = 255  # a white block in the stored frame's top left
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        return path

    for rotation in (90, -90, 180):
        # 64 x 48 stored: turned a quarter it is 48 wide (PyAV); 80 x 64 turned is 64 wide (decord itself)
        narrow = read_frames(rotated(tmp_path / f"n{rotation}.mp4", 64, 48, rotation), [1])[0].float()
        wide = read_frames(rotated(tmp_path / f"d{rotation}.mp4", 80, 64, rotation), [1])[0].float()
        assert narrow.shape[:2] == ((48, 64) if rotation == 180 else (64, 48))
        # the block lands in the same corner both ways: both are decord's orientation
        resized = torch.nn.functional.interpolate(wide.permute(2, 0, 1)[None], size=narrow.shape[:2], mode="area")
        assert (resized[0].permute(1, 2, 0) - narrow).abs().mean() < 12


def test_odd_sizes(tmp_path):
    frames = [index_frame(i, (33, 47)) for i in range(12)]
    # libx264 refuses odd sizes in 4:2:0; 4:4:4 and gray streams allow them
    for pix_fmt in ("yuv444p", "gray"):
        path = write_video(tmp_path / f"odd_{pix_fmt}.mp4", frames, pix_fmt=pix_fmt)
        video = read_video_info(path)
        assert (video.height, video.width, video.num_frames) == (33, 47, 12)
        decoded = read_frames(path, [0, 5, 11])
        assert decoded.shape == (3, 33, 47, 3) and decoded_indices(decoded) == [0, 5, 11]
        resized = read_frames(path, [5], size=(17, 23))
        assert resized.shape == (1, 17, 23, 3) and frame_index(resized[0]) == 5


def test_grayscale_decodes_to_rgb_like_ffmpeg(make_video):
    path = make_video("gray.mp4", num_frames=16, gray=True)
    frames = read_frames(path, list(range(16)))
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == torch.uint8
    assert decoded_indices(frames) == list(range(16))
    reference = pyav_rgb(path)
    assert np.abs(frames.numpy().astype(int) - reference.astype(int)).max() <= 2
    # gray: the three channels agree
    assert (frames[..., 0].int() - frames[..., 2].int()).abs().max() <= 2


@pytest.mark.parametrize("pix_fmt, max_code", [("gray", 255), ("gray10le", 1023), ("gray16le", 65535)])
def test_lossless_gray_streams_decode_exactly(tmp_path, pix_fmt, max_code):
    # The H.264 decoder hands monochrome streams out as yuv420p; FFV1 keeps gray (8 to 16 bit) as such.
    # Frames are handed to the encoder in the stream's own format: PyAV's rgb24 -> gray16le conversion
    # sometimes garbles a row (seen in the written file with PyAV's own decoder too).
    levels = np.array([0, 16, 40, 80, 128, 200, 235, 255])
    dtype = np.uint8 if max_code == 255 else np.uint16
    path = tmp_path / f"{pix_fmt}.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=8)
        stream.width, stream.height, stream.pix_fmt = 40, 24, pix_fmt
        for level in levels:
            plane = np.full((24, 40), round(level * max_code / 255), dtype)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(plane, format=pix_fmt)))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == pix_fmt
    decoded = read_frames(path, list(range(len(levels))))
    assert decoded.shape == (len(levels), 24, 40, 3)
    assert np.abs(decoded.numpy().astype(int) - levels[:, None, None, None]).max() <= 1


def test_ten_bit_decodes_correctly(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # colour blocks
    frames = np.stack([np.where(index_frame(i, (64, 64)) > 0, base // 2 + 128, base // 2) for i in range(10)])
    for pix_fmt in ("yuv420p10le", "yuv444p10le"):
        path = write_video(tmp_path / f"{pix_fmt}.mp4", frames, pix_fmt=pix_fmt)
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.pix_fmt == pix_fmt
        decoded = read_frames(path, list(range(10)))
        assert decoded.shape == (10, 64, 64, 3)
        assert decoded_indices(decoded) == list(range(10))
        error = np.abs(decoded.numpy().astype(float) - frames)
        # colours survive; 4:2:0 loses some chroma detail at the block edges (PyAV's FFmpeg: 5.8 here)
        assert error.mean() < (5.0 if pix_fmt == "yuv420p10le" else 1.0)
        if pix_fmt == "yuv444p10le":  # no chroma upsampling: the same pixels as current FFmpeg
            assert np.abs(decoded.numpy().astype(int) - pyav_rgb(path).astype(int)).max() <= 1


def test_variable_frame_rate_info_and_frame_step(tmp_path):
    path = write_vfr_video(tmp_path / "vfr.mp4")
    video = read_video_info(path)
    assert video.num_frames == 40
    assert 15 < video.fps < 20  # frames / duration, not the 50 fps of the first half
    assert video.variable_rate
    assert video.frame_starts[:3] == pytest.approx([0.0, 0.02, 0.04])
    assert video.frame_starts[-1] == pytest.approx(2.3, abs=1e-6)  # float32 in decord
    # frame_step counts frames whatever their times
    (clip,) = read_clips(path, ClipSampler(num_frames=4, frame_step=10), mode="start")
    assert decoded_indices(clip.frames) == [0, 10, 20, 30]
    assert clip.timestamps == pytest.approx([0.0, 0.2, 0.4, 1.4], abs=1e-6)


def test_variable_frame_rate_clips_are_placed_by_the_frames_times(tmp_path):
    """At the average rate (16.7 fps) a 5 fps clip would step 3.3 frames: 60 ms in the fast part, 330 ms
    in the slow one. Placed by time, every step is 200 ms (+- half a frame) wherever the clip is."""
    path = write_vfr_video(tmp_path / "vfr.mp4")
    sampler = ClipSampler(num_frames=4, fps=5.0)
    (first,) = read_clips(path, sampler, mode="start")
    # frame starts 0, .02, ..., .4 (frames 0-20), then .5, .6, ... (frames 21-39)
    assert decoded_indices(first.frames) == [0, 10, 20, 22] == first.indices.tolist()
    assert first.timestamps == pytest.approx([0.0, 0.2, 0.4, 0.6], abs=1e-6)
    for clip in read_clips(path, sampler, mode="uniform", num_clips=6):
        assert decoded_indices(clip.frames) == clip.indices.tolist()
        # each frame is the one nearest to its time: within half the slow part's 100 ms
        assert np.abs(clip.timestamps - clip.timestamps[0] - 0.2 * np.arange(4)).max() <= 0.05 + 1e-9
    (last,) = read_clips(path, ClipSampler(num_frames=4, duration_s=1.6), mode="uniform", num_clips=1)
    info = read_video_info(path)
    # "center" of the starts that fit: a 1.2 s span ends within half a frame of the last start (2.3 s)
    assert last.timestamps[-1] - last.timestamps[0] == pytest.approx(1.2, abs=0.05)
    assert last.timestamps[-1] <= info.frame_starts[-1] + 0.5 / info.fps
    # ending at a time: the last frame starting at or before it, then back in steps of 1 / fps
    assert sampler.indices_ending_at(info, 1.0).tolist() == [20, 22, 24, 26]  # .4 .6 .8 1.0
    assert sampler.indices_ending_at(info, 0.1).tolist() == [0, 0, 0, 5]  # before the start: frame 0
    # a clip longer than the video: skip refuses, repeat_last clamps to the last frame
    long = ClipSampler(num_frames=4, fps=1.0)
    with pytest.raises(VideoError, match=r"4-frame clip spans 3.0\d s but the video has 40 frames \(2.3\d s\)") as err:
        ClipSampler(num_frames=4, fps=1.0, short_policy="skip").indices(info, mode="start")
    assert err.value.reason == "too_short"
    assert long.indices(info, mode="start")[0].tolist() == [0, 26, 36, 39]
    assert not long.fits(info) and sampler.fits(info)
    # from a start time, not clamped: frames past the end continue at the average rate
    from_start = long.indices_starting_at(info, 0.0)
    assert from_start[:3].tolist() == [0, 26, 36] and from_start[3] == 39 + round(0.7 * info.fps)


def test_variable_frame_rate_clip_starts_are_drawn_in_time_not_frames(tmp_path):
    """Half the frames of this video fall in its first 0.4 s (50 fps there, 10 fps after). Starts drawn
    over frames would put about half the clips there; drawn over time, each start frame in proportion to
    its duration: frames 0-20 last until 0.5 s, of the 2.0 s from the first start to the end of the last
    one that fits (1.9 s + 0.1 s), so a quarter of the clips."""
    info = read_video_info(write_vfr_video(tmp_path / "vfr.mp4"))
    sampler = ClipSampler(num_frames=3, fps=5.0)  # spans 0.4 s: the last start that fits is at 1.9 s
    last_start = info.frame_starts[sampler._last_start(info)]
    assert last_start == pytest.approx(1.9, abs=1e-6)
    clips = sampler.indices(info, mode="random", num_clips=4000, rng=np.random.default_rng(0))
    first_times = info.frame_starts[[int(c[0]) for c in clips]]
    share_fast = np.mean(first_times < 0.4 + 0.05)  # the 50 fps part, up to the midpoint to frame 21
    assert share_fast == pytest.approx(0.5 / 2.0, abs=0.03)
    # at a constant rate, the same draw is exactly uniform over the frames that fit
    regular = VideoInfo(path="v.mp4", num_frames=12, fps=10.0, width=8, height=8, frame_starts=np.arange(12) / 10.0)
    draws = [int(c[0]) for c in ClipSampler(num_frames=3, fps=5.0).indices(regular, "random", 9000, np.random.default_rng(1))]
    assert np.bincount(draws, minlength=8).tolist() == pytest.approx([9000 / 8] * 8, rel=0.12)  # starts 0..7 fit
    assert first_times.max() <= last_start + 1e-9 and first_times.min() == 0.0
    # "uniform" and "center" spread in time too: starts nearest to 0, 0.95, 1.9 s (0.95 lies halfway
    # between the frames at 0.9 and 1.0 s: ties round as the frame-number formulas do, up for
    # "uniform" and down for "center"); over frames, the middle one would start at 0.34 s (frame 17 of
    # the 36 that fit)
    spread = sampler.indices(info, mode="uniform", num_clips=3)
    assert [info.frame_starts[int(c[0])] for c in spread] == pytest.approx([0.0, 1.0, 1.9], abs=1e-6)
    (center,) = sampler.indices(info, mode="center")
    assert info.frame_starts[int(center[0])] == pytest.approx(0.9, abs=1e-6)


def test_constant_frame_rate_keeps_frame_number_formulas(make_video):
    path = make_video(num_frames=50, fps=25.0)
    video = read_video_info(path)
    assert not video.variable_rate and video.frame_starts is None
    sampler = ClipSampler(num_frames=5, fps=8.0)
    assert sampler.indices_starting_at(video, 0.5).tolist() == (13 + sampler.span_indices(video)).tolist()
    (clip,) = read_clips(path, sampler, mode="start")
    assert clip.timestamps == pytest.approx(clip.indices / 25.0)


def test_sound_fps_falls_back_to_timestamps():
    assert sound_fps(29.97, 300, 10.01) == 29.97
    for nonsense in (0.0, float("nan"), float("inf"), -5.0, 90000.0):
        assert sound_fps(nonsense, 300, 10.0) == pytest.approx(30.0)
    assert sound_fps(0.0, 300, 0.0) is None
    assert sound_fps(float("nan"), 0, float("nan")) is None
    # asked to check: the timestamps replace a container rate they contradict, not one they confirm
    assert sound_fps(30.0, 250, 10.0, prefer_timestamps=True) == pytest.approx(25.0)
    assert sound_fps(29.97, 300, 10.02, prefer_timestamps=True) == 29.97
    assert sound_fps(30.0, 300, float("nan"), prefer_timestamps=True) == 30.0


def test_a_nominal_rate_the_frames_do_not_follow_is_replaced_by_the_timestamps(tmp_path):
    """Matroska (and WebM, the same container) report the declared rate: 30 fps here, for frames 40 ms
    apart (25 fps, 10 s). (H.264 in Matroska: PyAV's libvpx encoder failed to open in some full runs.)"""
    path = tmp_path / "nominal30.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(250):
            frame = av.VideoFrame.from_ndarray(index_frame(i % 64, (64, 64)), format="rgb24")
            frame.pts, frame.time_base = 40 * i, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    video = read_video_info(path)
    assert video.num_frames == 250
    # not 30: frame 200 is at 8 s, not 6.67 s (within 1 %: a container may not store the last frame's
    # duration, and then the span ends at its start)
    assert video.fps == pytest.approx(25.0, rel=0.01), video
    (clip,) = read_clips(path, ClipSampler(num_frames=4, fps=5.0), mode="start")
    assert clip.indices.tolist() == [0, 5, 10, 15] and clip.timestamps[1] == pytest.approx(0.2, rel=0.01), clip


def test_frames_taken_over_without_copy_equal_decords_copy_and_outlive_the_reader(make_video):
    import gc

    import decord

    path = make_video("owned.mp4", num_frames=16, size=(48, 64))
    expected = decord.VideoReader(str(path), num_threads=1).get_batch([2, 9, 15]).asnumpy()
    frames = read_frames(path, [2, 9, 15])  # decord's buffer, handed over through DLPack
    assert frames.dtype == torch.uint8 and frames.is_contiguous()
    gc.collect()
    # the reader and its NDArray are gone; decoding other videos must not reuse the frames' memory
    other = make_video("other.mp4", num_frames=24, size=(48, 64))
    for _ in range(3):
        read_frames(other, list(range(24)))
    np.testing.assert_array_equal(frames.numpy(), expected)
    frames[0, 0, 0, 0] = 255 - frames[0, 0, 0, 0]  # writable, as a numpy copy was


def test_decoding_ignores_the_global_decord_bridge(make_video):
    import decord

    path = make_video("bridge.mp4", num_frames=8)
    with decord.bridge.use_torch():
        frames = read_frames(path, [1, 6])
    assert isinstance(frames, torch.Tensor) and decoded_indices(frames) == [1, 6]


# --- bad files ---------------------------------------------------------------------------------------


def _faststart_video(path, num_frames=60):
    """An mp4 with its index (moov) before the frames, as streaming sites serve them."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(num_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(index_frame(i, (64, 64)), format="rgb24")))
        container.mux(stream.encode())
    return path


def _expect(path, reason: str) -> None:
    for read in (
        lambda: read_video_info(path),
        lambda: read_frames(path, [0]),
        lambda: read_clips(path, ClipSampler(num_frames=2, frame_step=1), mode="start"),
    ):
        with pytest.raises(VideoError) as err:
            read()
        assert err.value.reason == reason, str(err.value)
        assert err.value.path == str(path) and str(path) in str(err.value)
        assert err.value.detail and str(err.value) == f"{path}: {reason}: {err.value.detail}"


def test_missing_path(tmp_path):
    _expect(tmp_path / "nowhere.mp4", "missing")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    _expect(path, "empty")


def test_text_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are my notes, not a video\n" * 20)
    _expect(path, "not_video")


def test_audio_only_mp4_is_not_a_video(tmp_path):
    """A valid container without a video stream: no re-encoding hint could help, so not `corrupt`."""
    path = tmp_path / "voice.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, 1024 * i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    _expect(path, "not_video")
    with pytest.raises(VideoError, match="no video stream"):
        read_video_info(path)


def test_directory_is_not_a_video(tmp_path):
    (tmp_path / "folder.mp4").mkdir()
    _expect(tmp_path / "folder.mp4", "not_video")


def test_truncated_mp4_index_at_end(make_video, tmp_path):
    source = make_video("whole.mp4", num_frames=60)
    data = source.read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "truncated")


def test_truncated_mp4_index_at_start(tmp_path):
    data = _faststart_video(tmp_path / "whole_fs.mp4").read_bytes()
    for fraction in (0.5, 0.9):
        path = tmp_path / f"cut_{fraction}.mp4"
        path.write_bytes(data[: int(len(data) * fraction)])
        _expect(path, "truncated")


# WebM is Matroska too (its VP9 encoder failed to open in a long test process: left out)
@pytest.mark.parametrize("name, codec", [("v.mkv", "libx264"), ("v.mkv", "mpeg4"), ("v.avi", "mjpeg")])
def test_truncated_matroska_webm_and_avi_are_truncated(tmp_path, name, codec):
    """decord reads the first part of a cut Matroska / WebM / AVI file without complaint (a cut AVI even
    gave a half-written last frame); their headers declare the size, so the cut is found on opening."""
    whole = write_video(tmp_path / name, [index_frame(i, (64, 64)) for i in range(40)], codec=codec,
                        pix_fmt="yuvj420p" if codec == "mjpeg" else "yuv420p")
    assert read_video_info(whole).num_frames == 40 and decoded_indices(read_frames(whole, [0, 39])) == [0, 39]
    data = whole.read_bytes()
    for fraction in (0.5, 0.9):
        path = tmp_path / f"cut_{fraction}_{name}"
        path.write_bytes(data[: int(len(data) * fraction)])
        _expect(path, "truncated")
        with pytest.raises(VideoError, match=r"header says \d+ bytes, the file has \d+"):
            read_frames(path, [0])


def test_mp4_box_walk_tells_a_cut_from_garbage(make_video, tmp_path):
    """The top-level box walk: a few bytes past the last box are a cut box header ("truncated"), bytes
    that are no box header where one should start are corruption ("corrupt"), not a cut."""
    from worldmodel.data.video import _bmff_problem

    data = make_video("whole.mp4", num_frames=20).read_bytes()
    assert _bmff_problem(str(make_video("whole.mp4", num_frames=20))) is None
    cut = tmp_path / "cut_header.mp4"
    cut.write_bytes(data + b"\x00\x00\x01")  # 3 bytes of a next box header
    assert _bmff_problem(str(cut)) == f"the file ends inside a box header at byte {len(data)} of {len(data) + 3}"
    first = int.from_bytes(data[:4], "big")  # the size of the first box (ftyp)
    garbage = tmp_path / "garbage.mp4"  # the second box's type made of control bytes
    garbage.write_bytes(data[:first] + b"\x00\x00\x00\x10\x01\x02\x03\x04" + data[first + 8:])
    assert _bmff_problem(str(garbage)) is None
    no_index = tmp_path / "no_index.mp4"  # ftyp, then a free box to the end: no moov anywhere
    no_index.write_bytes(data[:first] + (len(data) - first).to_bytes(4, "big") + b"free" + bytes(len(data) - first - 8))
    assert "no 'moov' index box" in _bmff_problem(str(no_index))


def test_corrupt_index(tmp_path):
    data = bytearray(_faststart_video(tmp_path / "whole_fs.mp4").read_bytes())
    moov = data.index(b"moov")
    data[moov + 40 : moov + 400] = np.random.default_rng(0).integers(0, 256, 360, dtype=np.uint8).tobytes()
    path = tmp_path / "scrambled.mp4"
    path.write_bytes(bytes(data))
    _expect(path, "corrupt")


def test_video_error_pickles_and_checks_its_reason():
    err = VideoError("/data/a.mp4", "truncated", "cut short")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, again.detail) == ("/data/a.mp4", "truncated", "cut short")
    assert str(again) == "/data/a.mp4: truncated: cut short"
    with pytest.raises(ValueError):
        VideoError("/data/a.mp4", "broken", "?")


def test_unusable_or_steady_frame_times_mean_constant_rate():
    from worldmodel.data.video import variable_rate_starts

    steady = np.arange(300) / 30.0
    assert variable_rate_starts(steady, 30.0) is None
    assert variable_rate_starts(np.full(100, -3.689348732278538e17), 25.0) is None  # AVI's 'no timestamp'
    assert variable_rate_starts(np.full(100, 9.2e15), 25.0) is None  # Matroska slideshow, MPEG-PS
    assert variable_rate_starts(steady[::-1].copy(), 30.0) is None  # backwards
    assert variable_rate_starts(steady * 10, 30.0) is None  # a span 10x what frames and rate say
    # 29.97 fps frames under a declared 30 (within the rate tolerance): constant at their own rate
    assert variable_rate_starts(np.arange(3000) * 1001 / 30000, 30.0) is None
    # 120 fps times quantised to 8 ms steps (decord's float32 of a capture clock): constant
    quantised = np.round(np.arange(200) / 120.0 / 0.0078125) * 0.0078125
    assert variable_rate_starts(quantised, 120.0) is None
    varying = np.concatenate([np.arange(20) * 0.02, 0.4 + np.arange(1, 21) * 0.1])
    assert variable_rate_starts(varying + 5.0, 16.0) == pytest.approx(varying)  # relative to frame 0


def test_h264_in_avi_reads_at_its_average_rate(tmp_path):
    path = write_video(tmp_path / "clip.avi", [index_frame(i, (64, 64)) for i in range(60)], fps=25.0)
    video = read_video_info(path)
    assert not video.variable_rate and video.num_frames == 60
    (clip,) = read_clips(path, ClipSampler(num_frames=4, fps=5.0), mode="center")
    assert decoded_indices(clip.frames) == clip.indices.tolist() == [22, 27, 32, 37]
    assert clip.timestamps == pytest.approx(clip.indices / 25.0)


def test_frames_sharing_a_start_time_resolve_to_the_last_of_them():
    starts = np.array([0.0, 0.1, 0.2, 0.3, 0.3, 0.5, 0.6, 0.7])
    video = VideoInfo(path="dup.mp4", num_frames=8, fps=10.0, width=8, height=8, frame_starts=starts)
    assert video.frames_nearest(np.array([0.3, 0.29, 0.0])).tolist() == [4, 4, 0]
    assert video.last_frame_at(0.35) == 4
    assert ClipSampler(num_frames=3, fps=10.0).indices_ending_at(video, 0.35).tolist() == [1, 2, 4]
    # a start past the last frame is not moved onto it: the indices say how far short the video is
    assert ClipSampler(num_frames=2, fps=10.0).indices_starting_at(video, 10.0).tolist() == [100, 101]


@pytest.mark.parametrize("name, container, codec", [("clip.mpg", "mpeg", "mpeg2video"), ("clip.ts", "mpegts", "libx264")])
def test_mpeg_program_and_transport_streams_are_refused(tmp_path, name, container, codec):
    """decord returns the wrong frames from these containers (frames 10, 8, 6, 4 asked for 34 ... 64 in
    MPEG-PS; in MPEG-TS even frame 0 is a later one): an error saying how to remux, not wrong clips."""
    path = tmp_path / name
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(60):
            for packet in stream.encode(av.VideoFrame.from_ndarray(index_frame(i, (64, 64)), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    for read in (lambda: read_video_info(path), lambda: read_frames(path, [10, 20])):
        with pytest.raises(VideoError, match=r"MPEG (program|transport) stream.*ffmpeg -i IN -c copy OUT.mp4") as err:
            read()
        assert err.value.reason == "unsupported" and err.value.path == str(path)


@pytest.mark.parametrize("video_fps", [30.0, 25.0, 30000 / 1001])
def test_timed_placement_on_regular_frames_equals_the_frame_number_formulas(video_fps):
    """Frame times exactly i / fps (kept to the microsecond, as read from a file) through the time-based
    path give the frame-number formulas' clips, ties included: one rule, two ways to compute it."""
    for num_frames in (2, 3, 17, 90):
        plain = VideoInfo(path="v.mp4", num_frames=num_frames, fps=video_fps, width=8, height=8)
        starts = np.round(np.arange(num_frames) / video_fps, 6)
        timed = VideoInfo(path="v.mp4", num_frames=num_frames, fps=video_fps, width=8, height=8, frame_starts=starts)
        for settings in ({"fps": 4.0}, {"fps": 12.0}, {"fps": 60.0}, {"duration_s": 1.0013}, {"duration_s": 0.5}):
            for length in (1, 2, 4, 8):
                sampler = ClipSampler(num_frames=length, **settings)
                case = (num_frames, settings, length)
                assert sampler.fits(plain) == sampler.fits(timed), case
                for mode, count in (("start", 1), ("center", 1), ("uniform", 3)):
                    assert np.array_equal(np.stack(sampler.indices(plain, mode, count)),
                                          np.stack(sampler.indices(timed, mode, count))), (case, mode)
                for end_s in np.arange(0.0, num_frames / video_fps + 0.3, 1 / 48):
                    assert sampler.indices_ending_at(plain, end_s).tolist() == \
                        sampler.indices_ending_at(timed, end_s).tolist(), (case, end_s)
                    # (a start exactly half way between frames is decided by float rounding in the frame
                    # number formula, floor(12.4999... + 0.5) for 12.5 frames: compared off the midpoints)
                    start_s = end_s + 1e-4
                    assert sampler.indices_starting_at(plain, start_s).tolist() == \
                        sampler.indices_starting_at(timed, start_s).tolist(), (case, start_s)


def test_a_context_ends_at_the_last_frame_before_its_end_time_whatever_the_frame_rate_does(tmp_path):
    """Stepping forward from the clip's first frame used to end a variable-rate clip frames early (where
    the rate rises within it): an anticipation context then ended before the frame it promises."""
    starts = np.round(np.concatenate([np.arange(15) * 0.2, 3.0 + np.arange(60) / 30]), 6)  # 5 fps, then 30
    synthetic = VideoInfo("v.mp4", len(starts), fps=len(starts) / (starts[-1] + 1 / 30), width=8, height=8,
                          frame_starts=starts)
    real = read_video_info(write_vfr_video(tmp_path / "vfr.mp4", gaps_ms=(100,) * 10 + (20,) * 30 + (200,) * 10))
    assert real.frame_starts is not None
    for info in (synthetic, real):
        for sampler in (ClipSampler(num_frames=8, fps=4.0), ClipSampler(num_frames=4, duration_s=0.9)):
            for end_s in np.arange(0.0, info.frame_starts[-1] + 0.5, 0.01):
                clip = sampler.indices_ending_at(info, end_s)
                assert clip[-1] == info.last_frame_at(end_s), (info.path, end_s, clip)
                assert (np.diff(clip) >= 0).all() and clip.min() >= 0
    assert ClipSampler(num_frames=8, fps=4.0).indices_ending_at(synthetic, 3.44)[-1] == 28  # was 26


def test_times_decord_rounded_onto_a_coarse_grid_are_a_constant_rate():
    from worldmodel.data.video import variable_rate_starts

    # a 30 fps file whose clock starts at 1e9 ms: decord's float32 puts every time on a 64 ms grid
    grid = np.round(np.arange(90) / 30.0 / 0.064) * 0.064 * (1 + 1e-7 * np.sin(np.arange(90)))
    assert variable_rate_starts(grid, 30.0) is None
    # a real variable rate on a fine grid is still one
    varying = np.concatenate([np.arange(30) / 30.0, 1.0 + np.arange(1, 31) * 0.2])
    assert variable_rate_starts(varying, 60 / 7.0) is not None
