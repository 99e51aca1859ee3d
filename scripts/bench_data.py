"""Throughput of the pretraining data loader next to the raw decord decode rate it is bounded by.

For 16-frame clips (sampled at 4 fps, as in V-JEPA 2 pretraining), random resized crops of 112 and 224
pixels and 0, 1 and 2 DataLoader workers, it measures

- loader: clips/s out of `torch.utils.data.DataLoader` over `worldmodel.data.datasets.ClipDataset`
  (decode, crop, flip, resize, batch, inter-process transfer; the DataLoader fetches a batch at a
  time through `ClipDataset.__getitems__`, which resizes every clip straight into its slot of the
  batch, in shared memory inside a worker, so nothing is stacked or copied after the resize), and
- raw: clips/s of decord alone decoding the same frames of the same clips (open the file, get_batch
  the clip's indices, and take decord's buffer over as a tensor through DLPack, without a copy, as
  the loader does), in as many processes as the loader has workers (in this process for 0 workers,
  where the loader then decodes too), one decoding thread each: the limit the loader can reach.

Both sides decode exactly the same --clips clips in every measurement (the loader's first keys), and
each is timed from its start: the DataLoader from creating its iterator (forking its workers), the
raw decoders from forking as many processes, each given the batches the DataLoader gives the worker
of the same rank. Loader and raw alternate over --rounds rounds, the order swapped every round, so
that a drift in the load from other processes on a shared machine hits both alike; each rate is the
clips over the summed time of all rounds. `paired_item_vs_raw` (0 workers) times every clip both
ways back to back in one process: raw decode time / dataset item time, the least noisy measure of
what the loader adds per clip (sampling, crop, resize, flip). Prints one JSON object (also written
to --out). Target: loader >= 90% of raw.

Wall-clock rates on a shared machine move by several per cent between runs, so every measurement
also records the CPU time both sides spent (this process and its joined workers, `os.times`):
`raw_vs_loader_cpu` is raw decode CPU time over loader CPU time for the same clips, the share of the
loader's work that is decoding. It does not depend on how fast the machine happens to be that minute.

    python scripts/bench_data.py                       # generates 16 videos of 10 s, 256x256, 30 fps
    python scripts/bench_data.py --videos-dir DIR      # your own videos instead
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.dlpack import from_dlpack

from worldmodel.data.datasets import ClipDataset, collate_samples
from worldmodel.data.transforms import RandomResizedCropVideo
from worldmodel.data.video import VIDEO_EXTENSIONS, ClipSampler, read_video_info

SEED = 0


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for (joined workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def raw_decode(path: str, indices: np.ndarray, width: int, height: int) -> torch.Tensor:
    """decord alone: open, decode the clip's distinct frames, take the buffer over (no copy)."""
    import decord

    batch = decord.VideoReader(path, width=width, height=height, num_threads=1).get_batch(np.unique(indices))
    return from_dlpack(batch.to_dlpack())


