#!/usr/bin/env python
"""What does tiny pretraining buy? Pretrain recipe variants on the built-in corpus, probe each one
next to the random-weights baseline, and print one JSON table.

Every variant is `worldmodel pretrain --config tiny` plus overrides, then `worldmodel probe` on its
EMA target encoder (and, with --context-encoder, on its context encoder too). The random baseline
is probed once. Every probe runs with --probe-repeats probe seeds (default 3) and reports their mean
and spread. Each variant takes the tiny run's time (about 6-9 minutes here) plus about a minute
of probing; run it on an otherwise idle machine.

    python scripts/ablate_tiny.py                          # every variant below
    python scripts/ablate_tiny.py --variants shipped copy_last --out ablation.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_train import emit

TEMPORAL_MASKS = (
    "[{type: multiblock, num_blocks: 8, spatial_scale: [0.15, 0.15], temporal_scale: [0.25, 0.5]},"
    " {type: multiblock, num_blocks: 2, spatial_scale: [0.7, 0.7], temporal_scale: [0.25, 0.5]},"
    " {type: future, context_fraction: [0.25, 0.75]}]"
)
V_JEPA2_MASKS = (
    "[{type: multiblock, num_blocks: 8, spatial_scale: [0.15, 0.15]},"
    " {type: multiblock, num_blocks: 2, spatial_scale: [0.7, 0.7]},"
    " {type: future, context_fraction: [0.25, 0.75]}]"
)
SLOW_EMA = "{kind: linear, start: 0.998, end: 1.0}"
LOW_LR = "{kind: warmup_constant_cooldown, base: 3.0e-4, start: 1.0e-5, final: 1.0e-6, warmup_steps: 40, cooldown_steps: 80}"
HIGH_LR = "{kind: warmup_constant_cooldown, base: 1.0e-3, start: 1.0e-4, final: 1.0e-5, warmup_steps: 40, cooldown_steps: 80}"

# The recipe the tiny config shipped before this study (V-JEPA 2's masks, lr 1e-3, EMA 0.99 -> 0.999);
# every variant but "shipped" is this recipe with one or more changes.
# Target tokens started from a copy of the last context frame in every row measured before the tiny
# config took `pred_copy_context: blend`; COPY_LAST keeps those rows as they were measured.
COPY_LAST = ["--model.pred_copy_context", "true"]
BEFORE = COPY_LAST + ["--model.masks", V_JEPA2_MASKS, "--model.lr", HIGH_LR,
                      "--model.ema_momentum", "{kind: linear, start: 0.99, end: 0.999}"]
VARIANTS: dict[str, list[str]] = {
    "shipped": [],  # the tiny config as it ships now
    "copy_last": COPY_LAST,  # the tiny config until blend: targets start from the last context frame
    "before": BEFORE,
    "sigreg": BEFORE + ["--model.target", "sigreg"],
    "ema0.998": BEFORE + ["--model.ema_momentum", SLOW_EMA],
    "ema0.998_lr3e-4": BEFORE + ["--model.ema_momentum", SLOW_EMA, "--model.lr", LOW_LR],
    "temporal_masks": BEFORE + ["--model.masks", TEMPORAL_MASKS],
    "frozen_target": BEFORE + ["--model.ema_momentum", "1.0"],
    "copy_mean": ["--model.pred_copy_context", "mean"],  # target tokens start from the context mean
    "copy_last_sigreg": COPY_LAST + ["--model.target", "sigreg"],  # one shared encoder + SIGReg, no EMA target
    "copy_last_ema0.99": COPY_LAST + ["--model.ema_momentum", "{kind: linear, start: 0.99, end: 1.0}"],  # a target that follows faster
}


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\nsee {log}")
    return time.perf_counter() - start


def probe(checkpoint: str, out: Path, extra: list[str]) -> dict:
    seconds = run([sys.executable, "-m", "worldmodel.cli", "probe", "--checkpoint", checkpoint, "--out", str(out), *extra],
                  out.with_suffix(".log"))
    metrics = json.loads((out / "metrics.json").read_text())
    keep = {k: round(v, 4) for k, v in metrics.items() if k.endswith(("recall@1", "recall@5", "top1"))}
    keep["linear_action_recall@1"] = round(metrics["probes"].get("linear", {}).get("action_recall@1", float("nan")), 4)
    if "repeats" in metrics:  # the headline keys above are means over the probe seeds
        spread = metrics["repeats"][metrics["probe"]]
        keep["action_recall@1_std"] = round(spread["action_recall@1"]["std"], 4)
        keep["action_recall@1_values"] = [round(v, 4) for v in spread["action_recall@1"]["values"]]
    keep["probe_s"] = round(seconds, 1)
    return keep


def last_collapse(run_dir: Path) -> dict:
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("collapse/token_effective_rank")]
    if not rows:
        return {}
    return {k.split("/")[1]: round(float(v), 3) for k, v in rows[-1].items() if k.startswith("collapse/") and v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--work-dir", default="runs/ablate_tiny", help="runs and probes go here")
    parser.add_argument("--context-encoder", action="store_true", help="also probe each run's context encoder")
    parser.add_argument("--probe-repeats", type=int, default=3,
                        help="probe seeds per encoder (worldmodel probe --repeats); recall@1 moves by several points between seeds")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    repeats = ["--repeats", str(args.probe_repeats)]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    first_ckpt = None
    for name in args.variants:
        run_dir = work / name
        shutil.rmtree(run_dir, ignore_errors=True)  # each variant trains afresh (pretrain refuses a folder holding a run)
        seconds = run([sys.executable, "-m", "worldmodel.cli", "pretrain", "--config", "tiny", "--run_dir", str(run_dir),
                       *VARIANTS[name]], work / f"{name}.pretrain.log")
        ckpt = str(run_dir / "checkpoints" / "last.ckpt")
        first_ckpt = first_ckpt or ckpt
        entry = {"overrides": VARIANTS[name], "pretrain_s": round(seconds, 1), "collapse": last_collapse(run_dir),
                 "target_encoder": probe(ckpt, work / f"{name}.probe", ["--encoder", "target", *repeats])}
        if args.context_encoder:
            entry["context_encoder"] = probe(ckpt, work / f"{name}.probe_context", ["--encoder", "context", *repeats])
        results[name] = entry
        print(json.dumps({name: entry}), file=sys.stderr, flush=True)
    random = probe("random", work / "random.probe", ["--config-from", first_ckpt, *repeats])
    for entry in results.values():
        for key in ("target_encoder", "context_encoder"):
            if key in entry:
                entry[key]["action_recall@1_minus_random"] = round(
                    entry[key]["action_recall@1"] - random["action_recall@1"], 4)
    emit({"benchmark": "tiny pretraining ablation (action anticipation probe on the built-in corpus)",
          "random_weights": random, "variants": results,
          "target": "action_recall@1 at least 0.10 above the random-weights baseline"}, args.out)


if __name__ == "__main__":
    main()
