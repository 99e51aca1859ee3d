"""Manifests, ClipDataset (bad files included), EpochSampler, collate, AnticipationDataset.

Videos are real H.264 mp4 files written with PyAV (tests/conftest.py); frame i shows its own index,
so a test can read back which source frames a clip holds.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import frame_index
from torch.utils.data import DataLoader

from worldmodel.data.annotations import ActionVocabulary, read_annotations
from worldmodel.data.datasets import (
    AnticipationDataset,
    ClipDataset,
    DataErrorTracker,
    DataFailureError,
    EpochSampler,
    ManifestEntry,
    collate_samples,
    read_manifest,
)
from worldmodel.data.transforms import RandomResizedCropVideo, ResizeCenterCropVideo, video_from_frames
from worldmodel.data.video import ClipSampler, VideoError, read_video_info


def _lines(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _indices(video: torch.Tensor) -> list[int]:
    """Source frame indices of a (C, T, H, W) uint8 clip of index-coded frames."""
    return [frame_index(video[:, t].permute(1, 2, 0)) for t in range(video.shape[1])]


# ---------------------------------------------------------------------------------------------- manifests
def test_manifest_plain_list_resolves_relative_paths(tmp_path):
    manifest = _lines(
        tmp_path / "lists" / "train.txt",
        "# my videos",
        "a.mp4",
        "",
        "sub/b.mp4   ",
        "/abs/c.mkv",
        "../up.webm",
    )
    entries = read_manifest(manifest)
    root = tmp_path / "lists"
    assert entries == [
        ManifestEntry(str(root / "a.mp4"), None),
        ManifestEntry(str(root / "sub" / "b.mp4"), None),
        ManifestEntry("/abs/c.mkv", None),
        ManifestEntry(str(tmp_path / "up.webm"), None),
    ]


def test_manifest_labels_space_comma_and_header(tmp_path):
    spaced = _lines(tmp_path / "spaced.txt", "a.mp4 3", "b.mp4\t7", "c.mp4")
    assert [(Path(e.path).name, e.label) for e in read_manifest(spaced)] == [("a.mp4", 3), ("b.mp4", 7), ("c.mp4", None)]
    comma = _lines(tmp_path / "comma.csv", "path,label", "x.mp4,0", "with space.mp4, 12", "y.mp4,")
    entries = read_manifest(comma)
    assert [(Path(e.path).name, e.label) for e in entries] == [("x.mp4", 0), ("with space.mp4", 12), ("y.mp4", None)]
    assert entries[1].path == str(tmp_path / "with space.mp4")
    header_only_path = _lines(tmp_path / "h.csv", "path", "z.mp4")
    assert [Path(e.path).name for e in read_manifest(header_only_path)] == ["z.mp4"]


def test_manifest_directory_is_scanned_recursively(tmp_path):
    for name in ["b/2.mp4", "a.MKV", "b/1.avi", "c/d/e.webm", "notes.txt", "b/frames.jpg"]:
        (tmp_path / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / name).write_bytes(b"")
    names = [os.path.relpath(e.path, tmp_path / "videos") for e in read_manifest(tmp_path / "videos")]
    assert names == ["a.MKV", "b/1.avi", "b/2.mp4", "c/d/e.webm"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        read_manifest(tmp_path / "empty")


def test_manifest_directory_follows_symlinks_and_lists_broken_ones(tmp_path, make_video):
    """Dataset trees built from links: linked folders are scanned (a cycle ends), a broken link is
    listed and then reported missing, not silently left out."""
    root, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    make_video(root / "real" / "a.mp4", num_frames=4)
    make_video(elsewhere / "b.mp4", num_frames=4)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    entries = read_manifest(root)
    assert [Path(e.path).name for e in entries] == ["broken.mp4", "b.mp4", "a.mp4"]
    assert entries[0].path == str(root / "broken.mp4") and entries[1].path == str((elsewhere / "b.mp4").resolve())
    with pytest.raises(VideoError) as err:
        read_video_info(entries[0].path)
    assert err.value.reason == "missing" and "broken.mp4" in str(err.value)


def test_manifest_errors_name_file_and_line(tmp_path):
    bad_label = _lines(tmp_path / "bad.txt", "a.mp4 1", "# comment", "b.mp4 cat")
    with pytest.raises(ValueError, match=r"bad\.txt:3: label 'cat' is not an integer"):
        read_manifest(bad_label)
    spaced = _lines(tmp_path / "spaced.txt", "holiday/my video.mp4")
    with pytest.raises(ValueError, match=r"spaced\.txt:1: .*comma form: 'holiday/my video\.mp4,'"):
        read_manifest(spaced)
    assert read_manifest(_lines(tmp_path / "comma.txt", "holiday 2019/my video.mp4,"))[0].path.endswith("my video.mp4")
    video_header = _lines(tmp_path / "header.csv", "video,label", "a.mp4,1")
    with pytest.raises(ValueError, match=r"header\.csv:1: label 'label' is not an integer .*'path' and 'path,label'"):
        read_manifest(video_header)
    negative = _lines(tmp_path / "negative.csv", "a.mp4,1", "b.mp4,-2")
    with pytest.raises(ValueError, match=r"negative\.csv:2: label -2 is negative; labels are class ids >= 0, or -1"):
        read_manifest(negative)
    no_label = read_manifest(_lines(tmp_path / "unlabelled.csv", "a.mp4,1", "b.mp4,-1"))  # -1: no label, as samples say
    assert [e.label for e in no_label] == [1, None]
    too_many = _lines(tmp_path / "many.txt", "a.mp4 1 2")
    with pytest.raises(ValueError, match=r"many\.txt:1: expected 'path' or 'path label'"):
        read_manifest(too_many)
    empty = _lines(tmp_path / "empty.csv", "# nothing", "path,label", "")
    with pytest.raises(ValueError, match=r"empty\.csv lists no videos"):
        read_manifest(empty)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_manifest(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------- ClipDataset
def test_clip_dataset_sample_is_a_function_of_seed_epoch_index(tmp_path, make_video):
    make_video("v0.mp4", num_frames=40, size=(32, 32))
    manifest = _lines(tmp_path / "m.txt", "v0.mp4 5")
    sampler = ClipSampler(num_frames=4, frame_step=2)
    dataset = ClipDataset([str(manifest)], sampler, transform=None, seed=7)
    item = dataset[(3, 0)]
    assert item["video"].dtype == torch.uint8 and item["video"].shape == (3, 4, 32, 32)
    assert (item["label"], item["index"], item["epoch"], item["errors"]) == (5, 0, 3, [])
    # the clip start is the first draw of default_rng([seed, epoch, index]); span 7 of 40 frames
    start = int(np.random.default_rng([7, 3, 0]).integers(0, 40 - 7 + 1))
    assert _indices(item["video"]) == [start, start + 2, start + 4, start + 6]
    assert torch.equal(dataset[(3, 0)]["video"], item["video"])
    assert torch.equal(dataset[0]["video"], dataset[(0, 0)]["video"])  # plain int = epoch 0
    starts = {_indices(dataset[(epoch, 0)]["video"])[0] for epoch in range(8)}
    assert len(starts) > 1  # a new clip each epoch

    cropped = ClipDataset(str(manifest), sampler, transform=RandomResizedCropVideo(16), seed=7)
    a, b = cropped[(1, 0)], cropped[(1, 0)]
    assert a["video"].shape == (3, 4, 16, 16) and torch.equal(a["video"], b["video"])


def _bad_files(tmp_path: Path, make_video) -> dict[str, Path]:
    """One file per kind of failure the pretraining loader must survive."""
    full = make_video(tmp_path / "bad" / "truncated.mp4", num_frames=16, size=(32, 32))
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])  # cut short: the moov index at the end is gone
    empty = tmp_path / "bad" / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "bad" / "notes.mp4"
    text.write_text("these are my notes, not a video\n" * 20)
    return {"truncated": full, "empty": empty, "not_video": text, "missing": tmp_path / "bad" / "gone.mp4"}


def test_bad_files_are_skipped_counted_and_logged(tmp_path, make_video):
    good = [make_video(f"good/g{i}.mp4", num_frames=12, size=(32, 32)) for i in range(4)]
    bad = _bad_files(tmp_path, make_video)
    manifest = _lines(tmp_path / "m.txt", *[str(p) for p in good], *[str(p) for p in bad.values()])
    dataset = ClipDataset(
        str(manifest), ClipSampler(num_frames=4, frame_step=1), transform=RandomResizedCropVideo(24), seed=1
    )
    sampler = EpochSampler(dataset, shuffle=False)  # every manifest line is asked for once
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate_samples, drop_last=True)
    tracker = DataErrorTracker(str(tmp_path / "run"), max_failure_ratio=1.0, min_samples=1)
    seen_errors = []
    for batch in loader:
        assert batch["video"].shape == (4, 3, 4, 24, 24) and batch["video"].dtype == torch.uint8  # full
        assert set(batch["path"]) <= {str(p) for p in good}  # only good files made clips
        tracker.update(batch["errors"], num_ok=batch["video"].shape[0])
        seen_errors += batch["errors"]
    by_path = {path: reason for path, reason, _ in seen_errors}
    for reason, path in bad.items():
        assert by_path[str(path)] == reason
    assert set(tracker.counts) == set(bad) and tracker.num_failures == len(seen_errors) >= 4
    assert tracker.num_ok == 8
    with open(tmp_path / "run" / "data_errors.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason", "detail"]
    assert Counter(r[1] for r in rows[1:]) == tracker.counts
    assert all(detail for _, _, detail in rows[1:])
    summary = tracker.summary()
    assert f"data: {len(bad)} unusable video(s) skipped: {tracker.num_failures} failed read(s)" in summary
    assert "truncated" in summary and "data_errors.csv" in summary
    # the same file drawn again is one more failed read, not one more unusable video; kept across a resume
    again = DataErrorTracker(None)
    again.load_state_dict(tracker.state_dict())
    again.update([(str(bad["truncated"]), "truncated", "again")], num_ok=0)
    assert f"data: {len(bad)} unusable video(s) skipped: {tracker.num_failures + 1} failed read(s)" in again.summary()
    # a checkpoint from before the distinct files were kept: the files its examples name, "at least"
    old = {k: v for k, v in tracker.state_dict().items() if k != "bad_files"}
    older = DataErrorTracker(None)
    older.load_state_dict(old)
    assert f"data: at least {len(tracker.examples)} unusable video(s) skipped" in older.summary()
    assert "at least" in DataErrorTracker.merged([old, tracker.state_dict()], older).summary()
    assert DataErrorTracker(str(tmp_path), rank=3).csv_path == tmp_path / "data_errors.rank3.csv"
    # a short run above the limit (too few attempts to stop it) says so in its summary
    short = DataErrorTracker(None, max_failure_ratio=0.1, min_samples=50)
    short.update([("a.mp4", "corrupt", "x")] * 3, num_ok=5)
    assert "WARNING: above max_failure_ratio=0.1, in too few attempts" in short.summary()
    fine = DataErrorTracker(None, max_failure_ratio=0.5, min_samples=50)
    fine.update([("a.mp4", "corrupt", "x")], num_ok=5)
    assert "WARNING" not in fine.summary()


def test_failure_threshold_raises_with_examples(tmp_path, make_video):
    good = make_video("ok.mp4", num_frames=8, size=(32, 32))
    bad = _bad_files(tmp_path, make_video)
    manifest = _lines(tmp_path / "m.txt", str(good), *[str(p) for p in bad.values()])
    dataset = ClipDataset(str(manifest), ClipSampler(num_frames=2, frame_step=1), seed=0)
    sampler = EpochSampler(dataset, samples_per_epoch=20, seed=0)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate_samples)
    tracker = DataErrorTracker(str(tmp_path), max_failure_ratio=0.25, min_samples=10)
    with pytest.raises(DataFailureError) as err:
        for batch in loader:
            tracker.update(batch["errors"], num_ok=len(batch["index"]))
    message = str(err.value)
    assert "max_failure_ratio=0.25" in message and "%" in message
    assert all(f"{reason} " in message for reason in tracker.counts)
    assert str(bad["missing"]) in message or str(bad["empty"]) in message
    assert "worldmodel data check" in message and "data_errors.csv" in message

    # below min_samples nothing is decided; at exactly the threshold the run goes on
    small = DataErrorTracker(None, max_failure_ratio=0.5, min_samples=10)
    small.update([("x.mp4", "missing", "gone")] * 5, num_ok=0)
    small.update([("y.mp4", "corrupt", "bad")] * 5, num_ok=10)  # 10 of 20 = 0.5
    with pytest.raises(DataFailureError, match="11 of 21"):
        small.update([("z.mp4", "empty", "zero bytes")], num_ok=0)


def test_the_error_list_of_a_fresh_run_starts_anew_and_a_resumed_one_matches_its_checkpoint(tmp_path, monkeypatch):
    """A CSV left by an earlier attempt in the run folder is set aside, not added to; a resumed run drops
    the rows written after its checkpoint (those batches run again and list their errors again)."""
    def rows(path):
        with open(path, newline="") as f:
            return list(csv.reader(f))[1:]

    first = DataErrorTracker(str(tmp_path), max_failure_ratio=1.0, min_samples=1)
    first.start()
    first.update([("a.mp4", "empty", "zero bytes")] * 3, num_ok=5)
    checkpointed = first.state_dict()
    first.update([("b.mp4", "corrupt", "bad")] * 2, num_ok=5)  # after the checkpoint, then a crash
    assert len(rows(first.csv_path)) == 5
    # the cut is atomic: killed while it writes (here: the write fails), the whole old list is still there
    with monkeypatch.context() as patch:
        def killed(fd):
            raise KeyboardInterrupt
        patch.setattr(os, "fsync", killed)
        interrupted = DataErrorTracker(str(tmp_path), max_failure_ratio=1.0, min_samples=1)
        interrupted.load_state_dict(checkpointed)
        with pytest.raises(KeyboardInterrupt):
            interrupted.start()
    assert len(rows(first.csv_path)) == 5 and sorted(os.listdir(tmp_path)) == ["data_errors.csv"]
    resumed = DataErrorTracker(str(tmp_path), max_failure_ratio=1.0, min_samples=1)
    resumed.load_state_dict(checkpointed)
    resumed.start()
    assert rows(resumed.csv_path) == [["a.mp4", "empty", "zero bytes"]] * 3
    resumed.update([("b.mp4", "corrupt", "bad")] * 2, num_ok=5)  # the same batches again: listed once
    assert len(rows(resumed.csv_path)) == 5 and resumed.num_failures == 5
    resumed.start()  # a second fit() of the same trainer: the list goes on, nothing set aside
    assert len(rows(resumed.csv_path)) == 5
    # DDP: only rank 0 writes checkpoints, so its row count says nothing about rank 1's CSV: kept whole
    rank1 = DataErrorTracker(str(tmp_path), max_failure_ratio=1.0, min_samples=1, rank=1)
    rank1.start()
    rank1.update([("d.mp4", "corrupt", "bad")] * 4, num_ok=1)
    other = DataErrorTracker(str(tmp_path), max_failure_ratio=1.0, min_samples=1, rank=1)
    other.load_state_dict(checkpointed)  # rank 0's state (3 rows)
    other.start()
    assert len(rows(other.csv_path)) == 4
    fresh = DataErrorTracker(str(tmp_path), max_failure_ratio=1.0, min_samples=1)
    fresh.start()  # a new run in the same folder: nothing of the old list in its own
    assert not fresh.csv_path.exists() and len(rows(tmp_path / "data_errors.previous.csv")) == 5
    fresh.update([("c.mp4", "missing", "gone")], num_ok=1)
    assert rows(fresh.csv_path) == [["c.mp4", "missing", "gone"]]


def test_all_bad_source_stops_the_sample(tmp_path, make_video):
    bad = _bad_files(tmp_path, make_video)
    manifest = _lines(tmp_path / "m.txt", *[str(p) for p in bad.values()])
    dataset = ClipDataset(str(manifest), ClipSampler(num_frames=2, frame_step=1), max_attempts=3)
    with pytest.raises(DataFailureError, match="3 videos in a row"):
        dataset[0]
    in_process_error = pytest.raises(DataFailureError, dataset.__getitem__, 0).value
    in_process = str(in_process_error)
    assert [e[:2] for e in in_process_error.errors] == [(str(p), r) for p, r in _attempted(in_process_error)]
    assert len(in_process_error.errors) == 3  # every attempt, for data_errors.csv

    # raised inside a DataLoader worker, it arrives as a DataFailureError with the same message (the
    # worker's traceback is not in it), so the command line can print it as it is
    loader = DataLoader(dataset, batch_size=1, sampler=[0], num_workers=1, collate_fn=collate_samples)
    with pytest.raises(DataFailureError) as err:
        next(iter(loader))
    assert str(err.value) == in_process and "\n" in in_process and "Traceback" not in str(err.value)
    assert err.value.errors == in_process_error.errors  # read back from the message across the worker boundary


def _attempted(error):
    """(path, reason) of the attempts a SampleFailureError's message lists."""
    return [tuple(line.strip().split(": ")[:2]) for line in str(error).splitlines() if line.startswith("  ")]


