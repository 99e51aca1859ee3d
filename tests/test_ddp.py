"""Real 2-process DDP (gloo on CPU): ranks stay identical, and a DDP step over a global batch split
across two ranks equals one process stepping on the whole batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worldmodel.checkpoints import safe_torch_load

SCRIPT = Path(__file__).parent / "scripts" / "ddp_run.py"


def _run(manifest: Path, out: Path, devices: int, global_batch: int, steps: int) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(manifest), str(out), str(devices), str(global_batch), str(steps)],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]


def test_ddp_two_ranks_match_single_process(tmp_path, video_folder):
    videos = video_folder(n=4, num_frames=16, size=(40, 40))
    manifest = videos / "manifest.csv"
    _run(manifest, tmp_path, devices=2, global_batch=4, steps=3)
    _run(manifest, tmp_path, devices=1, global_batch=4, steps=3)
    rank0 = safe_torch_load(tmp_path / "devices2_rank0.pt")
    rank1 = safe_torch_load(tmp_path / "devices2_rank1.pt")
    single = safe_torch_load(tmp_path / "devices1_rank0.pt")
    initial_differs = False
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"{name} differs across DDP ranks"
        torch.testing.assert_close(value, single[name], rtol=1e-4, atol=1e-5, msg=f"{name}: DDP != single process")
    # the runs really trained: parameters moved away from their (seeded) initial values
    fresh = subprocess.run(
        [sys.executable, "-c",
         "import lightning as L, torch; L.seed_everything(0, verbose=False);"
         "from worldmodel.pretrain import JEPAPretrainer;"
         "m = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={'depth': 2, 'embed_dim': 48, 'num_heads': 3},"
         " pred_depth=1, pred_dim=32, pred_heads=2);"
         f"torch.save(m.state_dict(), r'{tmp_path / 'init.pt'}')"],
        capture_output=True, text=True, timeout=120,
    )
    assert fresh.returncode == 0, fresh.stderr
    # the collapse monitors see both ranks' clips: the same values as one process on the whole batch
    import json

    for step, single_row in json.loads((tmp_path / "devices1_collapse.json").read_text()).items():
        ddp_row = json.loads((tmp_path / "devices2_collapse.json").read_text())[step]
        for name in ("collapse/feature_std", "collapse/effective_rank"):
            assert ddp_row[name] == pytest.approx(single_row[name], rel=1e-3, abs=1e-4), (step, name, ddp_row, single_row)
    assert single_row["collapse/effective_rank"] > 2.0  # 4 clips: more than one process's 2 could show
    init = safe_torch_load(tmp_path / "init.pt")
    for name, value in init.items():
        if name.startswith("encoder.") and value.is_floating_point() and not torch.equal(value, rank0[name]):
            initial_differs = True
    assert initial_differs


def test_ddp_resume_continues_exactly_mid_epoch_and_at_an_epoch_end(tmp_path, video_folder):
    """`worldmodel pretrain` on 2 processes (gloo): stopped mid-epoch, or at an epoch's last batch (which
    Lightning restarts at the next epoch), then resumed with --resume auto, every rank's data and the
    logged losses continue as in the uninterrupted run."""
    from test_pretrain import SMALL, run_pretrain, step_losses

    videos = video_folder(n=4, num_frames=16, size=(40, 40))
    common = SMALL + [
        "--data.train_manifests", str(videos / "manifest.csv"), "--data.num_workers", "0",
        "--data.samples_per_epoch", "8",  # 2 batches of 2 per rank and epoch
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--model.total_steps", "8",
        "--model.lr", '{"kind": "warmup_constant_cooldown", "base": 1e-3, "warmup_steps": 2, "cooldown_steps": 3}',
    ]
    full = tmp_path / "full"
    run_pretrain(common + ["--run_dir", str(full), "--trainer.max_steps", "7"])
    want = step_losses(full)
    assert sorted(want) == list(range(7))
    for stop in (3, 4):  # mid-epoch; the end of epoch 1
        part = tmp_path / f"stop{stop}"
        run_pretrain(common + ["--run_dir", str(part), "--trainer.max_steps", str(stop)])
        run_pretrain(common + ["--run_dir", str(part), "--trainer.max_steps", "7", "--resume", "auto"])
        got = step_losses(part)
        assert sorted(got) == list(range(7)), (stop, sorted(got))
        for step in range(stop, 7):
            assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-7), (stop, step, got[step], want[step])


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the second rank through /proc")
def test_a_sigterm_to_one_rank_stops_every_rank_at_a_batch_end(tmp_path, video_folder):
    """A SIGTERM that reaches one rank only (a node's scheduler, a kill of one process): every rank stops at the
    end of the same batch, last.ckpt is written there, the run exits 143 and resumes. Lightning's own SIGTERM
    handler, which runs a collective inside the signal handler, deadlocked both ranks for good here."""
    import os
    import signal
    import time

    from test_pretrain import SMALL, run_pretrain, step_losses

    videos = video_folder(n=4, num_frames=16, size=(40, 40))
    run_dir = tmp_path / "run"
    common = SMALL + ["--data.train_manifests", str(videos / "manifest.csv"), "--data.num_workers", "0",
                      "--trainer.devices", "2", "--trainer.strategy", "ddp", "--run_dir", str(run_dir),
                      "--model.total_steps", "500", "--checkpoint_every", "1000"]
    proc = subprocess.Popen([sys.executable, "-m", "worldmodel.cli", "pretrain", *common, "--trainer.max_steps", "500"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        metrics = run_dir / "logs" / "metrics.csv"
        while proc.poll() is None and time.monotonic() < deadline and not (metrics.exists() and len(step_losses(run_dir)) >= 2):
            time.sleep(0.2)
        rank1 = [pid for pid in _children(proc.pid) if b"worldmodel.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(rank1) == 1, rank1
        os.kill(rank1[0], signal.SIGTERM)
        out, err = proc.communicate(timeout=180)  # a deadlock fails here
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    step = safe_torch_load(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= step < 500 and f"stopped by SIGTERM at step {step}; checkpoint: " in out
    resumed = run_pretrain(common + ["--trainer.max_steps", str(step + 1), "--resume", "auto"])
    assert f"finished at step {step + 1}" in resumed.stdout


def test_unusable_videos_are_counted_over_every_rank(tmp_path, video_folder):
    """Two processes (gloo) reading a manifest with broken files: each keeps its own list, the summary line
    sums both, a resumed run restores each rank's own counts (no rows listed twice), and the stop threshold
    applies to the summed counts, so both ranks stop at the same batch with one message, no traceback."""
    import csv

    from test_pretrain import SMALL, run_pretrain

    videos = video_folder(n=4, num_frames=16, size=(40, 40))
    for i in range(4):
        (videos / f"broken{i}.mp4").write_bytes(b"")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("".join(f"{videos / name}\n" for name in
                                [f"v{i:03d}.mp4" for i in range(4)] + [f"broken{i}.mp4" for i in range(4)]))
    run_dir = tmp_path / "run"
    common = SMALL + ["--data.train_manifests", str(manifest), "--data.num_workers", "0", "--trainer.devices", "2",
                      "--trainer.strategy", "ddp", "--run_dir", str(run_dir), "--model.total_steps", "500",
                      "--data.max_failure_ratio", "0.9"]

    def rows(name):
        path = run_dir / name
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    first = run_pretrain(common + ["--trainer.max_steps", "3"])
    listed = rows("data_errors.csv") + rows("data_errors.rank1.csv")
    files = len({row["path"] for row in listed})  # the same broken file can be drawn on both ranks, or twice
    assert listed and f"data: {files} unusable video(s) skipped: {len(listed)} failed read(s)" in first.stdout + first.stderr
    assert "summed over 2 processes" in first.stdout + first.stderr
    resumed = run_pretrain(common + ["--trainer.max_steps", "6", "--resume", "auto"])
    state = safe_torch_load(run_dir / "checkpoints" / "last.ckpt")["callbacks"]["DataErrorCallback"]
    assert [r["csv_rank"] for r in state["ranks"]] == [0, 1]
    for rank, name in ((0, "data_errors.csv"), (1, "data_errors.rank1.csv")):
        counted = sum(state["ranks"][rank]["counts"].values())
        assert len(rows(name)) == counted == state["ranks"][rank]["csv_rows"], (rank, len(rows(name)), counted)
    total = sum(sum(r["counts"].values()) for r in state["ranks"])
    files = len(set().union(*(r["bad_files"] for r in state["ranks"])))
    assert f"data: {files} unusable video(s) skipped: {total} failed read(s)" in resumed.stdout + resumed.stderr

    # past the threshold (summed over both ranks): both stop at the same batch, one message, no traceback
    strict = run_pretrain([*common[:-2], "--data.max_failure_ratio", "0.05", "--run_dir", str(tmp_path / "strict"),
                           "--trainer.max_steps", "60"], check=False)
    assert strict.returncode != 0 and "Traceback" not in strict.stderr, strict.stderr[-3000:]
    assert strict.stderr.count("too many unusable videos") == 1 and "(all processes)" in strict.stderr


def test_processes_that_would_start_from_different_steps_stop_with_the_reason(tmp_path, video_folder):
    """Two nodes whose run folders are not shared: only rank 0 finds last.ckpt and resumes, the other starts
    over. Both stop before the first batch, saying why, instead of training apart."""
    script = Path(__file__).parent / "scripts" / "ddp_unshared.py"
    manifest = video_folder(n=2, num_frames=16, size=(40, 40)) / "manifest.csv"
    for mode, status in (("first", 0), ("mismatch", 3)):
        proc = subprocess.run([sys.executable, str(script), str(manifest), str(tmp_path), mode],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == status, proc.stderr[-3000:]
    for rank in (0, 1):
        said = (tmp_path / f"refused_rank{rank}.txt").read_text()
        assert "start from different steps ([0, 2])" in said and "storage that every node shares" in said


def test_a_nan_on_one_rank_stops_every_rank_at_that_step(tmp_path, video_folder):
    """The loss turns NaN on rank 1 only (its own batch): both ranks stop before that update, naming the
    rank. Before, rank 1 stopped alone and rank 0 failed in the next collective with a gloo traceback (with
    NCCL it would have waited there until the launcher's timeout)."""
    script = Path(__file__).parent / "scripts" / "ddp_nan.py"
    manifest = video_folder(n=2, num_frames=16, size=(40, 40)) / "manifest.csv"
    proc = subprocess.run([sys.executable, str(script), str(manifest), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # a hang fails here
    assert proc.returncode == 3, proc.stderr[-3000:]
    for rank in (0, 1):
        step, said = (tmp_path / f"stopped_rank{rank}.txt").read_text().split("\n", 1)
        assert step == "2" and "on rank(s) 1 of 2 at step 2" in said, said


def test_a_diverging_two_process_run_stops_with_one_message(tmp_path, video_folder):
    """`worldmodel pretrain` on 2 processes whose loss turns inf / NaN: both stop at the same step, rank 0
    says so once (naming the ranks), no traceback, and the last good checkpoint is kept."""
    from test_pretrain import SMALL, run_pretrain

    videos = video_folder(n=4, num_frames=16, size=(40, 40))
    run_dir = tmp_path / "run"
    proc = run_pretrain(SMALL + ["--data.train_manifests", str(videos / "manifest.csv"), "--data.num_workers", "0",
                                 "--trainer.devices", "2", "--trainer.strategy", "ddp", "--run_dir", str(run_dir),
                                 "--trainer.max_steps", "200", "--trainer.gradient_clip_val", "null",
                                 "--checkpoint_every", "1", "--model.lr", "1e12"], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("worldmodel pretrain: stopped: loss became") == 1, proc.stderr[-3000:]
    assert "of 2 at step" in proc.stderr
    ckpt = safe_torch_load(run_dir / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
