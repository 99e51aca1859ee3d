"""The `worldmodel` command.

    worldmodel corpus --out DIR [--videos N] [--seed S]     write the built-in procedural corpus
    worldmodel data check MANIFEST                         scan videos up front, print a table
    worldmodel pretrain [--config FILE|NAME] [overrides]    pretrain a video JEPA (LightningCLI)
    worldmodel forecast --checkpoint CKPT --video FILE --out FILE   future latents (+ --eval quality)
    worldmodel probe --checkpoint CKPT|random ...          action-anticipation probe -> metrics.json
    worldmodel export CKPT OUT_DIR                         model.safetensors + config.json
    worldmodel import-vjepa2 CKPT OUT_DIR                  V-JEPA 2 weights -> an export folder

`pretrain` is Lightning's CLI: YAML configs (`--config`), `--print_config`, dotted overrides such as
`--trainer.max_steps 100 --model.lr 1e-3 --data.batch_size 4`. With no arguments it builds the
built-in corpus if it is missing and pretrains the `tiny` config on it. Shipped configs can be named
without a path: `--config tiny`, `--config vit_large_ddp`, ... (see `worldmodel pretrain --list-configs`).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

CONFIG_PACKAGE = "worldmodel.configs"


def shipped_configs() -> dict[str, Path]:
    """Names of the YAML configs shipped with the package -> their paths."""
    folder = resources.files(CONFIG_PACKAGE)
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _attached_config(arg: str) -> str | None:
    """The NAME of `--config=NAME`, `-cNAME` or `-c=NAME` (LightningCLI's short form); None otherwise."""
    if arg.startswith("--config="):
        return arg.split("=", 1)[1]
    if arg.startswith("-c") and not arg.startswith("--") and len(arg) > 2:
        return arg[2:].removeprefix("=")
    return None


def _is_config_option(arg: str) -> bool:
    """`--config X`, `--config=X`, `-c X` or `-cX`."""
    return arg in ("--config", "-c") or _attached_config(arg) is not None


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace `--config NAME` (or `-c NAME`) by the shipped config's path when NAME is not a file."""
    configs = shipped_configs()
    out = list(argv)
    for i, arg in enumerate(out):
        value, prefix = None, None
        if arg in ("--config", "-c") and i + 1 < len(out):
            value, idx = out[i + 1], i + 1
        elif (attached := _attached_config(arg)) is not None:
            value, idx, prefix = attached, i, "--config="
        if value is None or os.path.exists(value):
            continue
        name = Path(value).stem if value.endswith(".yaml") else value
        if name not in configs:
            raise SystemExit(
                f"worldmodel pretrain: config {value!r} is neither a file nor a shipped config "
                f"(shipped: {', '.join(sorted(configs))})"
            )
        out[idx] = (prefix or "") + str(configs[name])
    return out


# ---------------------------------------------------------------------------------------------- corpus
def _corpus(args: argparse.Namespace) -> int:
    from worldmodel.data.corpus import CorpusInterrupted, generate_corpus

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"error: --out {args.out} is a file; give a folder (new, or a corpus written before)", file=sys.stderr)
        return 2
    from worldmodel.cliutil import output_problem

    problem = output_problem(args.out, "dir")
    if problem:  # found now, not after the videos are rendered
        print(f"error: --out: {problem}", file=sys.stderr)
        return 2
    try:
        summary = generate_corpus(
            args.out, num_videos=args.videos, seed=args.seed, size=args.size, fps=args.fps, workers=args.workers
        )
    except (ValueError, FileExistsError, NotADirectoryError) as err:  # the user's options or --out
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CorpusInterrupted:
        print(f"worldmodel corpus: stopped by SIGTERM; nothing was written to {args.out}", file=sys.stderr)
        return 143
    print(summary)
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from worldmodel.data.check import run_check
    from worldmodel.data.video import ClipSampler

    spacing = {"fps": args.clip_fps, "frame_step": args.clip_step, "duration_s": args.clip_duration}
    given = {k: v for k, v in spacing.items() if v is not None}
    sampler = None
    if args.clip_frames is not None or given:
        if args.clip_frames is None or len(given) != 1:
            print("error: a clip is --clip-frames N with exactly one of --clip-fps, --clip-step, --clip-duration "
                  "(e.g. the tiny config's: --clip-frames 8 --clip-step 3)", file=sys.stderr)  # fmt: skip
            return 2
        try:
            sampler = ClipSampler(num_frames=args.clip_frames, **given)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return run_check(args.manifest, out_csv=args.csv, workers=args.workers, sampler=sampler)


