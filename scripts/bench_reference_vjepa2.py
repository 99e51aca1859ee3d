#!/usr/bin/env python
"""Time the V-JEPA 2 reference training step (facebookresearch/vjepa2) at bench_train.py's configuration.

Nothing of the reference is part of worldmodel: pass your own checkout of
https://github.com/facebookresearch/vjepa2 (it needs `app/vjepa/` and `src/`); it is imported at run time.

    python scripts/bench_reference_vjepa2.py --vjepa2-src ~/src/vjepa2 --encoder vit_tiny --frames 16 \
        --resolution 112 --batch 8 --pred-depth 6 --pred-dim 192 --steps 20

    # both implementations, alternately, ROUNDS times each, in fresh processes; one JSON summary
    python scripts/bench_reference_vjepa2.py --vjepa2-src ~/src/vjepa2 --compare 3 [same flags]

What is built, and how it matches bench_train.py:

- models: the reference's `app/vjepa/utils.py:init_video_model` (their encoder wrapped in MultiSeqWrapper,
  their predictor in PredictorMultiSeqWrapper) with the V-JEPA 2 pretraining config: use_rope, use_sdpa,
  use_mask_tokens with zero init, GELU MLPs, no activation checkpointing unless asked; tubelet 2,
  patch 16; predictor heads = pred-dim / 32 as in bench_train.py; num_mask_tokens = 2 (kinds x clip lengths,
  as their train.py computes it). The target encoder is a deep copy with requires_grad False.
- masks: their MaskCollator with V-JEPA 2's two configs (8 x 0.15 and 2 x 0.7 of the frame, temporal
  scale 1.0, aspect 0.75-1.5, max_temporal_keep 1.0), called inside the timed step on the list of
  samples, exactly as bench_train.py calls ours. Their samples are `([clip], label, [clip_indices])`.
- clips: the same synthetic uint8 clips (same generator and seed), stacked by the collator, and converted
  to float inside the step with `worldmodel.data.transforms.normalize_video` (bench_train.py does the
  same inside compute_loss; in the reference pipeline the workers normalise, which would hide that cost).
- step: their `app/vjepa/train.py` train_step: lr and wd scheduler steps, target encoder under no_grad +
  per-token layer_norm, context encoder per mask (MultiSeqWrapper), predictor per mask, their loss_fn
  (mean |z - h|^loss_exp / loss_exp with loss_exp 1, averaged over masks), backward, AdamW step (their
  `init_opt`: 4 parameter groups), zero_grad, EMA with torch._foreach_mul_ / _foreach_add_ (momentum
  0.99925, V-JEPA 2's constant), then `float(loss)` as they log it. Not included, as in their loop:
  gradient clipping (bench_train.py clips at 1.0, so ours pays for that and the reference does not).
  Without DistributedDataParallel (a single process).
- float32 by default (`--precision bf16` uses torch.autocast, as their `meta.dtype: bfloat16`; a
  GradScaler only on CUDA, as theirs), same threads, same FLOP counting (FlopCounterMode over one step)
  and the same peak matmul measurement (imported from bench_train.py).

Known difference of semantics, not of speed tricks: the reference truncates every sample's context and
target index lists to the batch minimum, while worldmodel pads to the batch maximum (and masks the
padding). So at the same configuration the reference processes fewer tokens per step; `tokens` in
the output reports the per-kind lengths (context, target) of the last timed step.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_train import add_step_arguments, check_step_arguments, emit, step_result, time_steps  # noqa: E402  (same measurements)

# V-JEPA 2's pretraining mask configs (configs/train/*/pretrain-256px-16f.yaml)
VJEPA2_MASKS = [
    dict(aspect_ratio=[0.75, 1.5], full_complement=False, max_keep=None, max_temporal_keep=1.0,
         num_blocks=8, spatial_scale=[0.15, 0.15], temporal_scale=[1.0, 1.0]),
    dict(aspect_ratio=[0.75, 1.5], full_complement=False, max_keep=None, max_temporal_keep=1.0,
         num_blocks=2, spatial_scale=[0.7, 0.7], temporal_scale=[1.0, 1.0]),
]
VJEPA2_EMA = 0.99925


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vjepa2-src", required=True, help="a checkout of facebookresearch/vjepa2 (with app/ and src/)")
    add_step_arguments(p, ["vjepa2"], "the reference has no future mask")
    p.add_argument(
        "--compare", type=int, default=0, metavar="ROUNDS",
        help="run bench_train.py (ours) and this benchmark alternately ROUNDS times each, in fresh "
        "processes, and print one JSON summary with the ratio ours / reference",
    )
    args = p.parse_args(argv)
    check_step_arguments(p, args)
    if args.compare < 0:
        p.error(f"--compare must be >= 0 rounds, got {args.compare}")
    src = Path(args.vjepa2_src)
    if not (src / "src").is_dir() or not (src / "app").is_dir():  # found now, not after our own benchmark ran
        p.error(f"--vjepa2-src {src}: not a checkout of facebookresearch/vjepa2 (no src/ and app/ folders in it)")
    return args


# --------------------------------------------------------------------------------------------------
# importing the user's checkout


def import_reference(src: str):
    root = Path(src).expanduser().resolve()
    for needed in ("app/vjepa/utils.py", "src/masks/multiseq_multiblock3d.py", "src/models/vision_transformer.py"):
        if not (root / needed).is_file():
            raise SystemExit(
                f"scripts/bench_reference_vjepa2.py: {root} has no {needed}; pass --vjepa2-src a full checkout of "
                "https://github.com/facebookresearch/vjepa2 (git clone it anywhere outside this repository)"
            )
    if importlib.util.find_spec("timm") is None:
        # The reference imports timm only for drop_path; its drop_path_rate is 0 here, so identity is exact.
        def drop_path(x, drop_prob: float = 0.0, training: bool = False):
            if drop_prob and training:
                raise RuntimeError("bench_reference_vjepa2.py: timm is not installed and drop_path_rate > 0")
            return x

        timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
        layers.drop_path = drop_path
        timm.models, models.layers = models, layers
        sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
    sys.path.insert(0, str(root))
    from app.vjepa.utils import init_opt, init_video_model  # noqa: E402
    from src.masks.multiseq_multiblock3d import MaskCollator  # noqa: E402
    from src.masks.utils import apply_masks  # noqa: E402

    logging.getLogger().setLevel(logging.WARNING)  # their utils log the whole model at INFO on stdout
    commit = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return types.SimpleNamespace(
        init_opt=init_opt, init_video_model=init_video_model, MaskCollator=MaskCollator,
        apply_masks=apply_masks, root=str(root), commit=commit,
    )


# --------------------------------------------------------------------------------------------------
# the reference's training step


def build_reference_step(args: argparse.Namespace):
    """(step, ref, tokens): step(i) runs one full reference training step and returns the loss as a float;
    tokens is filled with the per-kind context / target lengths of the last step."""
    import numpy as np
    import torch.nn.functional as F

    from worldmodel.data.transforms import normalize_video

    ref = import_reference(args.vjepa2_src)
    device = torch.device(args.device)
    torch.manual_seed(0)
    mixed_precision = args.precision == "bf16"
    dtype = torch.bfloat16 if mixed_precision else torch.float32

    encoder, predictor = ref.init_video_model(
        device=device,
        patch_size=16,
        max_num_frames=args.frames,
        tubelet_size=2,
        model_name=args.encoder,
        crop_size=args.resolution,
        pred_depth=args.pred_depth,
        pred_num_heads=args.pred_heads or max(1, args.pred_dim // 32),
        pred_embed_dim=args.pred_dim,
        uniform_power=True,
        use_mask_tokens=True,
        num_mask_tokens=len(VJEPA2_MASKS) * 1,  # len(cfgs_mask) * len(dataset_fpcs)
        zero_init_mask_tokens=True,
        use_sdpa=True,
        use_silu=False,
        use_pred_silu=False,
        wide_silu=True,
        use_rope=True,
        use_activation_checkpointing=args.activation_checkpointing,
    )
    target_encoder = copy.deepcopy(encoder)
    for p in target_encoder.parameters():
        p.requires_grad = False
    encoder.train(), predictor.train(), target_encoder.train()
    collator = ref.MaskCollator(
        cfgs_mask=VJEPA2_MASKS, dataset_fpcs=[args.frames], crop_size=args.resolution, patch_size=16, tubelet_size=2
    )
    optimizer, scaler, scheduler, wd_scheduler = ref.init_opt(
        is_anneal=False, encoder=encoder, predictor=predictor, wd=0.04, final_wd=0.04,
        start_lr=1e-4, ref_lr=5.25e-4, final_lr=5.25e-4, iterations_per_epoch=300, warmup=40, num_epochs=10,
        ipe_scale=1.25, mixed_precision=mixed_precision and device.type == "cuda", betas=(0.9, 0.999), eps=1e-8,
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=mixed_precision)
    loss_exp = 1.0

    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (args.batch, 3, args.frames, args.resolution, args.resolution), dtype=torch.uint8, generator=gen)
    clip_indices = np.arange(args.frames, dtype=np.int64)
    tokens: dict[str, list[int]] = {}

    def step(i: int) -> float:
        # collate (their collator on their sample layout), then their load_clips(); uint8 -> float here
        samples = [([clips[j]], -1, [clip_indices]) for j in range(args.batch)]
        sample = collator(samples)
        all_clips, masks_enc, masks_pred = [], [], []
        for udata, m_enc, m_pred in sample:
            all_clips += [normalize_video(udata[0][0].to(device, non_blocking=True))]
            masks_enc += [[m.to(device, non_blocking=True) for m in m_enc]]
            masks_pred += [[m.to(device, non_blocking=True) for m in m_pred]]
        tokens["context"] = [m.shape[1] for m in masks_enc[0]]
        tokens["target"] = [m.shape[1] for m in masks_pred[0]]

        # app/vjepa/train.py: train_step()
        scheduler.step()
        wd_scheduler.step()

        def forward_target(c):
            with torch.no_grad():
                h = target_encoder(c)
                h = [F.layer_norm(hi, (hi.size(-1),)) for hi in h]
                return h

        def forward_context(c):
            z = encoder(c, masks_enc)
            z = predictor(z, masks_enc, masks_pred)
            return z

        def loss_fn(z, h):
            h = [ref.apply_masks(hi, mi, concat=False) for hi, mi in zip(h, masks_pred)]
            loss, n = 0, 0
            for zi, hi in zip(z, h):
                for zij, hij in zip(zi, hi):
                    loss += torch.mean(torch.abs(zij - hij) ** loss_exp) / loss_exp
                    n += 1
            loss /= n
            return loss

        with autocast:
            h = forward_target(all_clips)
            z = forward_context(all_clips)
            loss = loss_fn(z, h)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()

        m = VJEPA2_EMA
        with torch.no_grad():
            params_k, params_q = [], []
            for param_q, param_k in zip(encoder.parameters(), target_encoder.parameters()):
                params_k.append(param_k)
                params_q.append(param_q)
            torch._foreach_mul_(params_k, m)
            torch._foreach_add_(params_k, params_q, alpha=1 - m)
        return float(loss.detach())  # their float(loss), without the warning about requires_grad

    return step, ref, tokens


def run_reference(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    step, ref, tokens = build_reference_step(args)

    flops_per_step, times = time_steps(step, args, device)

    result = step_result(
        args, device, times, flops_per_step,
        implementation="vjepa2-reference", vjepa2_src=ref.root, vjepa2_commit=ref.commit,
    )
    result["tokens"] = tokens  # per mask kind, after their batch-minimum truncation (last timed step)
    return result


# --------------------------------------------------------------------------------------------------
# ours vs reference, alternately, in fresh processes


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = [
        "--encoder", args.encoder, "--frames", str(args.frames), "--resolution", str(args.resolution),
        "--batch", str(args.batch), "--pred-depth", str(args.pred_depth), "--pred-dim", str(args.pred_dim),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--masks", args.masks,
        "--device", args.device, "--precision", args.precision,
    ]
    if args.pred_heads:
        flags += ["--pred-heads", str(args.pred_heads)]
    if args.activation_checkpointing:
        flags.append("--activation-checkpointing")
    if args.threads:
        flags += ["--threads", str(args.threads)]
    return flags + ["--flop-steps", str(args.flop_steps)]


def run_one(command: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(
            f"scripts/bench_reference_vjepa2.py: {' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(out.read_text())


def compare(args: argparse.Namespace) -> dict:
    keys = ("clips_per_s", "step_ms_median", "step_ms_p90", "peak_rss_mb", "tflops", "peak_tflops", "mfu", "flops_per_step")
    ours_cmd = [sys.executable, str(HERE / "bench_train.py"), *common_flags(args)]
    ref_cmd = [sys.executable, str(Path(__file__).resolve()), "--vjepa2-src", args.vjepa2_src, *common_flags(args)]
    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.compare):
            order = ["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]  # cancel slow drifts
            for name in order:
                cmd = ours_cmd if name == "ours" else ref_cmd
                result = run_one(cmd, Path(tmp) / f"{name}{r}.json")
                runs[name].append({k: result[k] for k in keys if k in result} | {"tokens": result.get("tokens")})
                print(f"[compare] round {r + 1}/{args.compare} {name}: {result['clips_per_s']:.3f} clips/s", file=sys.stderr)

    def summary(name: str) -> dict:
        rows = runs[name]
        out = {k: statistics.median(row[k] for row in rows) for k in keys if k != "peak_rss_mb"}
        out["peak_rss_mb"] = max(row["peak_rss_mb"] for row in rows)
        out["clips_per_s_runs"] = [row["clips_per_s"] for row in rows]
        return out

    ours, reference = summary("ours"), summary("reference")
    per_round = [o["clips_per_s"] / r["clips_per_s"] for o, r in zip(runs["ours"], runs["reference"])]
    return {
        "benchmark": "train_step_compare",
        "config": common_flags(args),
        "rounds": args.compare,
        "aggregation": "median over rounds (peak_rss_mb: max)",
        "ours": ours,
        "reference": reference | {"tokens_last_run": runs["reference"][-1]["tokens"]},
        "ratio_clips_per_s": ours["clips_per_s"] / reference["clips_per_s"],
        "ratio_per_round": per_round,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = compare(args) if args.compare else run_reference(args)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
