"""Small helpers the command lines share: JSON that every reader accepts, and --device checked up front.

- `json_text`: `json.dumps` with every non-finite float as null (JSON has no NaN or Infinity, and strict
  readers reject them) and numpy scalars as plain numbers.
- `resolve_device`: a --device value checked before any work is done, with a one-line `DeviceError`.
- `output_problem`: why an --out path cannot be written (a file where a folder must be, a folder where
  a file must be, a file among its parents), found before any work rather than when the results are.
- `DefaultsHelpFormatter`: --help that states every option's default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def json_safe(value: Any) -> Any:
    """`value` with every float that is not finite (NaN, +-inf) as None, numpy scalars as Python numbers,
    tuples as lists and mapping keys as strings: what JSON can hold. A standard error over one sample is
    inf in memory and null in a file; JSON has no Infinity or NaN, and strict readers reject them."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any, **dumps_options: Any) -> str:
    """`json.dumps` of `json_safe(value)` that refuses NaN and Infinity (`allow_nan=False`), so that every
    file worldmodel writes is valid JSON."""
    return json.dumps(json_safe(value), allow_nan=False, **dumps_options)


class DeviceError(ValueError):
    """A --device value that torch cannot use on this machine; the message says why and what to pass."""


def resolve_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """A device name checked before any work is done: "auto" (cuda when available, else cpu), "cpu",
    "cuda", "cuda:N", "mps", ... Raises DeviceError with a one-line message that starts with
    f"{option} {name}:" when torch does not know the name or cannot use the device here."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = f"{option} {name}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(
            f"{where}: not a device name torch knows; pass auto, cpu, or for an NVIDIA GPU cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
                   else f"torch {torch.__version__} is built with CUDA {torch.version.cuda}, but no GPU is visible")
            raise DeviceError(f"{where}: CUDA is not available on this machine ({why}); use {option} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 .. cuda:{count - 1}"
            raise DeviceError(f"{where}: this machine has {count} CUDA device{'s' if count != 1 else ''} ({have})")
        return device
    if device.type == "meta":
        raise DeviceError(f"{where}: the meta device holds no data; pass auto, cpu, cuda or cuda:N")
    if device.type != "cpu":
        try:  # mps, xpu, ...: whether this build and machine can hold a tensor there
            torch.empty(0, device=device)
        except Exception as err:  # torch raises RuntimeError, AssertionError, ... for an unusable backend
            msg = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0].rstrip(".")[:160]
            raise DeviceError(
                f"{where}: torch {torch.__version__} cannot use it on this machine ({msg}); use {option} cpu"
            ) from None
    return device


def existing_ancestor(path: str | os.PathLike) -> Path:
    """`path` if it exists, else its nearest parent that does (the root at worst)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_problem(path: str | os.PathLike, kind: str) -> str | None:
    """Why `path` cannot be written as a `kind` ("dir": a folder to write files into; "file": a file to
    create or replace), or None. Checks what exists now: the path itself and the first existing parent."""
    path = Path(path)
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    if path.exists():
        if kind == "dir" and not path.is_dir():
            return f"{path} is a file, not a folder to write the results into"
        if kind == "file" and path.is_dir():
            return f"{path} is a folder; name the file to write (e.g. {path / 'out.safetensors'})"
        target = path if kind == "dir" else path.parent
    else:
        target = existing_ancestor(path.parent)
        if not target.is_dir():
            return f"{target} is a file, so {path} cannot be created below it"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"{target} is not writable (permissions), so {path} cannot be written"
    return None


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse's help, with "(default: X)" after each option whose default is worth saying: not None, not
    off (a store_true flag), and not already stated in its help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text.lower()
            or default is None
            or default is False
            or (isinstance(default, str) and default == argparse.SUPPRESS)
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"
