"""`worldmodel data check`: one row per video, totals by reason, CSV, exit code."""

from __future__ import annotations

import csv

from conftest import write_vfr_video
from worldmodel.data.check import CHECK_COLUMNS, check_videos, format_check_table, run_check


def make_corpus(make_video, tmp_path):
    """Two good videos and three bad ones (truncated, zero bytes, text), listed in a manifest."""
    videos = tmp_path / "videos"
    good_a = make_video(videos / "a.mp4", num_frames=24, fps=8.0, size=(48, 64))
    make_video(videos / "b.mp4", num_frames=16, fps=4.0)
    data = good_a.read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) // 2])
    (videos / "zero.mp4").touch()
    (videos / "notes.mp4").write_text("not a video\n" * 30)
    manifest = tmp_path / "manifest.txt"
    names = ["a.mp4", "b.mp4", "cut.mp4", "zero.mp4", "notes.mp4", "gone.mp4"]
    manifest.write_text("".join(f"videos/{name}\n" for name in names))
    return manifest, [str(videos / name) for name in names]


def test_check_rows(make_video, tmp_path):
    _, paths = make_corpus(make_video, tmp_path)
    rows = check_videos(paths)
    assert [row["path"] for row in rows] == paths
    assert [(row["status"], row["reason"]) for row in rows] == [
        ("ok", ""),
        ("ok", ""),
        ("bad", "truncated"),
        ("bad", "empty"),
        ("bad", "not_video"),
        ("bad", "missing"),
    ]
    a, b = rows[0], rows[1]
    assert (a["frames"], a["fps"], a["width"], a["height"], a["duration_s"]) == (24, 8.0, 64, 48, 3.0)
    assert (b["frames"], b["fps"], b["duration_s"]) == (16, 4.0, 4.0)
    assert a["codec"] == "h264" and a["pix_fmt"] == "yuv420p"
    assert all(row["detail"] for row in rows[2:])
    assert all(set(row) == set(CHECK_COLUMNS) for row in rows)


def test_check_with_worker_processes_gives_the_same_rows(make_video, tmp_path):
    _, paths = make_corpus(make_video, tmp_path)
    assert check_videos(paths, workers=2) == check_videos(paths, workers=0)


def test_table_lists_every_video_and_totals_by_reason(make_video, tmp_path):
    _, paths = make_corpus(make_video, tmp_path)
    table = format_check_table(check_videos(paths))
    lines = table.splitlines()
    assert lines[0].split() == ["status", "reason", "frames", "fps", "size", "duration_s", "path"]
    for path in paths:
        assert any(line.endswith(path) for line in lines)
    assert "64x48" in table
    assert lines[-1] == "total 6 videos: ok 2 (0.00 h), bad 4 (empty 1, missing 1, not_video 1, truncated 1)"
    assert f"{paths[2]}: truncated:" in table  # details of the bad ones


def test_run_check_exit_code_and_csv(make_video, tmp_path, capsys):
    manifest, paths = make_corpus(make_video, tmp_path)
    out_csv = tmp_path / "report" / "check.csv"
    assert run_check(str(manifest), out_csv=str(out_csv)) == 1
    printed = capsys.readouterr().out
    assert "bad 4" in printed
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows] == ["ok", "ok", "bad", "bad", "bad", "bad"]
    assert rows[0]["frames"] == "24" and rows[3]["reason"] == "empty"

    good = tmp_path / "good.txt"
    good.write_text(f"{paths[0]}\n{paths[1]}\n")
    assert run_check(str(good)) == 0
    assert "total 2 videos: ok 2" in capsys.readouterr().out


def test_run_check_on_a_folder_and_on_a_missing_manifest(make_video, tmp_path, capsys):
    make_video(tmp_path / "dir" / "x.mp4", num_frames=8)
    make_video(tmp_path / "dir" / "sub" / "y.mp4", num_frames=8)
    assert run_check(str(tmp_path / "dir")) == 0
    assert "total 2 videos: ok 2" in capsys.readouterr().out
    assert run_check(str(tmp_path / "no_such_manifest.txt")) == 1
    assert "no_such_manifest.txt" in capsys.readouterr().err


def test_check_marks_variable_frame_rate_videos(make_video, tmp_path):
    constant = make_video(tmp_path / "c.mp4", num_frames=16, fps=8.0)
    variable = write_vfr_video(tmp_path / "v.mp4")
    rows = check_videos([str(constant), str(variable)])
    assert [row["frame_rate"] for row in rows] == ["constant", "variable"]
    assert rows[1]["status"] == "ok" and rows[1]["duration_s"] > 2.3  # frame 39 starts at 2.3 s
    table = format_check_table(rows)
    assert f"{rows[1]['fps']} vfr" in table and f"{rows[0]['fps']} vfr" not in table
    assert "variable frame rate: 1 of the ok videos" in table


