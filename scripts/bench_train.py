#!/usr/bin/env python
"""Time full JEPA training steps on synthetic uint8 clips and print one JSON object.

A step is the training work of a batch: draw the masks (collator), normalise the clip, target
encoder on the whole clip, context encoder per mask kind, predictor, loss, backward, gradient
clipping, AdamW step (torch's default implementation, as the trainer uses) and EMA update.

    python scripts/bench_train.py --encoder vit_tiny --frames 16 --resolution 112 --batch 8 \
        --pred-depth 6 --pred-dim 192 --steps 20

Output keys: clips_per_s, step_ms_median, step_ms_p90, peak_rss_mb, tflops (achieved: FLOPs counted
by torch's FlopCounterMode, averaged over --flop-steps steps since the masks change the work of each,
over the median step time), peak_tflops (a matmul of the run's precision, best of 3, measured on the
same machine in the same run, before the timed steps), mfu, plus the configuration.

What the FLOPs are: matmuls, convolutions and attention (torch has no formula for the CPU attention
kernel: one is registered here, the same as for the GPU kernels), forward and backward; elementwise
work, norms and the optimiser are not counted. With --activation-checkpointing the recomputed
forward passes are counted too (hardware FLOPs, not model FLOPs).

Not in a step: the learning-rate / weight-decay schedules, collapse monitors and Lightning's logging
(microseconds beside a step), and data loading (bench_data.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch


def peak_matmul_tflops(device: torch.device, dtype: torch.dtype, tries: int = 3) -> float:
    """The machine's matmul rate in `dtype` (square matmuls, large enough to reach the peak: 2048 on a CPU,
    8192 on a GPU), best of `tries` timings (a busy moment can only lower one)."""
    size, reps = (2048, 10) if device.type == "cpu" else (8192, 20)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(tries):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - start) / 1e12)
    return best


def _register_cpu_attention_flops() -> None:
    """torch counts no FLOPs for its CPU attention kernel (it has formulas for the GPU kernels only), so on a
    CPU every attention would count as free: give it the same formulas."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is None or backward is None or forward in fc.flop_registry:
        return

    @fc.register_flop_formula(forward, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def time_steps(step, args: argparse.Namespace, device: torch.device) -> tuple[int, list[float]]:
    """Mean FLOPs of `args.flop_steps` steps (torch's FlopCounterMode: forward + backward of every op it has
    a formula for; each step draws other masks, so one step's count is not the mean), then `args.warmup`
    untimed steps and `args.steps` timed ones. `step(i)` runs step i."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    counts = []
    for i in range(args.flop_steps):
        counter = FlopCounterMode(display=False)
        with counter:
            step(i)
        counts.append(counter.get_total_flops())
    first = args.flop_steps
    for i in range(args.warmup):
        step(first + i)
    sync(device)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(first + args.warmup + i)
        sync(device)
        times.append(time.perf_counter() - start)
    return round(sum(counts) / len(counts)), times


def emit(result: dict, out: str | None) -> None:
    """Print the benchmark's JSON, and write it to `out` too when given (atomically: the whole JSON or the
    file as it was)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        from worldmodel.checkpoints import atomic_write_bytes  # (creates the folder)

        atomic_write_bytes((text + "\n").encode(), out)