# ---------------------------------------------------------------------------------------------- pretrain
def pretrain_main(argv: Sequence[str]) -> int:
    """Run `worldmodel pretrain` with LightningCLI; returns an exit code."""
    argv = list(argv)
    if "--list-configs" in argv:
        for name, path in sorted(shipped_configs().items()):
            print(f"{name:20s} {path}")
        return 0
    if not any(_is_config_option(a) for a in argv):
        argv = ["--config", "tiny"] + argv
    argv = resolve_config_args(argv)

    from worldmodel.pretrain_cli import run_pretrain_cli

    run_pretrain_cli(argv)
    return 0


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldmodel",
        description="Self-supervised video world models: pretrain a latent JEPA, forecast, probe.",
    )
    from worldmodel.cliutil import DefaultsHelpFormatter
    from worldmodel.data.corpus import DEFAULT_VIDEOS

    # every subcommand's --help states its defaults
    with_defaults = functools.partial(argparse.ArgumentParser, formatter_class=DefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=with_defaults)

    p = sub.add_parser("corpus", help="write the built-in procedural kitchen corpus",
                       description="Write the built-in procedural kitchen corpus: H.264 videos, manifests, "
                                   "EPIC-KITCHENS-100-style annotations and a description of the classes.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--videos", type=int, default=None,
                   help=f"number of videos (default: {DEFAULT_VIDEOS}, the built-in size)")
    p.add_argument("--seed", type=int, default=0, help="the corpus drawn: the same seed writes the same files")
    p.add_argument("--size", type=int, default=128, help="frame height and width in pixels")
    p.add_argument("--fps", type=float, default=12.0, help="frame rate of the videos")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: up to 2)")
    p.set_defaults(func=_corpus)

    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=with_defaults)
    c = data_sub.add_parser("check", help="scan a manifest: decodable? frames, fps, size, duration")
    c.add_argument("manifest", help="manifest file or folder of videos")
    c.add_argument("--csv", "--out", dest="csv", default=None, help="also write the table to this CSV file")
    c.add_argument("--workers", type=int, default=0, help="decode-check in this many processes")
    c.add_argument("--clip-frames", type=int, default=None, metavar="N",
                   help="mark videos shorter than a clip of N frames (with one of the three below)")
    c.add_argument("--clip-fps", type=float, default=None, metavar="F", help="the clip's frame rate")
    c.add_argument("--clip-step", type=int, default=None, metavar="S", help="the clip's frame step")
    c.add_argument("--clip-duration", type=float, default=None, metavar="D", help="the clip's length in seconds")
    c.set_defaults(func=_data_check)

    from worldmodel.forecast import add_forecast_arguments, run_forecast

    p = sub.add_parser("forecast", help="predict future latents of videos; --eval measures forecast quality")
    add_forecast_arguments(p)
    p.set_defaults(func=run_forecast)

    from worldmodel.probe import add_probe_arguments, run_probe

    p = sub.add_parser("probe", help="action-anticipation / classification probes on the frozen encoder")
    add_probe_arguments(p)
    p.set_defaults(func=run_probe)

    from worldmodel.checkpoints import add_export_arguments, add_import_arguments, run_export, run_import

    p = sub.add_parser("export", help="write model.safetensors + config.json from a checkpoint")
    add_export_arguments(p)
    p.set_defaults(func=run_export)

    p = sub.add_parser("import-vjepa2", help="convert a V-JEPA 2 checkpoint into a worldmodel export folder")
    add_import_arguments(p)
    p.set_defaults(func=run_import)

    sub.add_parser(
        "pretrain",
        help="pretrain a video JEPA (LightningCLI: --config, --print_config, dotted overrides)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "pretrain":
        return pretrain_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "corpus" and args.videos is None:
        from worldmodel.data.corpus import DEFAULT_VIDEOS

        args.videos = DEFAULT_VIDEOS
    if args.command == "corpus" and args.workers is None:
        args.workers = min(2, os.cpu_count() or 1)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
