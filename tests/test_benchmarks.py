"""The benchmark scripts run end to end at a tiny size and print the JSON their readers rely on.

They are timed runs, so nothing here asserts a speed; what is checked is that they measure what they
say (the same clips on both sides, every requested case present, consistent numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, *args: str, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_data_reports_every_case_with_wall_and_cpu_ratios(tmp_path):
    out = tmp_path / "bench.json"
    report = _run("bench_data.py", "--num-videos", "2", "--video-seconds", "5", "--video-size", "96",
                  "--clips", "8", "--batch-size", "4", "--crops", "64", "--workers", "0", "1", "--rounds", "2",
                  "--out", str(out))
    assert json.loads(out.read_text()) == report
    assert [(r["crop"], r["workers"]) for r in report["results"]] == [(64, 0), (64, 1)]
    for r in report["results"]:
        assert len(r["rounds"]["loader"]) == len(r["rounds"]["raw"]) == 2
        assert r["loader_clips_per_s"] > 0 and r["raw_decode_clips_per_s"] > 0
        assert abs(r["loader_vs_raw"] - r["loader_clips_per_s"] / r["raw_decode_clips_per_s"]) < 0.01
        # CPU time counts the workers too: with one worker, the decoding happens in the child
        assert r["loader_cpu_ms_per_clip"] > 0 and r["raw_cpu_ms_per_clip"] > 0
        # the loader decodes the very same frames and then crops them: it cannot do less work than
        # decoding alone by much (a generous bound: timer granularity on 8 tiny clips)
        assert 0 < r["raw_vs_loader_cpu"] < 1.5
    assert report["results"][0]["paired_item_vs_raw"] > 0
    assert report["results"][1]["paired_item_vs_raw"] is None
    assert report["meets_target"] == all(r["loader_vs_raw"] >= 0.9 for r in report["results"])


def test_bench_train_reports_throughput_and_flops(tmp_path):
    report = _run("bench_train.py", "--encoder", "vit_tiny", "--frames", "4", "--resolution", "32", "--batch", "2",
                  "--pred-depth", "1", "--pred-dim", "64", "--steps", "2", "--warmup", "1", "--threads", "1")
    assert report["clips_per_s"] > 0 and report["step_ms_median"] > 0
    assert report["tflops"] > 0 and report["peak_tflops"] > 0
    assert report["peak_rss_mb"] > 0
    assert report["flop_steps"] == 3 and report["activation_checkpointing"] is False and "attention" in report["flops_counted"]


def test_attention_on_the_cpu_counts_its_flops():
    """torch's FlopCounterMode has no formula for the CPU attention kernel: without the one bench_train.py
    registers, every attention of a CPU benchmark counted as free (about a fifth of a vit_tiny step)."""
    import sys

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(SCRIPTS))
    import bench_train

    bench_train._register_cpu_attention_flops()
    q = torch.randn(2, 3, 100, 64, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    forward = 4 * 2 * 3 * 100 * 100 * 64  # QK^T and attention x V, 2 FLOPs a multiply-add
    assert counter.get_total_flops() >= 3 * forward  # forward + backward