def _write_with_pyav(path, codec, frames=20):
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), 10 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_a_folder_scan_finds_every_video_kind_and_says_what_it_left_out(make_video, tmp_path, capsys):
    """Phone (.3gp), Flash (.flv) and Windows Media (.wmv) files are videos to a folder scan; an intact
    file decord cannot read is "unsupported" (with the conversion), not "corrupt"; other files are
    counted, not silently dropped."""
    folder = tmp_path / "mixed"
    make_video(folder / "a.mp4", num_frames=8)
    _write_with_pyav(folder / "phone.3gp", "h264")
    _write_with_pyav(folder / "old.flv", "flv")
    _write_with_pyav(folder / "win.wmv", "mpeg4")  # MPEG-4 part 2 in ASF: decord 0.6 cannot count its frames
    (folder / "notes.txt").write_text("shot list\n")
    (folder / "LICENSE").write_text("cc-by\n")
    assert run_check(str(folder)) == 1
    out = capsys.readouterr().out
    assert "total 4 videos: ok 3" in out and "bad 1 (unsupported 1)" in out
    assert "win.wmv: unsupported: decord cannot read this file's mpeg4 video" in out and "ffmpeg -i IN" in out
    assert "not listed: 2 other file(s) in the folder without a video extension" in out
    assert ".txt 1" in out and "(no extension) 1" in out
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "objects" / "ab12").write_text("x")  # a dataset under version control: not counted
    assert run_check(str(folder)) == 1 and "not listed: 2 other file(s)" in capsys.readouterr().out
    # macOS's "._" metadata beside a copied video, and videos in hidden folders: skipped, not failures
    (folder / "._a.mp4").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    make_video(folder / ".cache" / "thumb.mp4", num_frames=8)
    assert run_check(str(folder)) == 1
    out = capsys.readouterr().out
    assert "total 4 videos: ok 3" in out and "._a.mp4" not in out and "thumb.mp4" not in out
    only_other = tmp_path / "stills"
    only_other.mkdir()
    (only_other / "frame_0001.png").write_bytes(b"\x89PNG")
    assert run_check(str(only_other)) == 1
    said = capsys.readouterr().err
    assert "no video files found" in said and "not listed: 1 other file(s) in the folder without a video extension (.png 1)" in said


def test_videos_shorter_than_the_runs_clip_are_marked(make_video, tmp_path, capsys):
    from worldmodel.cli import main

    long = make_video(tmp_path / "v" / "long.mp4", num_frames=24, fps=8.0)
    short = make_video(tmp_path / "v" / "short.mp4", num_frames=10, fps=8.0)
    # 8 frames, every 2nd: the clip spans 15 frames
    assert main(["data", "check", str(tmp_path / "v"), "--clip-frames", "8", "--clip-step", "2",
                 "--csv", str(tmp_path / "rows.csv")]) == 0  # short is usable: not a failure
    out = capsys.readouterr().out
    assert "shorter than one clip: 1 of the ok videos" in out
    short_line = next(line for line in out.splitlines() if line.endswith("short.mp4"))
    assert short_line.split()[:2] == ["ok", "short"]
    with open(tmp_path / "rows.csv") as f:
        fits = {row["path"]: row["clip_fits"] for row in csv.DictReader(f)}
    assert fits == {str(long): "yes", str(short): "no"}
    # at 2 fps over 8 fps video the clip spans 29 frames: both are short; without a clip nothing is said
    assert main(["data", "check", str(tmp_path / "v"), "--clip-frames", "8", "--clip-fps", "2"]) == 0
    assert "shorter than one clip: 2 of the ok videos" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "v")]) == 0
    assert "shorter than one clip" not in capsys.readouterr().out
    for bad in (["--clip-frames", "8"], ["--clip-step", "2"], ["--clip-frames", "8", "--clip-step", "2", "--clip-fps", "4"]):
        assert main(["data", "check", str(tmp_path / "v"), *bad]) == 2
        assert "exactly one of --clip-fps, --clip-step, --clip-duration" in capsys.readouterr().err


def test_videos_listed_more_than_once_are_reported(make_video, tmp_path, capsys):
    """The same file under two spellings (absolute, relative with ..) and a link to it count as one video
    listed three times: said once, with the count; the file is checked and counted once (one row per
    video), and the exit code stays 0."""
    manifest, paths = make_corpus(make_video, tmp_path)
    (tmp_path / "link.mp4").symlink_to(paths[0])
    listed = tmp_path / "twice.txt"
    listed.write_text(f"{paths[0]}\nvideos/../videos/a.mp4\nlink.mp4\n{paths[1]}\n")
    assert run_check(str(listed)) == 0
    printed = capsys.readouterr().out
    assert "total 2 videos: ok 2" in printed  # videos, not manifest lines
    assert f"listed more than once: 1 video(s), 2 extra entries (e.g. {paths[0]} x3)" in printed
    assert run_check(str(manifest)) == 1 and "listed more than once" not in capsys.readouterr().out