def check_step_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line errors for values that cannot work, before any model is built; --out checked writable."""
    for name in ("frames", "resolution", "batch", "pred_depth", "pred_dim", "steps", "flop_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.out:
        from worldmodel.cliutil import output_problem

        problem = output_problem(args.out, "file")
        if problem:
            p.error(f"--out: {problem}")


def step_result(args: argparse.Namespace, device: torch.device, times: list[float], flops_per_step: int,
                **extra) -> dict:
    """The benchmark's JSON (shared with bench_reference_vjepa2.py, so both report the same keys)."""
    median = statistics.median(times)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    result = {
        "benchmark": "train_step",
        **extra,
        "encoder": args.encoder,
        "frames": args.frames,
        "resolution": args.resolution,
        "batch": args.batch,
        "pred_depth": args.pred_depth,
        "pred_dim": args.pred_dim,
        "masks": args.masks,
        "precision": args.precision,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "flop_steps": args.flop_steps,
        "pred_heads": args.pred_heads or max(1, args.pred_dim // 32),
        "activation_checkpointing": bool(args.activation_checkpointing),
        "clips_per_s": args.batch / median,
        "step_ms_median": median * 1e3,
        "step_ms_p90": statistics.quantiles(times, n=10, method="inclusive")[-1] * 1e3 if len(times) > 1 else median * 1e3,
        "flops_per_step": flops_per_step,
        "tflops": flops_per_step / median / 1e12,
        "peak_tflops": peak_matmul_tflops(device, dtype),
        **peak_memory_mb(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    result["mfu"] = result["tflops"] / result["peak_tflops"]
    result["flops_counted"] = ("matmuls, convolutions and attention, forward and backward (FlopCounterMode)"
                               + ("; the forward recomputed by activation checkpointing included"
                                  if args.activation_checkpointing else ""))
    return result


def add_step_arguments(p: argparse.ArgumentParser, masks: list[str], masks_help: str | None = None) -> None:
    """The training-step configuration, shared with bench_reference_vjepa2.py so that both time the same step."""
    p.add_argument("--encoder", default="vit_tiny")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pred-depth", type=int, default=6)
    p.add_argument("--pred-dim", type=int, default=192)
    p.add_argument("--pred-heads", type=int, default=None, help="default: pred-dim / 32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--masks", default=masks[0], choices=masks, help=masks_help)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--flop-steps", type=int, default=3, help="steps whose FLOPs are counted and averaged (untimed)")
    p.add_argument("--out", default=None, help="also write the JSON here")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(p, ["vjepa2", "vjepa2+future"])
    args = p.parse_args(argv)
    check_step_arguments(p, args)

    from worldmodel.data.transforms import video_from_frames
    from worldmodel.objectives import ema_update
    from worldmodel.pretrain import JEPAPretrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    masks = [
        {"type": "multiblock", "num_blocks": 8, "spatial_scale": [0.15, 0.15]},
        {"type": "multiblock", "num_blocks": 2, "spatial_scale": [0.7, 0.7]},
    ]
    if args.masks == "vjepa2+future":
        masks.append({"type": "future", "context_fraction": [0.25, 0.75]})
    module = JEPAPretrainer(
        encoder=args.encoder,
        img_size=args.resolution,
        num_frames=args.frames,
        pred_depth=args.pred_depth,
        pred_dim=args.pred_dim,
        pred_heads=args.pred_heads or max(1, args.pred_dim // 32),
        masks=masks,
        activation_checkpointing=args.activation_checkpointing,
        collapse_every=0,
    ).to(device)
    module.train()
    collator = module.mask_collator()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.04)  # the trainer's: torch's default kernels
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (args.batch, 3, args.frames, args.resolution, args.resolution), dtype=torch.uint8, generator=gen)
    # laid out as the data loader delivers them: (C, T, H, W) views of (T, H, W, C) memory (the same values)
    clips = [video_from_frames(clip.permute(1, 2, 3, 0)) for clip in clips]

    def make_batch(step: int) -> dict:
        samples = [
            {"video": clips[i], "label": -1, "index": step * args.batch + i, "epoch": 0, "errors": []}
            for i in range(args.batch)
        ]
        batch = collator(samples)
        batch["video"] = batch["video"].to(device, non_blocking=True)
        batch["masks"] = [m.to(device) for m in batch["masks"]]
        return batch

    def step(i: int) -> None:
        batch = make_batch(i)
        with autocast:
            out = module.compute_loss(batch)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(module.target_encoder, module.encoder, 0.999)

    flops_per_step, times = time_steps(step, args, device)

    result = step_result(args, device, times, flops_per_step)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
