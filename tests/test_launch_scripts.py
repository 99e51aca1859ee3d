"""The cluster launch scripts pass the user's arguments through in the order that makes them count."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _recorder(path: Path) -> Path:
    """An executable that prints the arguments it was started with, one per line (stands in for the
    cluster's srun, or for python when only the command line is checked)."""
    path.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _run(script: str, args: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    done = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_users_resume_wins_over_the_scripts_resume_auto(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _recorder(bin_dir / "srun")
    venv_python = tmp_path / "submit" / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    _recorder(venv_python)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(tmp_path / "submit"),
           "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4"}
    user = ["--config", "vit_large_ddp", "--resume", "/other/run/last.ckpt"]
    # srun gets the job folder's environment python, then the command; the user's --resume is the only one
    argv = _run("launch_slurm.sh", user, env, tmp_path / "submit")
    assert argv[0] == ".venv/bin/python" and argv[1:4] == ["-m", "worldmodel.cli", "pretrain"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--resume"] == ["/other/run/last.ckpt"]
    assert argv[-4:] == ["--trainer.num_nodes", "2", "--trainer.devices", "4"]
    # without one, --resume auto comes after the user's arguments: a config there (a run's own config.yaml
    # holds "resume: null") cannot turn it off
    argv = _run("launch_slurm.sh", ["--config", "runs/x/logs/config.yaml"], env, tmp_path / "submit")
    assert argv[argv.index("runs/x/logs/config.yaml") + 1 :][:2] == ["--resume", "auto"]

    # torchrun through the environment's python (no torchrun on PATH needed), same order
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(PY=str(_recorder(tmp_path / "py")), NPROC="2")
    argv = _run("launch_torchrun.sh", user, env, tmp_path)
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert "--standalone" in argv and "--master_port" not in argv  # one node: a free port, no clash on 29500
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--resume"] == ["/other/run/last.ckpt"]
    assert argv[-4:] == ["--trainer.devices", "2", "--trainer.num_nodes", "1"]
    argv = _run("launch_torchrun.sh", ["--config", "c.yaml"], env, tmp_path)
    assert argv[argv.index("c.yaml") + 1 :][:2] == ["--resume", "auto"]
    # several nodes meet at the address given
    argv = _run("launch_torchrun.sh", user, {**env, "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}, tmp_path)
    assert "--standalone" not in argv and argv[argv.index("--master_addr") + 1] == "10.0.0.1"
    assert argv[argv.index("--node_rank") + 1] == "1" and argv[-1] == "2"