def synthetic_frames(index: int, num_frames: int, size: int) -> np.ndarray:
    """Camera-like content: a static texture panning, two moving discs, a lighting drift. (T, H, W, 3)."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(40, 216, (size // 16 + 2, size // 16 + 2, 3)).astype(np.float32)
    texture = np.kron(coarse, np.ones((16, 16, 1), np.float32))  # blocky, then smoothed by a box filter
    texture = (texture + np.roll(texture, 8, 0) + np.roll(texture, 8, 1) + np.roll(texture, (8, 8), (0, 1))) / 4
    texture += rng.normal(0, 6, texture.shape).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        shift = int(t * 0.7) % 16
        frame = texture[shift : shift + size, shift // 2 : shift // 2 + size].copy()
        for k, colour in enumerate(((230, 60, 40), (40, 90, 230))):
            cx = size / 2 + size / 3 * np.sin(t / (20 + 7 * k) + index + k)
            cy = size / 2 + size / 3 * np.cos(t / (25 + 5 * k) + index)
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (size / 10) ** 2
            frame[disc] = colour
        frame *= 0.85 + 0.15 * np.sin(t / 40 + index)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _write_one(args: tuple[int, int, int, float, str]) -> str:
    """H.264 as cameras and websites deliver it: yuv420p, B-frames, a keyframe every 2 s."""
    import av

    index, num_frames, size, fps, path = args
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        keyint = max(1, round(2 * fps))
        stream.options = {"crf": "20", "preset": "veryfast", "x264-params": f"keyint={keyint}:min-keyint={keyint}"}
        for frame in synthetic_frames(index, num_frames, size):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def generate_videos(out_dir: Path, num_videos: int, seconds: float, size: int, fps: float, jobs: int) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    work = [(i, int(round(seconds * fps)), size, fps, str(out_dir / f"bench_{i:03d}.mp4")) for i in range(num_videos)]
    with mp.get_context("fork").Pool(jobs) as pool:
        return pool.map(_write_one, work)


def loader_rate(manifest: str, sampler: ClipSampler, crop: int, workers: int, keys: list, batch_size: int,
                decode_size) -> tuple[float, float]:
    """(clips/s, CPU s) of the DataLoader over exactly `keys`, timed from creating the iterator
    (worker start-up included, as the raw side includes starting its processes) to the last batch;
    the CPU time includes the workers, which have been joined once the last batch is out."""
    transform = RandomResizedCropVideo(crop)
    dataset = ClipDataset([manifest], sampler, transform=transform, seed=SEED, decode_size=decode_size)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=keys, num_workers=workers,
                        collate_fn=collate_samples, prefetch_factor=2 if workers else None)
    start, cpu_start, clips = time.perf_counter(), cpu_seconds(), 0
    iterator = iter(loader)
    for batch in iterator:
        clips += batch["video"].shape[0]
    elapsed = time.perf_counter() - start
    del iterator, batch  # workers joined (their CPU time counted) before reading the clock
    assert clips == len(keys)
    return clips / elapsed, cpu_seconds() - cpu_start


def paired_overhead(manifest: str, sampler: ClipSampler, crop: int, keys: list, jobs: list, decode_size) -> float:
    """Raw decode time / dataset item time, summed over the same clips timed alternately in this process.

    Immune to load from other processes drifting between measurements (each clip is timed both ways
    back to back); includes everything the loader adds in a worker except collation and transfer.
    """
    transform = RandomResizedCropVideo(crop)
    dataset = ClipDataset([manifest], sampler, transform=transform, seed=SEED, decode_size=decode_size)
    height, width = decode_size if decode_size else (-1, -1)
    raw_s = item_s = 0.0
    for key, (path, indices) in zip(keys, jobs):
        t0 = time.perf_counter()
        raw_decode(path, indices, width, height)
        t1 = time.perf_counter()
        dataset[key]
        t2 = time.perf_counter()
        raw_s, item_s = raw_s + (t1 - t0), item_s + (t2 - t1)
    return round(raw_s / item_s, 3)


def _decode_jobs(args) -> int:
    """Decode clips (open + get_batch, one thread), the way the dataset reads them."""
    jobs, decode_size = args
    height, width = decode_size if decode_size else (-1, -1)
    for path, indices in jobs:
        raw_decode(path, indices, width, height)
    return len(jobs)


def raw_rate(jobs: list, processes: int, batch_size: int, decode_size) -> tuple[float, float]:
    """(clips/s, CPU s) of decord alone on exactly the loader's clips, in the loader's processes.

    processes=0 decodes in this process, as a loader without workers does. Otherwise `processes`
    forked processes decode the batches the DataLoader would give each worker (batch b to worker
    b % processes), timed from starting them to the last one finishing.
    """
    start, cpu_start = time.perf_counter(), cpu_seconds()
    if processes == 0:
        clips = _decode_jobs((jobs, decode_size))
    else:
        batches = [jobs[b : b + batch_size] for b in range(0, len(jobs), batch_size)]
        shards = [[job for batch in batches[p::processes] for job in batch] for p in range(processes)]
        with mp.get_context("fork").Pool(processes) as pool:
            clips = sum(pool.map(_decode_jobs, [(shard, decode_size) for shard in shards]))
        # leaving the block stops and joins the processes, so that their CPU time is counted
    return clips / (time.perf_counter() - start), cpu_seconds() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos-dir", help="benchmark these videos (searched recursively) instead of generated ones")
    parser.add_argument("--clips", type=int, default=64,
                        help="clips per measurement, a multiple of --batch-size (default 64)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--num-videos", type=int, default=16)
    parser.add_argument("--video-seconds", type=float, default=10.0)
    parser.add_argument("--video-size", type=int, default=256)
    parser.add_argument("--video-fps", type=float, default=30.0)
    parser.add_argument("--crops", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6,
                        help="loader / raw rounds, in the order loader-raw, raw-loader, ... (default 6)")
    parser.add_argument("--decode-size", type=int, nargs=2, metavar=("H", "W"),
                        help="decode at this size in decord (cheaper for large sources); default native")
    args = parser.parse_args()
    if args.clips < args.batch_size or args.clips % args.batch_size:
        parser.error(f"--clips must be a positive multiple of --batch-size ({args.batch_size}), got {args.clips}")
    torch.set_num_threads(1)  # the main process decodes with 0 workers: one thread, like the raw decoder

    with tempfile.TemporaryDirectory(prefix="wm_bench_") as tmp:
        generated = None
        if args.videos_dir:
            paths = sorted(str(p) for p in Path(args.videos_dir).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
            if not paths:
                sys.exit(f"no videos under {args.videos_dir}")
        else:
            t0 = time.perf_counter()
            paths = generate_videos(Path(tmp) / "videos", args.num_videos, args.video_seconds, args.video_size,
                                    args.video_fps, jobs=max(1, min(4, os.cpu_count() or 1)))
            generated = {"num_videos": len(paths), "seconds": args.video_seconds, "size": args.video_size,
                         "fps": args.video_fps, "codec": "h264 yuv420p crf 20 veryfast, keyframe every 2 s",
                         "generate_s": round(time.perf_counter() - t0, 1),
                         "mean_bytes": int(np.mean([os.path.getsize(p) for p in paths]))}
        manifest = Path(tmp) / "manifest.txt"
        manifest.write_text("".join(p + "\n" for p in paths))

        sampler = ClipSampler(num_frames=16, fps=4.0)
        decode_size = tuple(args.decode_size) if args.decode_size else None
        infos = [read_video_info(p) for p in paths]
        # the loader's keys, and the very clips they sample (same generator as ClipDataset's)
        keys = [(i // len(paths), i % len(paths)) for i in range(args.clips)]
        jobs = []
        for epoch, index in keys:
            rng = np.random.default_rng([SEED, epoch, index])
            jobs.append((paths[index], sampler.indices(infos[index], mode="random", rng=rng)[0]))

        results = []
        for crop in args.crops:
            paired = paired_overhead(str(manifest), sampler, crop, keys, jobs, decode_size)
            for workers in args.workers:
                loader, raw, loader_cpu, raw_cpu = [], [], [], []
                for r in range(args.rounds):
                    # alternate which side goes first, so that a drift in the machine's load hits both alike
                    for side in ("loader", "raw") if r % 2 == 0 else ("raw", "loader"):
                        if side == "loader":
                            rate, cpu = loader_rate(str(manifest), sampler, crop, workers, keys, args.batch_size,
                                                    decode_size)
                            loader.append(rate)
                            loader_cpu.append(cpu)
                        else:
                            rate, cpu = raw_rate(jobs, workers, args.batch_size, decode_size)
                            raw.append(rate)
                            raw_cpu.append(cpu)
                # every round decodes the same clips: the overall rate is clips over the summed time
                loader_rate_all = len(loader) / sum(1 / x for x in loader)
                raw_rate_all = len(raw) / sum(1 / x for x in raw)
                results.append({
                    "crop": crop, "workers": workers,
                    "loader_clips_per_s": round(loader_rate_all, 2),
                    "raw_decode_clips_per_s": round(raw_rate_all, 2),
                    "loader_vs_raw": round(loader_rate_all / raw_rate_all, 3),
                    # each loader round against the raw round next to it (same load conditions)
                    "loader_vs_raw_paired_rounds": round(float(np.median(np.divide(loader, raw))), 3),
                    "loader_cpu_ms_per_clip": round(1e3 * sum(loader_cpu) / (len(keys) * len(loader)), 1),
                    "raw_cpu_ms_per_clip": round(1e3 * sum(raw_cpu) / (len(keys) * len(raw)), 1),
                    "raw_vs_loader_cpu": round(sum(raw_cpu) / sum(loader_cpu), 3),
                    "rounds": {"loader": [round(x, 2) for x in loader], "raw": [round(x, 2) for x in raw]},
                    "paired_item_vs_raw": paired if workers == 0 else None,
                })
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    report = {
        "benchmark": "worldmodel data loader vs raw decord decode",
        "loader": "ClipDataset + RandomResizedCropVideo + DataLoader(collate_samples)",
        "clip": {"num_frames": sampler.num_frames, "fps": sampler.fps, "batch_size": args.batch_size,
                 "decode_size": decode_size, "decode_threads": 1},
        "videos": generated or {"dir": args.videos_dir, "num_videos": len(paths)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "clips_per_measurement": args.clips,
        "rounds": args.rounds,
        "results": results,
        "note": ("both sides decode the same clips in every round, start-up included; rates are clips over the "
                 "summed time of all rounds; paired_item_vs_raw times each clip both ways back to back; "
                 "raw_vs_loader_cpu compares CPU time (this process and its joined workers), which the "
                 "machine's other load moves far less than wall-clock rates"),
        "target": "loader_vs_raw >= 0.9",
        "meets_target": all(r["loader_vs_raw"] >= 0.9 for r in results),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
