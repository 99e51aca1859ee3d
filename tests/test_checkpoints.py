"""Checkpoints are written atomically (with the mode of a plain open) and loaded without running code;
files that are not checkpoints are named as such. Also the helpers the CLIs share: json_text, resolve_device."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from worldmodel.checkpoints import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    safe_torch_load,
)
from worldmodel.cliutil import DeviceError, json_text, resolve_device

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
    for keep in (100, 3000):  # cut inside the first record: torch fails with other errors (OSError, ...)
        cut.write_bytes(good.read_bytes()[:keep])
        with pytest.raises(CheckpointError, match="cut.ckpt: not a complete torch checkpoint .truncated"):
            safe_torch_load(cut)


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp makes 0600 files and os.replace keeps the mode; a written file must get 0666 less the umask."""
    old = os.umask(0o022)
    try:
        for umask, expected in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
            os.umask(umask)
            folder = tmp_path / f"umask{umask:03o}"
            plain = folder / "plain.txt"
            folder.mkdir()
            with open(plain, "w") as f:
                f.write("x")
            assert stat.S_IMODE(plain.stat().st_mode) == expected
            written = atomic_write_bytes(b"data", folder / "a.json")
            saved = atomic_torch_save({"x": torch.arange(3)}, folder / "a.ckpt")
            for path in (written, saved):
                assert stat.S_IMODE(path.stat().st_mode) == expected, path
        # replacing a file written before the fix (0600) gives it the mode of a new file too
        os.umask(0o022)
        old_file = tmp_path / "old.ckpt"
        old_file.write_bytes(b"")
        old_file.chmod(0o600)
        atomic_torch_save({"x": torch.arange(3)}, old_file)
        assert stat.S_IMODE(old_file.stat().st_mode) == 0o644
    finally:
        os.umask(old)


ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message>'
    b"<RequestId>4B2B1C0A9F</RequestId></Error>"
)


def test_files_that_are_not_checkpoints_are_not_called_malicious(tmp_path):
    random_bytes = b"\x17" + np.random.default_rng(0).bytes(4000)  # neither zip nor pickle
    cases = {
        "vitl.pt": (ACCESS_DENIED, r"b'<\?xml version=\"1'.*HTML or XML page"),
        "notes.ckpt": (b"these are not weights\n", r"b'these are not we'"),
        "noise.ckpt": (random_bytes, r"b'\\x17"),
    }
    for name, (data, detail) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            safe_torch_load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a PyTorch checkpoint (it starts with "), message
        assert re.search(detail, message), message
        assert "run code" not in message and "refused" not in message

    # a legacy-format (pickle) file whose stream is garbage is damaged, not dangerous
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02" + bytes([0xEF]) * 64)  # 0xEF is no pickle opcode
    with pytest.raises(CheckpointError, match="garbage.pt: damaged, or not a torch checkpoint") as info:
        safe_torch_load(garbage)
    assert "run code" not in str(info.value)

    # both torch formats still load
    for legacy in (False, True):
        path = tmp_path / f"good_{legacy}.pt"
        torch.save({"w": torch.arange(4)}, path, _use_new_zipfile_serialization=not legacy)
        assert torch.equal(safe_torch_load(path)["w"], torch.arange(4))


def test_legacy_format_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("WM_EVIL_MARK", str(mark))
    path = tmp_path / "evil_legacy.pt"
    torch.save({"payload": _Evil()}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    with pytest.raises(CheckpointError, match=r"evil_legacy.pt: refused to load.*run code.*GLOBAL"):
        safe_torch_load(path)
    assert not mark.exists()


def test_json_text_writes_null_for_numbers_json_cannot_hold():
    value = {"sem": [math.inf, -math.inf, math.nan, 0.5], "n": np.int64(3), "x": np.float32(1.5), 2: (True,)}
    text = json_text(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}")) == {
        "sem": [None, None, None, 0.5], "n": 3, "x": 1.5, "2": [True]
    }
    assert value["sem"][0] == math.inf  # the caller's data is left as it was


def test_resolve_device_names_the_problem_in_one_line(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=rf"^--device {name}: CUDA is not available on this machine .*; use --device cpu$"):
            resolve_device(name)
    with pytest.raises(DeviceError, match=r"^--device gpu: not a device name torch knows; .* cuda or cuda:N$"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="^--device meta: "):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"^--device cuda:3: this machine has 1 CUDA device \(cuda:0\)$"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0")  # checked, not touched: no CUDA call made
