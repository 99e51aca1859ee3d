"""`worldmodel data check MANIFEST`: find the videos a run would trip over, before the run.

Each video is opened and decoded at its first, middle and last frame (the last one forces the
decoder through the final group of pictures, where truncated files fail). One row per video:

    path, status ("ok" / "bad"), reason ("" or a VideoError reason), detail, frames, fps (the average
    rate), width, height, duration_s, codec, pix_fmt, frame_rate ("constant" / "variable"),
    clip_fits ("yes" / "no" when a clip is given, see below; else "")

Given the clip a run will sample (`--clip-frames` with `--clip-fps`, `--clip-step` or
`--clip-duration`: a `ClipSampler`), a usable video shorter than one clip is marked ("short" in the
table): pretraining uses it with its last frame repeated (``short_policy="repeat_last"``) or counts
it as a failure (``"skip"``).

A variable frame rate video is usable: clips are placed by its frames' real times (see
`worldmodel.data.video`); the table marks its rate with "vfr" and the totals count such videos.

`format_check_table` prints them with totals (ok, bad by reason); `run_check` is the command.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from worldmodel.data.datasets import read_manifest
from worldmodel.data.video import ClipSampler, VideoError, read_frames, read_video_info

CHECK_COLUMNS: tuple[str, ...] = (
    "path", "status", "reason", "detail", "frames", "fps", "width", "height", "duration_s", "codec", "pix_fmt",
    "frame_rate", "clip_fits",
)


def check_video(path: str, sampler: ClipSampler | None = None) -> dict:
    """One row of the check table for one video (never raises for a bad file); with `sampler`, whether
    one of its clips fits in the video."""
    row = {column: "" for column in CHECK_COLUMNS}
    row["path"] = str(path)
    try:
        info = read_video_info(path)
        read_frames(path, sorted({0, info.num_frames // 2, info.num_frames - 1}))
    except VideoError as err:
        row.update(status="bad", reason=err.reason, detail=err.detail)
        return row
    row.update(
        status="ok",
        frames=info.num_frames,
        fps=round(info.fps, 3),
        width=info.width,
        height=info.height,
        duration_s=round(info.duration_s, 3),
        frame_rate="variable" if info.variable_rate else "constant",
        clip_fits="" if sampler is None else ("yes" if sampler.fits(info) else "no"),
    )
    row["codec"], row["pix_fmt"] = _stream_format(path)
    return row


def _stream_format(path: str) -> tuple[str, str]:
    """Codec and pixel format names as FFmpeg reports them ('' when PyAV cannot tell)."""
    try:
        import av

        with av.open(path) as container:
            ctx = container.streams.video[0].codec_context
            return str(ctx.name), str(ctx.pix_fmt)
    except Exception:
        return "", ""


def check_videos(paths: list[str], workers: int = 0, sampler: ClipSampler | None = None) -> list[dict]:
    """Check every path (in `workers` processes; 0 = this process); rows in the order of `paths`."""
    paths = [str(p) for p in paths]
    if workers <= 0 or len(paths) < 2:
        return [check_video(p, sampler) for p in paths]
    with ProcessPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        chunk = max(1, len(paths) // (8 * workers))
        return list(pool.map(check_video, paths, [sampler] * len(paths), chunksize=chunk))


def format_check_table(rows: list[dict]) -> str:
    """A fixed-width table, one line per video, then the details of the bad ones and the totals."""
    header = ("status", "reason", "frames", "fps", "size", "duration_s", "path")
    lines = []
    for row in rows:
        size = f"{row['width']}x{row['height']}" if row["status"] == "ok" else ""
        fps = f"{row['fps']} vfr" if row["frame_rate"] == "variable" else str(row["fps"])
        reason = "short" if row.get("clip_fits") == "no" else row["reason"]
        cells = (row["status"], reason, row["frames"], fps, size, row["duration_s"], row["path"])
        lines.append(tuple(str(cell) for cell in cells))
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]

    bad = [row for row in rows if row["status"] != "ok"]
    if bad:
        out.append("")
        out.append("problems:")
        out += [f"  {row['path']}: {row['reason']}: {row['detail']}" for row in bad]
    ok = [row for row in rows if row["status"] == "ok"]
    hours = sum(float(row["duration_s"]) for row in ok) / 3600
    by_reason = Counter(row["reason"] for row in bad)
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(by_reason.items()))
    out.append("")
    totals = f"total {len(rows)} videos: ok {len(ok)} ({hours:.2f} h), bad {len(bad)}"
    out.append(totals + (f" ({reasons})" if bad else ""))
    variable = sum(row["frame_rate"] == "variable" for row in ok)
    if variable:
        out.append(f"variable frame rate: {variable} of the ok videos (\"vfr\"; clips are placed by their frames' times)")
    short = sum(row.get("clip_fits") == "no" for row in ok)
    if short:
        out.append(f"shorter than one clip: {short} of the ok videos (\"short\"; pretraining repeats their last frame "
                   "with data.short_policy repeat_last, or skips them as failures with skip)")  # fmt: skip
    return "\n".join(out)


def distinct_videos(paths: list[str]) -> dict[str, int]:
    """The distinct files of a manifest (by real path: symbolic links and relative spellings resolved), in
    manifest order: {first spelling: number of entries}."""
    counts: Counter = Counter()
    first: dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(path)
        counts[real] += 1
        first.setdefault(real, path)
    return {first[real]: n for real, n in counts.items()}


def write_check_csv(rows: list[dict], out_csv: str | os.PathLike) -> None:
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CHECK_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def run_check(manifest_path: str, out_csv: str | None = None, workers: int = 0, sampler: ClipSampler | None = None) -> int:
    """Check every video of a manifest (file or folder); print the table; 0 if all are ok, else 1 (a
    video shorter than `sampler`'s clip is ok: usable, and marked)."""
    others: Counter = Counter()  # a folder: what its scan left out, so that no video kind disappears unseen

    def left_out() -> str:
        kinds = ", ".join(f"{ext or '(no extension)'} {n}" for ext, n in others.most_common(8))
        return (f"not listed: {sum(others.values())} other file(s) in the folder without a video extension "
                f"({kinds}); rename a video with an unusual extension, or list it in a manifest file")  # fmt: skip

    try:
        paths = [entry.path for entry in read_manifest(manifest_path, left_out=others)]
    except (OSError, ValueError) as err:  # no such manifest, an empty folder, a malformed line
        print(f"error: {err}" + (f"\n{left_out()}" if others else ""), file=sys.stderr)
        return 1
    # one row per video: a file the manifest lists more than once (by its real path) is checked once, under
    # its first spelling, and counted once in the totals; the repeats are reported below the table
    entries = distinct_videos(paths)
    rows = check_videos(list(entries), workers=workers, sampler=sampler)
    print(format_check_table(rows))
    repeated = {path: n for path, n in entries.items() if n > 1}
    if repeated:
        extra = sum(n - 1 for n in repeated.values())
        worst = max(repeated, key=repeated.get)
        print(f"listed more than once: {len(repeated)} video(s), {extra} extra entr{'y' if extra == 1 else 'ies'} "
              f"(e.g. {worst} x{repeated[worst]}); pretraining samples every entry, so these videos are drawn "
              "more often (give manifests weights instead, to mix sources)")  # fmt: skip
    if others:
        print(left_out())
    if out_csv:
        write_check_csv(rows, out_csv)
        print(f"wrote {out_csv}")
    return 0 if all(row["status"] == "ok" for row in rows) else 1
