"""Checkpoints are written atomically and loaded without running code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from worldmodel.checkpoints import CheckpointError, atomic_torch_save, safe_torch_load

SAVER = textwrap.dedent(
    """
    import sys, torch
    from worldmodel.checkpoints import atomic_torch_save
    path = sys.argv[1]
    i = 0
    while True:
        i += 1
        # ~24 MB per save, so a kill often lands in the middle of one
        atomic_torch_save({"step": i, "weights": torch.full((6_000_000,), float(i))}, path)
        print(i, flush=True)
    """
)


def test_kill_during_save_never_leaves_a_broken_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    for delay in (0.35, 0.6, 0.85):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "1"  # at least one complete save
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        ckpt = safe_torch_load(path)
        step = ckpt["step"]
        assert step >= 1
        # the content is one complete save, never a mix of two
        assert torch.equal(ckpt["weights"], torch.full((6_000_000,), float(step)))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    # a kill can leave a temporary file behind, never a second checkpoint name
    assert all(name.endswith(".tmp") for name in leftovers)


def test_atomic_save_replaces_whole_file(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_torch_save({"x": torch.arange(3)}, path)
    atomic_torch_save({"x": torch.arange(5)}, path)
    assert torch.equal(safe_torch_load(path)["x"], torch.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('WM_EVIL_MARK', '/tmp/wm_evil_mark')}",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("WM_EVIL_MARK", str(mark))
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt.*refused"):
        safe_torch_load(path)
    assert not mark.exists()


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        safe_torch_load(tmp_path / "missing.ckpt")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        safe_torch_load(empty)
    text = tmp_path / "notes.ckpt"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.ckpt"):
        safe_torch_load(text)
    good = tmp_path / "good.ckpt"
    atomic_torch_save({"w": torch.randn(1000)}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt.*truncated"):
        safe_torch_load(cut)