def test_worker_message_keeps_the_last_exception_line_and_what_follows():
    from worldmodel.data.video import VideoError, worker_message

    text = (
        "Caught DataFailureError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n    raise DataFailureError("...DataFailureError: not this")\n'
        "worldmodel.data.datasets.DataFailureError: first line\n  a.mp4: missing: gone\nlast line\n"
    )
    assert worker_message(DataFailureError, text) == "first line\n  a.mp4: missing: gone\nlast line"
    assert worker_message(DataFailureError, "plain message") == "plain message"
    assert worker_message(VideoError, text) == text  # another class's text is left alone
    rebuilt = VideoError("Caught VideoError in DataLoader worker process 1.\nOriginal Traceback (most recent "
                         "call last):\n  File \"y.py\"\nworldmodel.data.video.VideoError: /v/a: b.mp4: empty: zero bytes\n")
    assert (rebuilt.path, rebuilt.reason, rebuilt.detail) == ("/v/a: b.mp4", "empty", "zero bytes")
    with pytest.raises(TypeError):  # not a VideoError's text: the DataLoader then falls back to RuntimeError
        VideoError("something else")

    class LocalError(VideoError):  # a subclass is rebuilt from its own name's line
        pass

    sub = LocalError("Caught LocalError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                     "last):\n  File \"z.py\"\ntests.LocalError: /v/c.mp4: corrupt: bad frame\n")
    assert (type(sub), sub.path, sub.reason, sub.detail) == (LocalError, "/v/c.mp4", "corrupt", "bad frame")


