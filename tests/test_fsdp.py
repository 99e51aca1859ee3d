"""FSDP sharding of the EMA pair, on CPU: two real processes (gloo) shard the model with torch's FSDP the way
Lightning's FSDPStrategy does (Lightning itself runs FSDP on GPUs only)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_ema.py"
CONFIGS = Path(__file__).resolve().parents[1] / "worldmodel" / "configs"


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _shard(tmp_path: Path, policy: list[str]) -> list[dict]:
    out = tmp_path / "_".join(p.rsplit(".", 1)[-1] for p in policy)
    out.mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), _free_port(), *policy],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_the_shipped_fsdp_config_shards_both_encoders_alike_and_the_ema_is_exact(tmp_path):
    """With the vit_giant_fsdp config's wrap policy (each encoder a unit of its own, blocks nested), the EMA
    update of the shards equals the unsharded update; with one unit per block only, the encoders' other
    weights are cut at different places on each process, and the run is refused before its first step."""
    strategy = yaml.safe_load((CONFIGS / "vit_giant_fsdp.yaml").read_text())["trainer"]["strategy"]
    policy = strategy["init_args"]["auto_wrap_policy"]
    ranks = _shard(tmp_path, policy)
    assert all(r["problem"] is None for r in ranks)
    assert all(r["compared"] > 10 and r["max_abs_diff"] < 1e-6 for r in ranks)

    blocks_only = _shard(tmp_path, ["worldmodel.models.layers.Block"])
    for rank in blocks_only:
        assert "each encoder to be a unit of its own" in rank["problem"]
        assert "worldmodel.models.vit.VideoViT" in rank["problem"]
