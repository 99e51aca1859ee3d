"""Pretraining end to end through the `worldmodel pretrain` command (real Lightning, real videos)."""

from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from worldmodel.checkpoints import safe_torch_load

# A model small enough for a few seconds of CPU per run: 2 blocks, 32 px, 4 frames.
SMALL = [
    "--trainer.accelerator", "cpu",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--model.img_size", "32",
    "--model.num_frames", "4",
    "--model.encoder_kwargs", '{"depth": 2, "embed_dim": 48, "num_heads": 3}',
    "--model.pred_depth", "1",
    "--model.pred_dim", "32",
    "--model.pred_heads", "2",
    "--model.collapse_every", "2",
    "--data.num_frames", "4",
    "--data.frame_step", "2",
    "--data.crop_size", "32",
    "--data.batch_size", "2",
]


def run_pretrain(args: list[str], check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "worldmodel.cli", "pretrain", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pretrain failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def step_losses(run_dir: Path) -> dict[int, float]:
    """train/loss per optimiser step from the run's CSV log."""
    losses = {}
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


def test_resume_mid_epoch_continues_exactly(tmp_path, video_folder):
    videos = video_folder(n=6, num_frames=16, size=(40, 40))
    common = SMALL + [
        "--data.train_manifests", str(videos / "manifest.csv"),
        "--data.num_workers", "1",
        "--data.samples_per_epoch", "10",  # 5 batches per epoch: step 7 is mid-epoch 2
        "--model.total_steps", "12",
        "--model.lr", '{"kind": "warmup_constant_cooldown", "base": 1e-3, "warmup_steps": 3, "cooldown_steps": 4}',
    ]
    full, part, resumed = tmp_path / "full", tmp_path / "part", tmp_path / "resumed"
    run_pretrain(common + ["--run_dir", str(full), "--trainer.max_steps", "12"])
    run_pretrain(common + ["--run_dir", str(part), "--trainer.max_steps", "7", "--checkpoint_every", "7"])
    run_pretrain(
        common + ["--run_dir", str(resumed), "--trainer.max_steps", "12", "--resume", str(part / "checkpoints/last.ckpt")]
    )
    want, got = step_losses(full), step_losses(resumed)
    assert sorted(want) == list(range(12))
    assert sorted(got) == list(range(7, 12))
    for step in range(7, 12):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), (step, got[step], want[step])
    # and the final weights agree too
    a = safe_torch_load(full / "checkpoints/last.ckpt")["state_dict"]
    b = safe_torch_load(resumed / "checkpoints/last.ckpt")["state_dict"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    # one checkpoint per run (no second copy from Lightning's default ModelCheckpoint)
    assert sorted(p.name for p in full.rglob("*.ckpt")) == ["last.ckpt"]
    # collapse monitors (every 2 steps) appear at the steps they were measured, not repeated in between
    with open(full / "logs" / "metrics.csv") as f:
        measured = sorted(int(r["step"]) for r in csv.DictReader(f) if r.get("collapse/token_effective_rank"))
    assert measured == list(range(0, 12, 2))
    # the process's memory is logged with the losses (a long run's growth shows in its logs)
    with open(full / "logs" / "metrics.csv") as f:
        rss = [float(r["memory/host_rss_mb"]) for r in csv.DictReader(f) if r.get("memory/host_rss_mb")]
    assert rss and all(100 < mb < 100_000 for mb in rss)

    # resumed in its own folder (a SLURM requeue): the CSV log keeps steps 0-6 and continues; the data
    # counts in the checkpoint include every batch (the last one before a save too)
    run_pretrain(common + ["--run_dir", str(part), "--trainer.max_steps", "12", "--resume", "auto"])
    in_place = step_losses(part)
    assert sorted(in_place) == list(range(12))
    assert all(in_place[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7) for step in range(12))
    data_counts = safe_torch_load(part / "checkpoints/last.ckpt")["callbacks"]["DataErrorCallback"]
    assert data_counts["num_ok"] == 12 * 2

    # resuming into another architecture names the setting, instead of listing every weight
    other = run_pretrain(
        [*common[:-2], "--model.encoder_kwargs", '{"depth": 1, "embed_dim": 48, "num_heads": 3}', *common[-2:],
         "--run_dir", str(tmp_path / "other"), "--trainer.max_steps", "12", "--resume", str(part / "checkpoints/last.ckpt")],
        check=False,
    )
    assert other.returncode != 0 and "Traceback" not in other.stderr and not (tmp_path / "other").exists()
    assert "model.encoder_kwargs: checkpoint {'depth': 2" in other.stderr
    # and with another batch size, which would replay other batches; the refused resume leaves the run's
    # logs as they were (its config.yaml keeps the settings it was trained with, no second TensorBoard run)
    logs_before = {f.name: f.read_bytes() for f in (part / "logs").iterdir()}
    bigger = run_pretrain([*common, "--data.batch_size", "3", "--run_dir", str(part),
                           "--trainer.max_steps", "12", "--resume", "auto"], check=False)
    assert bigger.returncode != 0 and "Traceback" not in bigger.stderr
    assert "cannot resume exactly: batch_size 2 in the checkpoint, 3 now" in bigger.stderr
    assert {f.name: f.read_bytes() for f in (part / "logs").iterdir()} == logs_before
    assert "batch_size: 2" in (part / "logs" / "config.yaml").read_text()


def test_settings_that_cannot_work_are_one_line_errors_before_training(tmp_path, video_folder):
    videos = video_folder(n=2, num_frames=12, size=(32, 32))
    common = SMALL + ["--data.train_manifests", str(videos / "manifest.csv"), "--data.num_workers", "0"]
    cases = [
        (["--data.crop_size", "48"], "model.img_size=32 but data.crop_size=48"),
        (["--trainer.max_steps", "10", "--model.lr", '{"kind": "warmup_constant_cooldown", "base": 1e-3, '
          '"warmup_steps": 8, "cooldown_steps": 8}'], "model.lr does not fit a run of 10 steps (trainer.max_steps)"),
        (["--optimizer", "SGD"], "unrecognized arguments: --optimizer"),  # the model's AdamW is the optimiser
        (["--model.encoder", "vit_nope"], "encoder must be one of"),
        (["--data.manifest_weights", "[1, 2]"], "got 2 manifest weights for 1 manifests"),
        (["--data.train_manifests", f"[{tmp_path / 'empty'}]"], "no video files found in this directory"),
        (["--model.lr", '{"kind": "warmup_cosin", "base": 1e-3}'], "model.lr: schedules.py: unknown schedule kind"),
        (["--model.num_frames", "3", "--data.num_frames", "3"], "3 frames is not a multiple of the tubelet size 2"),
        (["--model.ema_momentum", "1.5"], "model.ema_momentum must stay within [0, 1], got 1.5"),
        (["--resume", str(videos / "manifest.csv")], "manifest.csv: not a PyTorch checkpoint"),
        (["--checkpoint_every", "0"], "--checkpoint_every must be >= 1"),
        # this machine's torch is a CPU-only build: the hint says so (on a GPU node it would be the cause)
        (["--trainer.accelerator", "gpu"], "is a CPU-only build, which cannot use a GPU even where there is one"),
    ]
    (tmp_path / "empty").mkdir()
    for i, (args, message) in enumerate(cases):
        proc = run_pretrain(common + ["--run_dir", str(tmp_path / f"r{i}"), *args], check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr[-2000:])
        # nothing is left of the failed start: no run folder with logs and no checkpoint
        assert "Traceback" not in proc.stderr and not (tmp_path / f"r{i}").exists()
    # unusable videos found while training, in a DataLoader worker: the stop is its message, no traceback
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (bad / name).write_bytes(b"")
    proc = run_pretrain([*common[:-2], "--data.num_workers", "1", "--data.train_manifests", f"[{bad}]",
                         "--run_dir", str(tmp_path / "bad_run")], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "worldmodel pretrain: stopped: sample " in proc.stderr and "videos in a row could not be used" in proc.stderr
    assert f"{bad / 'a.mp4'}: empty: " in proc.stderr or f"{bad / 'b.mp4'}: empty: " in proc.stderr
    # the sample's failed attempts (it stopped the run before reaching a batch) are in data_errors.csv
    with open(tmp_path / "bad_run" / "data_errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == proc.stderr.count(": empty: ") >= 3 and {r["reason"] for r in rows} == {"empty"}
    assert {r["path"] for r in rows} == {str(bad / n) for n in ("a.mp4", "b.mp4", "c.mp4")}

    # a run folder that holds a run: a new start would overwrite its checkpoint, so it is refused
    (tmp_path / "held" / "checkpoints").mkdir(parents=True)
    (tmp_path / "held" / "checkpoints" / "last.ckpt").write_bytes(b"kept")
    proc = run_pretrain(common + ["--run_dir", str(tmp_path / "held")], check=False)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr and "--resume auto" in proc.stderr
    assert (tmp_path / "held" / "checkpoints" / "last.ckpt").read_bytes() == b"kept"
    # so is starting there from ANOTHER checkpoint (its first save would overwrite the run's progress)
    (tmp_path / "other.ckpt").write_bytes(b"other")
    proc = run_pretrain(common + ["--run_dir", str(tmp_path / "held"), "--resume", str(tmp_path / "other.ckpt")],
                        check=False)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "held" / "checkpoints" / "last.ckpt").read_bytes() == b"kept"

    # a run bounded by epochs: the schedules span the steps those epochs take
    run_pretrain(common + ["--run_dir", str(tmp_path / "epochs"), "--trainer.max_steps", "-1",
                           "--trainer.max_epochs", "2", "--data.samples_per_epoch", "4", "--model.lr",
                           '{"kind": "warmup_constant_cooldown", "base": 1e-3, "warmup_steps": 1, "cooldown_steps": 1}'])
    assert sorted(step_losses(tmp_path / "epochs")) == [0, 1, 2, 3]


def test_a_requeued_slurm_job_continues_its_own_run_not_the_resume_it_started_from(tmp_path, monkeypatch):
    """sbatch launch_slurm.sh ... --resume OTHER.ckpt: a requeued job replays that command line; it continues
    the run's own last.ckpt (SLURM_RESTART_COUNT >= 1) instead of starting over from OTHER.ckpt."""
    from worldmodel.pretrain_cli import _resume_over_a_run

    final = tmp_path / "run" / "checkpoints" / "last.ckpt"
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"x")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert _resume_over_a_run(str(other), final) == str(other)  # the first start: no run there yet
    final.parent.mkdir(parents=True)
    final.write_bytes(b"y")
    assert _resume_over_a_run(str(final), final) == str(final)  # --resume auto / its own checkpoint
    assert _resume_over_a_run(None, final) is None
    with pytest.raises(SystemExit, match="already holds a run"):
        _resume_over_a_run(str(other), final)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert _resume_over_a_run(str(other), final) == str(final)


def test_nonfinite_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, video_folder):
    videos = video_folder(n=4, num_frames=12, size=(32, 32))
    run_dir = tmp_path / "run"
    proc = run_pretrain(
        SMALL
        + [
            "--data.train_manifests", str(videos / "manifest.csv"),
            "--data.num_workers", "0",
            "--run_dir", str(run_dir),
            "--trainer.max_steps", "200",
            "--trainer.gradient_clip_val", "null",
            "--checkpoint_every", "1",
            "--model.lr", "1e12",  # diverges within a few steps
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert "worldmodel pretrain: stopped: loss became" in proc.stderr and "Traceback" not in proc.stderr
    ckpt = safe_torch_load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] < 200
    for name, tensor in ckpt["state_dict"].items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name


def test_weights_that_diverged_never_replace_the_last_good_checkpoint(tmp_path, video_folder, capsys):
    """An update can make the weights non-finite while its own loss was finite (the NEXT loss stops the run):
    the checkpoint of that step is not written, last.ckpt keeps the step before."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from worldmodel.checkpoints import LastCheckpoint
    from worldmodel.data.datamodule import VideoDataModule
    from worldmodel.pretrain import JEPAPretrainer

    class Diverge(Callback):  # before LastCheckpoint in the list: its batch end runs first
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                with torch.no_grad():
                    next(pl_module.encoder.parameters()).fill_(float("inf"))

    videos = video_folder(n=2, num_frames=16, size=(40, 40))
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[Diverge(), LastCheckpoint(tmp_path / "ckpt", every_n_steps=1)])
    model = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                           pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0)
    data = VideoDataModule(train_manifests=str(videos / "manifest.csv"), num_frames=4, frame_step=2, crop_size=32,
                           batch_size=2, num_workers=0)
    trainer.fit(model, datamodule=data)
    kept = safe_torch_load(tmp_path / "ckpt" / "last.ckpt")
    assert kept["global_step"] == 1 and all(torch.isfinite(t).all() for t in kept["state_dict"].values() if t.is_floating_point())
    assert "the weights at step 2 hold inf / NaN" in capsys.readouterr().out


def test_a_second_run_in_a_folder_in_use_stops_at_once(tmp_path, video_folder):
    """Two starts in one run folder (the same command twice, a relaunch while the first still trains) wrote
    the same last.ckpt and metrics.csv rows twice: the second now stops at once, naming the first."""
    import os

    videos = video_folder(n=2, num_frames=12, size=(32, 32))
    run_dir = tmp_path / "run"
    common = SMALL + ["--data.train_manifests", str(videos / "manifest.csv"), "--data.num_workers", "0",
                      "--run_dir", str(run_dir), "--model.total_steps", "100000"]
    first = subprocess.Popen([sys.executable, "-m", "worldmodel.cli", "pretrain", *common, "--trainer.max_steps", "100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline and not (run_dir / "logs" / "metrics.csv").exists():
            time.sleep(0.2)
        second = run_pretrain(common + ["--trainer.max_steps", "100000", "--resume", "auto"], check=False)
        assert second.returncode != 0 and f"another run is using {run_dir} (process {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr and first.poll() is None  # the first one trains on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    # once it is gone, the folder is free again (a killed process holds no lock)
    again = run_pretrain(common + ["--trainer.max_steps", "1", "--resume", "auto"], check=False)
    assert "another run is using" not in again.stderr


def test_a_max_time_stop_says_so(tmp_path, video_folder):
    """trainer.max_time ends the run where it is, with last.ckpt there: said as a stop, not as finished."""
    videos = video_folder(n=2, num_frames=12, size=(32, 32))
    proc = run_pretrain(SMALL + ["--data.train_manifests", str(videos / "manifest.csv"), "--data.num_workers", "0",
                                 "--run_dir", str(tmp_path / "run"), "--trainer.max_steps", "100000",
                                 "--model.total_steps", "100000", "--trainer.max_time", "00:00:00:04"])
    step = safe_torch_load(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < step < 100000 and f"stopped by trainer.max_time at step {step}; checkpoint: " in proc.stdout
    assert "finished at step" not in proc.stdout


def test_loss_falls_on_builtin_corpus(tmp_path):
    from worldmodel.data.corpus import generate_corpus

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, num_videos=6, seed=3, size=64, workers=1)
    run_dir = tmp_path / "run"
    run_pretrain(
        [
            "--trainer.accelerator", "cpu",
            "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", "150",
            "--run_dir", str(run_dir),
            "--checkpoint_every", "1000",
            "--data.train_manifests", str(corpus / "manifest.csv"),
            "--data.num_workers", "1",
            "--data.crop_size", "48",
            "--data.num_frames", "4",
            "--data.frame_step", "3",
            "--model.img_size", "48",
            "--model.num_frames", "4",
            "--model.encoder_kwargs", '{"depth": 3}',
            "--model.pred_depth", "2",
            "--model.collapse_every", "10",
        ],
        timeout=600,
    )
    losses = step_losses(run_dir)
    assert len(losses) == 150
    first = sum(losses[s] for s in range(5, 25)) / 20
    last = sum(losses[s] for s in range(130, 150)) / 20
    assert math.isfinite(last)
    assert last < 0.8 * first, (first, last)


def test_sigusr1_under_slurm_stops_at_a_batch_end_checkpoints_and_requeues(tmp_path, video_folder):
    """What a SLURM time limit or preemption does with `#SBATCH --signal=USR1@120`: the run (srun-launched,
    as the environment says) stops at the end of the batch in progress, writes last.ckpt there and
    requeues its job; `--resume auto` then continues from that step."""
    import os
    import signal
    import time

    videos = video_folder(n=4, num_frames=16, size=(40, 40))
    calls = tmp_path / "scontrol_calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "wm",
           "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    run_dir = tmp_path / "run"
    common = SMALL + ["--data.train_manifests", str(videos / "manifest.csv"), "--run_dir", str(run_dir),
                      "--model.lr", "0.001", "--model.weight_decay", "0.04", "--model.ema_momentum", "0.996"]
    args = common + ["--trainer.max_steps", "500", "--checkpoint_every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "worldmodel.cli", "pretrain", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.exists(), "no first checkpoint"
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    step = safe_torch_load(last)["global_step"]
    assert 1 <= step < 500
    assert f"stopped by signal at step {step}" in out and "requeued SLURM job 4242" in out
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's own mid-step save is off

    resumed = run_pretrain(common + ["--trainer.max_steps", str(step + 2), "--resume", "auto"])
    assert f"finished at step {step + 2}" in resumed.stdout
    assert sorted(step_losses(run_dir)) == list(range(step + 2))


def test_sigterm_stops_at_a_batch_end_with_a_checkpoint_and_a_failing_status(tmp_path, video_folder):
    """kill / docker stop / a scheduler's preemption: the run stops at the end of the batch in progress,
    writes last.ckpt there and exits with 143 (128 + SIGTERM), not 0 as if it had finished."""
    import os

    videos = video_folder(n=4, num_frames=12, size=(32, 32))

    def start_and_stop(run_dir: Path, *extra: str) -> tuple[str, list[str]]:
        """SIGTERM to the whole process group, DataLoader worker included (what SLURM and docker do)."""
        common = SMALL + ["--data.train_manifests", str(videos / "manifest.csv"), "--data.num_workers", "1",
                          "--run_dir", str(run_dir), "--model.lr", "0.001", "--model.ema_momentum", "0.996", *extra]
        proc = subprocess.Popen([sys.executable, "-m", "worldmodel.cli", "pretrain", *common, "--trainer.max_steps",
                                 "500", "--checkpoint_every", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        metrics = run_dir / "logs" / "metrics.csv"
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and not (metrics.exists() and len(step_losses(run_dir)) >= 2):
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 143, err[-3000:]  # the worker's death used to crash the run, no checkpoint
        return out, common

    run_dir = tmp_path / "run"
    out, common = start_and_stop(run_dir)
    step = safe_torch_load(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= step < 500 and f"stopped by SIGTERM at step {step}; checkpoint: " in out
    resumed = run_pretrain(common + ["--trainer.max_steps", str(step + 1), "--resume", "auto"])
    assert f"finished at step {step + 1}" in resumed.stdout
    # part-way through gradient accumulation there is no checkpoint of that step, and the message says so
    accumulating = tmp_path / "accumulating"
    out, _ = start_and_stop(accumulating, "--trainer.accumulate_grad_batches", "4")
    last = accumulating / "checkpoints" / "last.ckpt"
    said = out.split("stopped by SIGTERM at step ")[1]
    stopped_at = int(said.split(";")[0])
    if last.exists() and safe_torch_load(last)["global_step"] == stopped_at:
        assert "; checkpoint: " in said
    else:
        assert "no checkpoint was written yet" in said or "is from an earlier step" in said


def test_stop_on_signal_in_a_trainer_of_ones_own(tmp_path, video_folder):
    import os
    import signal

    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from worldmodel.checkpoints import LastCheckpoint
    from worldmodel.data.datamodule import VideoDataModule
    from worldmodel.pretrain import JEPAPretrainer
    from worldmodel.pretrain_cli import StopOnSignal, requeue_job

    class SignalAtBatch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                os.kill(os.getpid(), signal.SIGUSR1)

    videos = video_folder(n=4, num_frames=16, size=(40, 40))
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopOnSignal()
    trainer = L.Trainer(accelerator="cpu", max_steps=50, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[SignalAtBatch(), stop, LastCheckpoint(tmp_path / "ckpt", every_n_steps=100)])
    model = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                           pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0)
    data = VideoDataModule(train_manifests=str(videos / "manifest.csv"), num_frames=4, frame_step=2, crop_size=32,
                           batch_size=2, num_workers=0)
    trainer.fit(model, datamodule=data)
    assert stop.received and trainer.global_step == 2  # the batch in progress finished, then it stopped
    assert safe_torch_load(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is put back
    assert requeue_job(None).startswith("not a SLURM job") if "SLURM_JOB_ID" not in os.environ else True


def test_sigterm_at_an_epochs_end_stops_at_the_next_batch_end_and_resumes_exactly(tmp_path, video_folder):
    """A SIGTERM between batches (here at an epoch's end) stops the run at the end of the next batch, with the
    checkpoint there, and the resumed run matches the uninterrupted one. StopOnSignal's handler is the only
    SIGTERM handler while training (Lightning's own runs a collective inside the handler, which deadlocked
    multi-process runs), and the handler from before fit is back afterwards."""
    import os

    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from worldmodel.checkpoints import LastCheckpoint
    from worldmodel.data.datamodule import VideoDataModule
    from worldmodel.pretrain import JEPAPretrainer
    from worldmodel.pretrain_cli import StopOnSignal

    videos = video_folder(n=4, num_frames=16, size=(40, 40))

    class TermAtEpochEnd(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                assert signal.getsignal(signal.SIGTERM) == stop._on_signal  # ours alone, not Lightning's
                os.kill(os.getpid(), signal.SIGTERM)

    class Losses(Callback):
        def __init__(self) -> None:
            self.by_step: dict[int, float] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.by_step[trainer.global_step] = float(outputs["loss"])

    def fit(max_steps, callbacks, ckpt_path=None):
        L.seed_everything(0, verbose=False)
        losses = Losses()
        trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False,
                            callbacks=[losses, *callbacks, LastCheckpoint(tmp_path / "ckpt", every_n_steps=100)])
        model = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                               pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0)
        data = VideoDataModule(train_manifests=str(videos / "manifest.csv"), num_frames=4, frame_step=2, crop_size=32,
                               batch_size=2, num_workers=0)  # 2 batches an epoch
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return losses.by_step

    full = fit(5, [])
    (tmp_path / "ckpt" / "last.ckpt").unlink()
    before = signal.getsignal(signal.SIGTERM)
    stop = StopOnSignal(signal.SIGTERM)
    stopped = fit(5, [TermAtEpochEnd(), stop])
    assert stop.received and sorted(stopped) == [1, 2, 3]  # the first batch of epoch 2 finished, then it stopped
    assert signal.getsignal(signal.SIGTERM) == before
    assert safe_torch_load(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 3
    resumed = fit(5, [], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert sorted(resumed) == [4, 5]
    assert all(resumed[s] == pytest.approx(full[s], rel=1e-5) for s in resumed), (resumed, full)


def test_with_gradient_accumulation_stops_and_checkpoints_wait_for_an_optimiser_step(tmp_path, video_folder):
    """With accumulate_grad_batches 2, a checkpoint after a batch that only accumulated would count a batch
    whose gradient it does not hold: a SLURM stop arriving then waits for the step's second batch, and no
    checkpoint is written before the first step. The resumed run reproduces the uninterrupted one."""
    import math
    import os
    import signal

    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from worldmodel.checkpoints import LastCheckpoint
    from worldmodel.data.datamodule import VideoDataModule
    from worldmodel.pretrain import JEPAPretrainer
    from worldmodel.pretrain_cli import StopOnSignal

    videos = video_folder(n=3, num_frames=16, size=(40, 40))

    class Crash(Exception):
        pass

    class Kick(Callback):
        """SIGUSR1 at the start of batch `at` (of this fit), or an exception after it (a crash)."""

        def __init__(self, at: int, crash: bool = False) -> None:
            self.at, self.crash, self.seen = at, crash, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.seen == self.at and not self.crash:
                os.kill(os.getpid(), signal.SIGUSR1)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen += 1
            if self.crash and self.seen > self.at:
                raise Crash  # the process dies here

    class Losses(Callback):
        def __init__(self) -> None:
            self.by_step: dict[int, float] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.by_step[trainer.global_step] = float(outputs["loss"])  # the last batch seen at each step count

    def fit(run: str, ckpt_path=None, extra=()):
        L.seed_everything(0, verbose=False)
        losses = Losses()
        trainer = L.Trainer(accelerator="cpu", max_steps=6, accumulate_grad_batches=2, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            callbacks=[losses, *extra, StopOnSignal(), LastCheckpoint(tmp_path / run, every_n_steps=100)])
        model = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                               pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0, total_steps=24)
        data = VideoDataModule(train_manifests=str(videos / "manifest.csv"), num_frames=4, frame_step=2,
                               crop_size=32, batch_size=2, num_workers=0, samples_per_epoch=8)
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return trainer, losses.by_step

    _, full = fit("full")
    trainer, _ = fit("stopped", extra=[Kick(4)])  # batch 4 only accumulates: the stop waits for batch 5
    assert trainer.global_step == 3 and safe_torch_load(tmp_path / "stopped" / "last.ckpt")["global_step"] == 3
    _, resumed = fit("resumed", ckpt_path=str(tmp_path / "stopped" / "last.ckpt"))
    assert sorted(resumed) == [3, 4, 5, 6]  # batches 6-11 (batch 6 accumulates on top of step 3)
    assert all(math.isclose(resumed[s], full[s], rel_tol=1e-5) for s in resumed), (resumed, full)
    with pytest.raises(Crash):
        fit("crashed", extra=[Kick(0, crash=True)])  # killed after the first batch, before any optimiser step
    assert not (tmp_path / "crashed" / "last.ckpt").exists()


def test_stop_on_signal_holds_sigterm_before_the_first_batch(tmp_path, video_folder):
    """Lightning installs its SIGTERM handler (a collective inside a signal handler, which deadlocked
    multi-process runs) after the setup hooks; StopOnSignal takes the signal back at once, so its handler is
    the one in place while the data loaders are built, not only from the first batch on."""
    import signal

    import lightning as L

    from worldmodel.data.datamodule import VideoDataModule
    from worldmodel.pretrain import JEPAPretrainer
    from worldmodel.pretrain_cli import StopOnSignal

    seen = []

    class Recording(VideoDataModule):
        def train_dataloader(self):
            seen.append(signal.getsignal(signal.SIGTERM))
            return super().train_dataloader()

    videos = video_folder(n=2, num_frames=16, size=(40, 40))
    before = signal.getsignal(signal.SIGTERM)
    stop = StopOnSignal(signal.SIGTERM)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[stop])
    model = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                           pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0)
    trainer.fit(model, datamodule=Recording(train_manifests=str(videos / "manifest.csv"), num_frames=4, frame_step=2,
                                            crop_size=32, batch_size=2, num_workers=0))
    assert seen == [stop._on_signal]
    assert signal.getsignal(signal.SIGTERM) == before
    # only for fit: a later predict of the same trainer keeps Lightning's own handling of the signal
    during = []

    class Predicting(JEPAPretrainer):
        def predict_step(self, batch, batch_idx):
            during.append(signal.getsignal(signal.SIGTERM))

    model.__class__ = Predicting
    trainer.predict(model, dataloaders=torch.utils.data.DataLoader([0, 1], batch_size=1))
    assert during and during[0] != stop._on_signal


def test_the_data_summary_is_said_once_when_the_run_ends_at_an_epochs_end(tmp_path, video_folder):
    """An epoch's end prints the running data summary; a run that stops there printed the same line again
    at the end of fit."""
    videos = video_folder(n=3, num_frames=16, size=(40, 40))
    (videos / "broken.mp4").write_bytes(b"")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("".join(f"{videos / name}\n" for name in ("v000.mp4", "v001.mp4", "v002.mp4", "broken.mp4")))
    proc = run_pretrain(SMALL + ["--data.train_manifests", str(manifest), "--data.num_workers", "0",
                                 "--data.samples_per_epoch", "4", "--data.max_failure_ratio", "1.0",
                                 "--run_dir", str(tmp_path / "run"), "--trainer.max_steps", "2", "--model.total_steps", "500"])  # 1 epoch
    said = proc.stdout + proc.stderr
    assert said.count("unusable video(s) skipped") == 1, said[-3000:]