def test_two_workers_give_the_same_batches(tmp_path, make_video):
    videos = [make_video(f"v{i}.mp4", num_frames=12 + 4 * i, size=(32, 40)) for i in range(4)]
    manifest = _lines(tmp_path / "m.txt", *[p.name for p in videos], "missing.mp4")  # replacements too
    dataset = ClipDataset(
        str(manifest), ClipSampler(num_frames=4, frame_step=2), transform=RandomResizedCropVideo(16), seed=3
    )

    def batches(num_workers: int) -> list[dict]:
        sampler = EpochSampler(dataset, samples_per_epoch=8, seed=3)
        sampler.set_epoch(2)
        loader = DataLoader(
            dataset, batch_size=2, sampler=sampler, num_workers=num_workers, collate_fn=collate_samples
        )
        return list(loader)

    single, multi = batches(0), batches(2)
    assert len(single) == len(multi) == 4
    for a, b in zip(single, multi):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["epoch"], torch.full((2,), 2))
        assert torch.equal(a["video"], b["video"]) and a["path"] == b["path"] and a["errors"] == b["errors"]
        # stacked in the worker's shared memory as decoded, (B, T, H, W, C), and sent without a reorder
        assert b["video"].is_contiguous(memory_format=torch.channels_last_3d)
    assert any(batch["errors"] for batch in single)  # the missing file was met and replaced
    # the DataLoader fetches whole batches (ClipDataset.__getitems__: each clip resized straight into
    # its slot of the batch, no stacking); the values are those of the items one by one, stacked
    sampler = EpochSampler(dataset, samples_per_epoch=8, seed=3)
    sampler.set_epoch(2)
    keys = list(sampler)
    for b, batch in enumerate(multi):
        one_by_one = collate_samples([dataset[key] for key in keys[2 * b : 2 * b + 2]])
        assert torch.equal(batch["video"], one_by_one["video"]) and batch["errors"] == one_by_one["errors"]
        assert batch["video"].is_shared()  # written in the worker's shared memory: sent without a copy


