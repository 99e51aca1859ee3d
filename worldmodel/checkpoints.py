"""Checkpoints: atomic writes and safe loads.

Every checkpoint worldmodel writes goes through `atomic_torch_save`: the bytes go to a temporary file in
the same folder, are flushed to disk, and only then replace the target with one `os.replace`. A process
killed during a save leaves the previous `last.ckpt` intact (plus, at worst, a stray `*.tmp` file).

Every checkpoint worldmodel reads goes through `safe_torch_load`, which uses `torch.load(weights_only=True)`:
only tensors and plain containers are unpickled, never code. A file that would need arbitrary code to
load is refused with an error that names it.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. not permitted on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` made atomic (serialise in memory, then `atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(buffer.getvalue(), path)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a torch checkpoint without executing code from it (`weights_only=True`).

    Raises CheckpointError naming the file for: a missing or empty file, a truncated file, a file that
    is not a torch checkpoint, and a pickle that would run code (refused, never executed).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted copy or save?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects that are not plain weights, and "
            f"loading it would run code from it ({str(err).splitlines()[0]}). Only load checkpoints "
            "you trust; re-save plain tensors (e.g. a state_dict) or use safetensors."
        ) from err
    except Exception as err:  # torch raises many types for damaged files; all mean "not usable"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, (zipfile.BadZipFile, EOFError)) or "zip archive" in msg or "central directory" in msg:
            raise CheckpointError(
                f"{path}: not a complete torch checkpoint (truncated, or not a checkpoint at all): {msg}"
            ) from err
        raise CheckpointError(f"{path}: cannot be loaded as a torch checkpoint ({type(err).__name__}: {msg})") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes, `weights_only=True` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: Any = None):
        return safe_torch_load(path, map_location=map_location)


class LastCheckpoint(Callback):
    """Keeps `dirpath/last.ckpt` current: every `every_n_steps` optimiser steps and at the last step.

    Saves happen at the end of a training batch, so a resumed run continues with the next batch of the
    same epoch (mid-epoch resume); the write is atomic through the trainer's checkpoint IO.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int = 100, filename: str = "last.ckpt") -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.path = Path(dirpath) / filename
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer) -> None:
        if trainer.global_step != self._saved_step:
            trainer.save_checkpoint(self.path)
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        last = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        if step % self.every_n_steps == 0 or last or trainer.should_stop:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # runs limited by max_epochs (or stopped early) end on an epoch boundary: save that state too
        self._save(trainer)


# ---------------------------------------------------------------------------------------------- models
@dataclass
class ModelParts:
    """What inference needs from a checkpoint: the encoder, the predictor and how they were built."""

    encoder: Any  # worldmodel.models.vit.VideoViT
    predictor: Any  # worldmodel.models.predictor.Predictor
    config: dict[str, Any]  # the pretraining hyper-parameters (JEPAPretrainer arguments)
    source: str  # the path it came from


def load_model_parts(path: str | os.PathLike, encoder: str = "target") -> ModelParts:
    """Encoder and predictor from a `worldmodel pretrain` checkpoint (.ckpt), in eval mode on the CPU.

    encoder="target" takes the EMA target encoder (what V-JEPA 2's evaluations use; with SIGReg training
    there is only one encoder), "context" the online context encoder.
    """
    from worldmodel.pretrain import JEPAPretrainer

    if encoder not in ("target", "context"):
        raise ValueError(f"encoder must be 'target' or 'context', got {encoder!r}")
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{path}: not a worldmodel pretraining checkpoint (expected 'state_dict' and 'hyper_parameters' keys)"
        )
    config = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}  # LightningCLI adds _class_path etc.
    module = JEPAPretrainer(**config)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model its hyper-parameters describe "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    chosen = module.target_encoder if (encoder == "target" and module.target_encoder is not None) else module.encoder
    return ModelParts(chosen.eval(), module.predictor.eval(), config, str(path))