def test_batched_fetch_writes_clips_into_one_batch(tmp_path, make_video):
    videos = [make_video(f"v{i}.mp4", num_frames=10, size=(24, 32)) for i in range(3)]
    manifest = _lines(tmp_path / "m.txt", *[p.name for p in videos])
    sampler = ClipSampler(num_frames=4, frame_step=2)
    for transform in (RandomResizedCropVideo((12, 20)), ResizeCenterCropVideo(16)):
        dataset = ClipDataset(str(manifest), sampler, transform=transform, seed=1)
        items = dataset.__getitems__([0, (1, 2), 1])
        batch = collate_samples(items)["video"]
        assert batch.data_ptr() == items[0]["video"].data_ptr()  # the clips' own memory: nothing stacked
        assert batch.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(batch, torch.stack([dataset[k]["video"] for k in (0, (1, 2), 1)]))
    # without a fixed output size there is no batch to write into: items one by one, stacked as usual
    dataset = ClipDataset(str(manifest), sampler, seed=1)
    items = dataset.__getitems__([0, 1])
    batch = collate_samples(items)["video"]
    assert batch.data_ptr() not in (items[0]["video"].data_ptr(), items[1]["video"].data_ptr())
    assert torch.equal(batch, torch.stack([dataset[0]["video"], dataset[1]["video"]]))


def test_collate_copies_clips_that_are_views_into_other_memory():
    frames = torch.randint(0, 256, (4, 2, 6, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    clips = [video_from_frames(frames[i]) for i in range(3)]  # consecutive, but the memory holds 4 clips
    batch = collate_samples([{"video": c} for c in clips])["video"]
    assert torch.equal(batch, torch.stack(clips)) and batch.data_ptr() != frames.data_ptr()
    reordered = collate_samples([{"video": video_from_frames(frames[i])} for i in (1, 0, 2, 3)])["video"]
    assert torch.equal(reordered, torch.stack([video_from_frames(frames[i]) for i in (1, 0, 2, 3)]))
    assert reordered.data_ptr() != frames.data_ptr()


def test_replacement_of_a_bad_file_is_deterministic(tmp_path, make_video):
    videos = [make_video(f"v{i}.mp4", num_frames=8, size=(32, 32)) for i in range(6)]
    manifest = _lines(tmp_path / "m.txt", "missing.mp4", *[p.name for p in videos])
    dataset = ClipDataset(str(manifest), ClipSampler(num_frames=2, frame_step=1), seed=2)
    replacements = set()
    for epoch in range(6):
        first, again = dataset[(epoch, 0)], dataset[(epoch, 0)]
        assert first["errors"] == again["errors"] == [(str(tmp_path / "missing.mp4"), "missing", first["errors"][0][2])]
        assert first["path"] == again["path"] and torch.equal(first["video"], again["video"])
        assert (first["index"], first["label"]) == (0, -1)  # the slot keeps its index
        replacements.add(first["path"])
    assert len(replacements) > 1  # drawn from the sample's generator, not a fixed fallback


# ---------------------------------------------------------------------------------------------- sampler
def _fake_dataset(tmp_path: Path, sizes: list[int], weights=None) -> ClipDataset:
    """A ClipDataset over manifests of (not decoded) paths: enough for the sampler."""
    manifests = [
        str(_lines(tmp_path / f"m{s}.txt", *[f"src{s}_{i}.mp4" for i in range(n)])) for s, n in enumerate(sizes)
    ]
    return ClipDataset(manifests, ClipSampler(num_frames=2, frame_step=1), weights=weights)


def test_weighted_mixing_proportions(tmp_path):
    dataset = _fake_dataset(tmp_path, [3, 10], weights=[3.0, 1.0])
    assert dataset.source_weights == [0.75, 0.25] and list(np.bincount(dataset.source_ids)) == [3, 10]
    sampler = EpochSampler(dataset, samples_per_epoch=200, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = [index for _, index in sampler]
        sources = Counter(int(dataset.source_ids[i]) for i in indices)
        assert sources == {0: 150, 1: 50}
        # each source walks through its items in cycles: every item equally often
        assert set(Counter(i for i in indices if i < 3).values()) == {50}
        assert set(Counter(i for i in indices if i >= 3).values()) == {5}
    # a small epoch over a large source: no repeats until every item has been used
    small = EpochSampler(_fake_dataset(tmp_path / "s", [10]), samples_per_epoch=4, seed=1)
    seen = []
    for epoch in range(2):
        small.set_epoch(epoch)
        seen += [index for _, index in small]
    assert len(set(seen)) == 8
    # without shuffle, equal weights interleave the sources
    even = EpochSampler(_fake_dataset(tmp_path / "e", [2, 2], weights=[1, 1]), samples_per_epoch=4, shuffle=False)
    assert [index for _, index in even] == [0, 2, 1, 3]


def test_sampler_is_deterministic_and_reshuffles_each_epoch(tmp_path):
    dataset = _fake_dataset(tmp_path, [20])
    a, b = EpochSampler(dataset, seed=1), EpochSampler(dataset, seed=1)
    assert list(a) == list(b) and sorted(i for _, i in a) == list(range(20))
    a.set_epoch(1)
    assert list(a) != list(b) and all(epoch == 1 for epoch, _ in a)
    assert list(EpochSampler(dataset, seed=2)) != list(b)
    assert [i for _, i in EpochSampler(dataset, shuffle=False)] == list(range(20))


def test_distributed_partition(tmp_path):
    dataset = _fake_dataset(tmp_path, [6, 6], weights=[1, 2])
    for world_size, total in [(4, 12), (5, 12), (3, 7)]:
        ranks = [
            EpochSampler(dataset, samples_per_epoch=total, seed=9, rank=r, world_size=world_size)
            for r in range(world_size)
        ]
        for r in ranks:
            r.set_epoch(4)
        lists = [[index for _, index in r] for r in ranks]
        assert all(len(items) == len(ranks[0]) == -(-total // world_size) for items in lists)  # equal counts
        epoch = list(ranks[0].epoch_indices(4))
        padded = np.resize(epoch, len(ranks[0]) * world_size).tolist()  # wrapped to equal counts
        assert sorted(i for items in lists for i in items) == sorted(padded)
        if total % world_size == 0:
            # each rank gets different samples of the epoch, all of them together
            positions = [list(range(r, total, world_size)) for r in range(world_size)]
            assert [[epoch[p] for p in pos] for pos in positions] == lists
        else:
            assert set().union(*map(set, lists)) == set(epoch)  # padding only repeats


def test_sampler_resume_continues_exactly(tmp_path):
    dataset = _fake_dataset(tmp_path, [9, 4], weights=[1, 1])
    full = EpochSampler(dataset, samples_per_epoch=30, seed=4, rank=1, world_size=2)
    full.set_epoch(6)
    expected = list(full)
    resumed = EpochSampler(dataset, samples_per_epoch=30, seed=4, rank=1, world_size=2)
    resumed.set_epoch(6)
    resumed.start_index = 10
    assert list(resumed) == expected[10:]
    assert resumed.start_index == 0 and list(resumed) == expected  # one-shot
    assert len(resumed) == 15


def test_collate_samples():
    samples = [
        {"video": torch.zeros(3, 2, 4, 4, dtype=torch.uint8), "label": i, "end_s": 0.5 * i, "video_id": f"v{i}",
         "errors": [("p", "missing", "gone")] * i}
        for i in range(3)
    ]
    batch = collate_samples(samples)
    assert batch["video"].shape == (3, 3, 2, 4, 4) and batch["video"].dtype == torch.uint8
    assert batch["label"].tolist() == [0, 1, 2] and batch["label"].dtype == torch.long
    assert batch["end_s"].tolist() == [0.0, 0.5, 1.0]
    assert batch["video_id"] == ["v0", "v1", "v2"] and len(batch["errors"]) == 3


def test_collate_keeps_the_decoders_channels_last_layout():
    frames = [torch.randint(0, 256, (2, 4, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(3)]
    planar = torch.stack([f.permute(3, 0, 1, 2).contiguous() for f in frames])  # (B, C, T, H, W)
    batch = collate_samples([{"video": video_from_frames(f)} for f in frames])["video"]
    assert torch.equal(batch, planar) and batch.is_contiguous(memory_format=torch.channels_last_3d)
    # one planar clip among them: still the same values, stacked the ordinary way
    mixed = collate_samples([{"video": video_from_frames(frames[0])}, {"video": planar[1]}, {"video": planar[2]}])
    assert torch.equal(mixed["video"], planar) and mixed["video"].is_contiguous()


# ---------------------------------------------------------------------------------------------- anticipation
ANTICIPATION_CSV = (
    "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb,verb_class,noun,noun_class\n"
    "P01_01_0,P01,P01_01,00:00:04.00,00:00:05.00,open,1,door,2\n"
    "P01_01_1,P01,P01_01,00:00:01.50,00:00:02.00,take,0,cup,1\n"
    "P01_01_2,P01,P01_01,00:00:04.53,00:00:05.10,open,1,cup,1\n"
    "P01_01_3,P01,P01_01,00:00:00.50,00:00:01.10,take,0,door,2\n"
)


@pytest.fixture
def epic(tmp_path, make_video):
    """An EPIC-layout folder: one 6 s video at 16 fps (P01/videos/P01_01.MP4) and its annotations."""
    video = make_video(tmp_path / "videos" / "P01" / "videos" / "P01_01.MP4", num_frames=96, fps=16.0, size=(32, 32))
    csv_path = tmp_path / "val.csv"
    csv_path.write_text(ANTICIPATION_CSV)
    train = tmp_path / "train.csv"
    train.write_text(
        "video_id,start_timestamp,stop_timestamp,verb_class,noun_class\nP01_01,1.0,2.0,1,2\nP01_01,3.0,4.0,0,1\n"
    )
    vocabulary = ActionVocabulary.from_annotations(read_annotations(train), eval_segments=read_annotations(csv_path))
    return {"video": video, "csv": csv_path, "videos_dir": tmp_path / "videos", "vocabulary": vocabulary}


def test_anticipation_window_ends_before_the_action(epic):
    dataset = AnticipationDataset(
        str(epic["csv"]), str(epic["videos_dir"]), epic["vocabulary"], num_frames=8, fps=8.0, anticipation_s=1.0
    )
    assert len(dataset) == 4
    item = dataset[0]
    # start 4.0 s - 1.0 s = 3.0 s = frame 48 at 16 fps; 8 frames at 8 fps step back 2 source frames each
    assert _indices(item["video"]) == [34, 36, 38, 40, 42, 44, 46, 48]
    assert item["end_s"] == pytest.approx(3.0) and item["start_s"] == pytest.approx(4.0)
    assert (item["verb"], item["noun"], item["video_id"], item["errors"]) == (1, 2, "P01_01", [])
    assert item["action"] == item["label"] == epic["vocabulary"].action_id(1, 2) >= 0

    # near the start: 1.5 s - 1 s = 0.5 s = frame 8; frames before the video repeat frame 0
    early = dataset[1]
    assert _indices(early["video"]) == [0, 0, 0, 0, 2, 4, 6, 8] and early["end_s"] == pytest.approx(0.5)
    # between frames: 3.53 s * 16 = 56.48 -> the last frame at or before is 56 (3.5 s)
    between = dataset[2]
    assert _indices(between["video"])[-1] == 56 and between["end_s"] == pytest.approx(3.5)
    assert between["action"] == -1  # (open, cup) never occurs in training: kept, labelled -1
    # the action starts before anticipation_s has passed: the context is the first frame only
    assert _indices(dataset[3]["video"]) == [0] * 8 and dataset[3]["end_s"] == 0.0

    for index in range(len(dataset)):
        item = dataset[index]
        assert item["end_s"] <= max(item["start_s"] - 1.0, 0.0) + 1e-6
        assert item["end_s"] > item["start_s"] - 1.0 - 1 / 16  # the LAST frame at or before

    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_samples)))
    assert batch["video"].shape == (4, 3, 8, 32, 32)
    assert batch["action"].tolist() == [dataset[i]["action"] for i in range(4)]
    assert batch["end_s"].tolist() == pytest.approx([3.0, 0.5, 3.5, 0.0])


def test_anticipation_with_frame_numbers_and_eval_transform(epic, tmp_path):
    frames_csv = tmp_path / "frames.csv"
    frames_csv.write_text("video_id,start_frame,stop_frame,verb_class,noun_class\nP01_01,64,70,1,2\n")
    dataset = AnticipationDataset(
        str(frames_csv), str(epic["videos_dir"]), epic["vocabulary"], num_frames=4, fps=4.0,
        transform=ResizeCenterCropVideo(16),
    )
    item = dataset[0]
    assert item["start_s"] == pytest.approx(4.0)  # frame 64 at 16 fps
    assert item["video"].shape == (3, 4, 16, 16)
    assert dataset.context_indices(0).tolist() == [36, 40, 44, 48]
    assert _indices(item["video"]) == [36, 40, 44, 48]
    assert torch.equal(dataset[0]["video"], item["video"]) and torch.equal(dataset[(5, 0)]["video"], item["video"])
    # the probe's DataLoader fetches whole batches: clips resized into one batch, the same values
    items = dataset.__getitems__([0, (5, 0)])
    batch = collate_samples(items)
    assert batch["video"].data_ptr() == items[0]["video"].data_ptr()
    assert torch.equal(batch["video"], torch.stack([item["video"], item["video"]]))
    assert batch["end_s"].tolist() == [item["end_s"]] * 2 and batch["index"].tolist() == [0, 0]


def test_anticipation_action_after_the_video_end_is_an_error(epic, tmp_path):
    """A clip would be the video's last frames whatever the action: refused, naming the row and the video."""
    csv_path = tmp_path / "late.csv"
    csv_path.write_text(ANTICIPATION_CSV + "P01_01_9,P01,P01_01,00:10:00.00,00:10:01.00,open,1,door,2\n")
    dataset = AnticipationDataset(str(csv_path), str(epic["videos_dir"]), epic["vocabulary"], num_frames=4, fps=4.0)
    assert _indices(dataset[0]["video"])[-1] == 48  # the rows inside the video are read as before
    with pytest.raises(ValueError, match=r"late.csv:6: action P01_01_9 starts at 600.000 s, after the end of video "
                                         r"P01_01 .*P01_01.MP4: 96 frames at 16.000 fps = 6.000 s"):
        dataset[4]
    # within one frame of the end (rounding in the annotation) is still read: the last frames are right
    csv_path.write_text(ANTICIPATION_CSV + "P01_01_9,P01,P01_01,00:00:06.05,00:00:06.10,open,1,door,2\n")
    late = AnticipationDataset(str(csv_path), str(epic["videos_dir"]), epic["vocabulary"], num_frames=4, fps=4.0)
    assert late.context_indices(4).tolist() == [68, 72, 76, 80]  # ends at 5.05 s: frame 80


def test_anticipation_places_contexts_in_a_variable_frame_rate_video_by_time(tmp_path):
    """Slow first part (frames 0-20, 200 ms apart: 0-4 s), then fast (33 ms apart). At the average rate
    (8.6 fps) frame 17 would be at 2.0 s; it is at 3.4 s, after an action at 3.0 s. Placed by the frames'
    real times, every context ends at or before its action's start minus the gap."""
    import av
    from fractions import Fraction

    path = tmp_path / "videos" / "V01.mp4"
    path.parent.mkdir()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i in range(40):  # frame i shows gray level 6 i
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 6 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
            pts += 200 if i < 20 else 33
        container.mux(stream.encode())
    csv_path = tmp_path / "val.csv"
    csv_path.write_text("video_id,start_timestamp,stop_timestamp,verb_class,noun_class\nV01,3.0,3.5,0,0\n"
                        "V01,4.5,4.6,0,0\n")
    vocabulary = ActionVocabulary.from_annotations(read_annotations(csv_path))
    slow = AnticipationDataset(str(csv_path), str(tmp_path / "videos"), vocabulary, num_frames=4, fps=2.5)
    item = slow[0]  # ends at 2.0 s (frame 10), back in steps of 0.4 s
    assert slow.context_indices(0).tolist() == [4, 6, 8, 10]
    levels = item["video"].float().mean(dim=(0, 2, 3))  # (T,) the frames' gray levels
    assert torch.allclose(levels, torch.tensor([24.0, 36.0, 48.0, 60.0]), atol=3)
    assert item["end_s"] == pytest.approx(2.0, abs=1e-6) and item["end_s"] <= 3.0 - 1.0
    fast = AnticipationDataset(str(csv_path), str(tmp_path / "videos"), vocabulary, num_frames=4, fps=10.0,
                               anticipation_s=0.2)
    # ends at 4.3 s: frame 29 starts at 4.297 s; then 100 ms back each: 4.198 (26), 4.099 (23), 4.0 (20)
    assert fast.context_indices(1).tolist() == [20, 23, 26, 29]
    assert fast[1]["end_s"] == pytest.approx(4.297, abs=1e-6)


def test_anticipation_missing_videos_are_an_error(epic, tmp_path):
    csv_path = tmp_path / "more.csv"
    csv_path.write_text(
        ANTICIPATION_CSV + "x,P02,P02_07,00:00:01.00,00:00:02.00,a,0,b,1\nx,,lonely,00:00:01.00,00:00:02.00,a,0,b,1\n"
    )
    with pytest.raises(FileNotFoundError, match=r"2 referenced video\(s\) not found.*P02_07, lonely"):
        AnticipationDataset(str(csv_path), str(epic["videos_dir"]), epic["vocabulary"])


def test_a_rank_takes_its_own_counts_from_a_checkpoint_and_no_one_elses():
    """Checkpoints keep every rank's data-error counts; a rank the checkpoint has no entry for (written
    before that, or by fewer processes) starts from nothing: taking rank 0's would count them twice."""
    from worldmodel.data.datamodule import DataErrorCallback

    rank0 = {"counts": {"empty": 3}, "num_ok": 10, "csv_rows": 3, "csv_rank": 0}
    rank1 = {"counts": {"corrupt": 1}, "num_ok": 9, "csv_rows": 1, "csv_rank": 1}
    assert DataErrorCallback._own(rank0, [rank0, rank1], 1) == rank1
    assert DataErrorCallback._own(rank0, [rank0, rank1], 0) == rank0
    assert DataErrorCallback._own(rank0, [rank0, rank1], 3) == {}  # resumed on more processes
    assert DataErrorCallback._own(rank0, None, 0) == rank0 and DataErrorCallback._own(rank0, None, 1) == {}  # older
    merged = DataErrorTracker.merged([rank0, rank1], DataErrorTracker(None))
    assert merged.num_failures == 4 and merged.num_ok == 19 and dict(merged.counts) == {"empty": 3, "corrupt": 1}
