"""Checkpoints: atomic writes and safe loads; model files: load, export to safetensors, import V-JEPA 2.

Every checkpoint worldmodel writes goes through `atomic_torch_save`: the bytes go to a temporary file in
the same folder, are flushed to disk, and only then replace the target with one `os.replace`. A process
killed during a save leaves the previous `last.ckpt` intact (plus, at worst, a stray `*.tmp` file).

The temporary file is given the mode a plain `open(path, "w")` would give a new file (0666 less the
umask), so checkpoints and exports are as readable as any other file the user writes.

Every checkpoint worldmodel reads goes through `safe_torch_load`, which uses `torch.load(weights_only=True)`:
only tensors and plain containers are unpickled, never code. A file that would need arbitrary code to
load is refused with an error that names it; a file that is not a torch checkpoint at all (an error
page saved by a failed download, a text file) is named as such.

Models for inference (`load_model_parts` -> `ModelParts`: encoder, predictor, config) come from one of:

- a `worldmodel pretrain` checkpoint (.ckpt, or its run folder);
- an exported folder, written by `export_model` / `worldmodel export`:
      model.safetensors   encoder.* (the chosen encoder), [context_encoder.*], predictor.* tensors
      config.json         variant, geometry, rope layout, normalisation, predictor sizes, mask kinds,
                          the exact build recipe ("architecture"), source hyper-parameters, provenance
  read with safetensors (no pickle) and built from config.json (no Lightning module);
- a V-JEPA 2 checkpoint (Meta's released vitl/vith/vitg .pt files), through `load_vjepa2`: keys
  renamed, variant inferred from shapes, rotary layout "vjepa2", so our models give the reference's
  outputs (`worldmodel import-vjepa2 CHECKPOINT OUT_DIR` writes it as an exported folder).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import json
import math
import os
import pickle
import pickletools
import re
import sys
import tempfile
import uuid
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn

from worldmodel.models.predictor import Predictor
from worldmodel.models.vit import VIT_SIZES, VideoViT, VideoViTConfig


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


def new_file_mode() -> int:
    """The permission bits `open(path, "w")` gives a new file: 0o666 less the process umask.

    `tempfile.mkstemp` creates its file with 0o600 and `os.replace` keeps that mode, so the atomic
    writers set this one on the temporary file before the replace.
    """
    try:  # Linux reports the umask without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # elsewhere the only way to read it is to set it; 0o077 meanwhile errs on the private side
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write `data` to `path` so that readers see either the old file or the complete new one.

    The file gets the mode a plain `open(path, "w")` would give a new file (`new_file_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle, which opens with PROTO (0x80) and its protocol (2-5)
_PICKLE_OPCODES = frozenset(op.code.encode("latin-1")[0] for op in pickletools.opcodes)


def _looks_like_checkpoint(head: bytes) -> bool:
    """Whether a file's first bytes are those of a torch.save file (zip, or a legacy protocol 2+ pickle)."""
    if head.startswith(ZIP_MAGIC):
        return True
    return head.startswith(PICKLE_MAGIC) and len(head) > 1 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL


def _not_a_checkpoint(path: Path, head: bytes) -> str:
    """The error for a file whose first bytes are those of neither torch.save format."""
    text = head.lstrip()
    if text.startswith(b"<"):
        what = ("it looks like an HTML or XML page, such as the error page (AccessDenied, NotFound) that a failed "
                "download saves under the file's name; download it again")
    elif text.startswith((b"{", b"[")):
        what = "it looks like a JSON document"
    elif len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        what = ("it looks like a safetensors file; an exported model is loaded from its folder "
                "(model.safetensors + config.json)")
    else:
        what = "a file of another kind (a text file, another archive format, a damaged download?)"
    return (
        f"{path}: not a PyTorch checkpoint (it starts with {head[:16]!r}; a torch checkpoint starts with "
        f"{ZIP_MAGIC!r}, or {PICKLE_MAGIC!r} in the legacy format): {what}"
    )


def _unpickling_detail(err: Exception) -> str:
    """The line of a weights_only UnpicklingError that says what was refused (torch puts it after a preamble)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line
    return lines[0] if lines else type(err).__name__


def _invalid_opcode(detail: str) -> bool:
    """Whether torch's refusal names a byte that is no pickle opcode at all: damaged data, not a refused object."""
    match = re.search(r"Unsupported operand (\d+)", detail)
    return match is not None and int(match.group(1)) not in _PICKLE_OPCODES


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a torch checkpoint without executing code from it (`weights_only=True`).

    Raises CheckpointError naming the file for: a missing or empty file, a file that is not a torch
    checkpoint (its first bytes are neither a zip archive's nor a pickle's), a truncated or damaged file,
    and a pickle that would run code (refused, never executed).

    mmap=True memory-maps the tensors of a (zip-format) checkpoint instead of reading them all: only the
    tensors that are used get read, which matters for multi-GB files that also hold optimiser state.
    Files in the legacy format are read normally.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted copy or save?)")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from err
    if not _looks_like_checkpoint(head):
        raise CheckpointError(_not_a_checkpoint(path, head))
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickling_detail(err)
        if _invalid_opcode(detail):
            raise CheckpointError(
                f"{path}: damaged, or not a torch checkpoint: its pickle data holds a byte that is no pickle "
                f"opcode ({detail})"
            ) from err
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects that are not plain weights, and "
            f"loading it would run code from it ({detail}). Only load checkpoints "
            "you trust; re-save plain tensors (e.g. a state_dict) or use safetensors."
        ) from err
    except Exception as err:  # torch raises many types for damaged files; all mean "not usable"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        # a zip archive (torch's format) without its central directory at the end was cut short
        cut_zip = head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path)
        if cut_zip or isinstance(err, (zipfile.BadZipFile, EOFError)) or "zip archive" in msg or "central directory" in msg:
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


def optimizer_stepped(trainer) -> bool:
    """Whether the training batch that just ended finished an optimiser step (False on the batches that
    only accumulate gradients, `trainer.accumulate_grad_batches` > 1)."""
    should_accumulate = getattr(trainer.fit_loop.epoch_loop, "_should_accumulate", None)
    return not should_accumulate() if callable(should_accumulate) else True


def reached_max_steps(trainer) -> bool:
    """Whether the run has reached `trainer.max_steps` (False for runs bounded otherwise)."""
    return trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step


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

    @property
    def saved_step(self) -> int:
        """The global step of the last save in this process (-1: none yet)."""
        return self._saved_step

    def _save(self, trainer) -> None:
        if trainer.global_step == self._saved_step:
            return
        # an update can make the weights non-finite while its own loss was finite (the next loss is what
        # stops the run): such a state must not replace the last good checkpoint
        finite = _all_finite(trainer.lightning_module)
        if trainer.world_size > 1:  # the same decision on every rank: saving is collective (FSDP gathers)
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            if trainer.is_global_zero:
                kept = f"it keeps step {self._saved_step}" if self._saved_step >= 0 else "it keeps what it held"
                print(f"[worldmodel] warning: the weights at step {trainer.global_step} hold inf / NaN (an update "
                      f"diverged): {self.path} is not overwritten; {kept}", flush=True)  # fmt: skip
            return
        # the full state (optimizer, loops, sampler) that exact resume needs; saying so also keeps
        # Lightning from logging that `weights_only` defaulted to False at every save
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:  # every process decides --resume auto from its own view of the run folder
            steps = trainer.strategy.all_gather(torch.tensor(trainer.global_step, device=pl_module.device))
            if bool((steps != steps.reshape(-1)[0]).any()):
                raise ValueError(
                    f"the processes start from different steps ({sorted(set(steps.reshape(-1).tolist()))}): they see "
                    f"different checkpoints at {self.path}. The run folder must be on storage that every node shares "
                    "(only rank 0 writes checkpoints)"
                )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not optimizer_stepped(trainer):
            return  # mid-way through gradient accumulation: a checkpoint would count batches whose gradients it lacks
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 or reached_max_steps(trainer) or trainer.should_stop:
            self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning's own SIGTERM handling (a Trainer without `StopOnSignal`, or another Lightning version
        # whose handler StopOnSignal does not replace at once) ends the run at a batch's or an epoch's end, where
        # nothing may have saved: save there too, when it is a whole optimiser step (every rank gets the
        # exception at the same point)
        if isinstance(exception, SIGTERMException) and optimizer_stepped(trainer) and trainer.global_step > 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # runs limited by max_epochs (or stopped early) end on an epoch boundary: save that state too
        if not optimizer_stepped(trainer) and trainer.global_step != self._saved_step and trainer.is_global_zero:
            print(
                f"[worldmodel] note: training stopped part-way through gradient accumulation (step "
                f"{trainer.global_step}); {self.path} counts the batches accumulated since that step but not "
                "their gradients, so a run resumed from it differs slightly from an uninterrupted one",
                flush=True,
            )
        self._save(trainer)


def _all_finite(module: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of `module` is finite (one device sync)."""
    tensors = [t.detach() for t in (*module.parameters(), *module.buffers()) if t.is_floating_point() and t.numel()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# ---------------------------------------------------------------------------------------------- models
ENCODER_ROLES = ("target", "context")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXPORT_FORMAT = "worldmodel-export"
EXPORT_VERSION = 1
PREDICTOR_POSITIONS = ("clip", "reference")

# V-JEPA 2 facts (reference notes, sections 1, 2, 6 and 8.6)
VJEPA2_IMG_SIZE = 256  # the released checkpoints; 384 for "vitg-384"
VJEPA2_NUM_FRAMES = 64  # torch.hub and HuggingFace build their models for 64 frames
VJEPA2_FPS = 4.0  # every V-JEPA 2 pretraining and cooldown config samples clips at 4 fps
VJEPA2_PRED_HEAD_DIM = 32  # its predictor: 384 dims = 12 heads of 32
VJEPA2_ENTRIES = {"target": "target_encoder", "context": "encoder"}  # our role -> checkpoint entry
_WRAPPER_PREFIXES = ("module.", "backbone.", "_orig_mod.")  # DDP, MultiSeqWrapper, torch.compile
_UNUSED_KEYS = ("pos_embed", "predictor_pos_embed")  # position tables, unused with RoPE


class SquareGridPredictor(Predictor):
    """A `Predictor` that places its tokens the way V-JEPA 2's reference predictor does.

    The reference predictor turns a flat token index into (t, h, w) with a square grid of
    `square_grid = img_size // patch_size` tokens per side fixed when the model is built
    (t = idx // g², h = (idx mod g²) // g, w = idx mod g), whatever the clip's real grid. For square
    clips at the build size this is the clip's own grid and the plain `Predictor` gives the same result;
    for other sizes (non-square, or square at another resolution) the reference's positions disagree
    with the encoder's. This class reproduces them exactly, for output-identical comparisons with the
    reference; the plain `Predictor` (positions of the clip's real grid) is the default for imports.
    """

    def __init__(self, *args: Any, square_grid: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if square_grid < 1:
            raise ValueError(f"worldmodel/checkpoints.py: square_grid must be >= 1, got {square_grid}")
        self.square_grid = int(square_grid)

    def extra_repr(self) -> str:
        return f"square_grid={self.square_grid}"

    def forward(
        self,
        context: Tensor,
        context_idx: Tensor,
        context_valid: Tensor | None,
        target_idx: Tensor,
        target_valid: Tensor | None,
        grid: tuple[int, int, int],
        mask_kind: int = 0,
    ) -> Tensor:
        # token positions come from (rows, columns) of `grid` only: substitute the reference's square
        square = (grid[0], self.square_grid, self.square_grid)
        return super().forward(context, context_idx, context_valid, target_idx, target_valid, square, mask_kind)


@dataclass
class ModelParts:
    """What inference needs from a checkpoint: the encoder, the predictor and how they were built."""

    encoder: Any  # worldmodel.models.vit.VideoViT
    predictor: Any  # worldmodel.models.predictor.Predictor
    config: dict[str, Any]  # pretraining hyper-parameters (JEPAPretrainer arguments), or the import config
    source: str  # the path it came from
    data_config: dict[str, Any] | None = None  # the data hyper-parameters it was trained with (clip timing)
    encoder_role: str = "target"  # what `encoder` is: "target", "context" or "shared" (one encoder)


@dataclass
class _LoadedModel:
    """Everything read from one source; `encoders` maps a role to its encoder (shared: the same module)."""

    encoders: dict[str, nn.Module]
    predictor: Predictor
    config: dict[str, Any]
    data_config: dict[str, Any] | None
    source: dict[str, Any]  # {"format": ..., "path": ...}
    mask_kinds: list[Any] | None

    @property
    def shared(self) -> bool:
        return self.config.get("target") == "sigreg" or (
            len(self.encoders) == 2 and self.encoders["target"] is self.encoders["context"]
        )

    def actual_role(self, role: str) -> str:
        """The role of the encoder that answers for `role` (a folder exported with one encoder has one)."""
        return role if role in self.encoders else next(iter(self.encoders))

    def parts(self, role: str, path: Path) -> ModelParts:
        actual = self.actual_role(role)
        encoder = self.encoders[actual]
        described = "shared" if self.shared else actual
        return ModelParts(encoder.eval(), self.predictor.eval(), self.config, str(path), self.data_config, described)


def _check_role(encoder: str, allow_both: bool = False) -> None:
    choices = ENCODER_ROLES + (("both",) if allow_both else ())
    if encoder not in choices:
        raise ValueError(f"encoder must be one of {choices}, got {encoder!r}")


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, an exported folder, or a pretraining run folder -> the path to read.

    `model.safetensors` or `config.json` given directly stand for their folder; a run folder stands for
    its `checkpoints/last.ckpt` (or `last.ckpt`).
    """
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS_FILE, CONFIG_FILE):
        return path.parent
    if path.is_dir():
        if (path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists():
            return path
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"{path}: a folder with neither an exported model ({WEIGHTS_FILE} + {CONFIG_FILE}) nor a run's "
            "checkpoints/last.ckpt; pass a checkpoint file, a pretraining run folder or an exported folder"
        )
    return path


def load_model_parts(path: str | os.PathLike, encoder: str = "target", **vjepa2_options: Any) -> ModelParts:
    """Encoder and predictor, in eval mode on the CPU, from any of:

    - a `worldmodel pretrain` checkpoint (.ckpt; or its run folder, read at checkpoints/last.ckpt);
    - an exported folder (`model.safetensors` + `config.json`, see `export_model`): read with
      safetensors, no pickle at all, no Lightning module;
    - a V-JEPA 2 checkpoint (.pt with "encoder" / "target_encoder" / "predictor" entries), read by
      `load_vjepa2` with `vjepa2_options` (img_size, num_frames, predictor_positions, ...).

    encoder="target" takes the EMA target encoder (what V-JEPA 2's evaluations use; with SIGReg training
    there is only one encoder), "context" the online context encoder. A folder exported with one encoder
    only gives that one for either choice (`ModelParts.encoder_role` says which it is).
    """
    _check_role(encoder)
    loaded, path = _read_model(path, (encoder,), **vjepa2_options)
    return loaded.parts(encoder, path)


def load_model_roles(
    path: str | os.PathLike, roles: tuple[str, ...] = ENCODER_ROLES, **vjepa2_options: Any
) -> dict[str, ModelParts]:
    """`load_model_parts` for several encoder roles from ONE read of the source: {role: ModelParts}.
    The parts share the predictor (and the encoder where the source has one: SIGReg, one-encoder exports)."""
    for role in roles:
        _check_role(role)
    loaded, resolved = _read_model(path, tuple(roles), **vjepa2_options)
    return {role: loaded.parts(role, resolved) for role in roles}


def _read_model(path: str | os.PathLike, roles: tuple[str, ...], **vjepa2_options: Any) -> tuple[_LoadedModel, Path]:
    path = resolve_model_path(path)
    if path.is_dir():
        if vjepa2_options:
            raise ValueError(f"{path}: V-JEPA 2 import options {sorted(vjepa2_options)} do not apply to an exported folder")
        return _read_exported(path, roles), path
    ckpt = safe_torch_load(path, mmap=True)
    if _is_pretrain_checkpoint(ckpt):
        if vjepa2_options:
            raise ValueError(
                f"{path}: is a worldmodel pretraining checkpoint; V-JEPA 2 import options {sorted(vjepa2_options)} "
                "do not apply"
            )
        return _read_pretrain(ckpt, path), path
    if _is_vjepa2_checkpoint(ckpt):
        if "img_size" not in vjepa2_options:  # V-JEPA 2 files do not record it; 384 px models exist
            warnings.warn(
                f"{path}: a V-JEPA 2 checkpoint holds no resolution; read as trained at {VJEPA2_IMG_SIZE} px (clips are "
                f"cropped to it). For one trained at another size (vitg-384) pass it: `--img-size 384` to `worldmodel forecast` "
                f"or `worldmodel probe`, WorldModel.load(path, img_size=384) in Python; or import it once with that size, "
                f"`worldmodel import-vjepa2 {path} DIR --img-size 384`, then use DIR",
                stacklevel=2,
            )
        return _read_vjepa2(ckpt, path, roles, **vjepa2_options), path
    keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(
        f"{path}: not a model checkpoint worldmodel knows: expected a `worldmodel pretrain` checkpoint "
        f"('state_dict' and 'hyper_parameters') or a V-JEPA 2 checkpoint ('encoder', 'target_encoder', "
        f"'predictor'); found {keys}"
    )


def is_vjepa2_source(path: str | os.PathLike) -> bool:
    """Whether `path` is a V-JEPA 2 checkpoint file (read memory-mapped: cheap even for a large one), the one
    model source whose file records no resolution. False for folders, other checkpoints and unreadable paths
    (loading them says what is wrong)."""
    try:
        path = resolve_model_path(path)
        return path.is_file() and _is_vjepa2_checkpoint(safe_torch_load(path, mmap=True))
    except (CheckpointError, OSError):
        return False


def _is_pretrain_checkpoint(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and "state_dict" in ckpt and "hyper_parameters" in ckpt


def _is_vjepa2_checkpoint(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and "state_dict" not in ckpt and any(k in ckpt for k in ("encoder", "target_encoder"))


def _public(mapping: Any) -> dict[str, Any] | None:
    """A hyper-parameter dict without LightningCLI's private keys (_class_path etc.)."""
    if not mapping:
        return None
    return {k: v for k, v in dict(mapping).items() if not str(k).startswith("_")}


def _read_pretrain(ckpt: dict[str, Any], path: Path) -> _LoadedModel:
    from worldmodel.pretrain import DEFAULT_MASKS, JEPAPretrainer

    config = _public(ckpt["hyper_parameters"]) or {}
    try:
        module = JEPAPretrainer(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its hyper-parameters do not build a JEPAPretrainer ({err})") from err
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model its hyper-parameters describe "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    target = module.target_encoder if module.target_encoder is not None else module.encoder
    return _LoadedModel(
        encoders={"target": target, "context": module.encoder},
        predictor=module.predictor,
        config=config,
        data_config=_public(ckpt.get("datamodule_hyper_parameters")),
        source={"format": "worldmodel-pretrain", "path": str(path)},
        mask_kinds=config.get("masks") or DEFAULT_MASKS,
    )


# ---------------------------------------------------------------------------------------------- V-JEPA 2
def load_vjepa2(
    path: str | os.PathLike,
    encoder: str = "target",
    *,
    img_size: int | tuple[int, int] = VJEPA2_IMG_SIZE,
    num_frames: int = VJEPA2_NUM_FRAMES,
    predictor_positions: str = "clip",
    num_heads: int | None = None,
    pred_num_heads: int | None = None,
) -> ModelParts:
    """Encoder + predictor of a V-JEPA 2 checkpoint (Meta's released .pt files or a run's own), as ours.

    encoder: "target" (the "target_encoder" entry, EMA; what V-JEPA 2's evaluations use) or "context"
        (the "encoder" entry; what torch.hub and its demo load, and what its predictor was trained on).
    img_size, num_frames: the clip geometry the model is described with (both nominal: RoPE runs on any
        size). Released checkpoints: 256 px (384 for vitg-384), 64 frames.
    predictor_positions: "clip" (default): predictor tokens sit at their position in the clip's own
        (t, h, w) grid, as in the encoder. "reference": V-JEPA 2's square grid of img_size // patch
        tokens per side (`SquareGridPredictor`): identical to "clip" for square clips at img_size,
        identical to the reference code for every clip.
    num_heads, pred_num_heads: only for checkpoints of sizes outside the known variants (heads are not
        visible in the weights' shapes).

    The variant is inferred from shapes: the width names it (192 vit_tiny, 384 vit_small, 768 vit_base,
    1024 vit_large, 1280 vit_huge, 1408 vit_giant = V-JEPA 2's vit_giant_xformers, 22 heads of 64) and
    gives the head count; depth, patch, tubelet, MLP width and qkv bias are read from the weights; the
    predictor's heads are 32 dims wide as in V-JEPA 2. Both models use the "vjepa2" rotary layout.
    """
    _check_role(encoder)
    path = Path(path)
    ckpt = _load_vjepa2_file(path)
    loaded = _read_vjepa2(
        ckpt, path, (encoder,), img_size=img_size, num_frames=num_frames, predictor_positions=predictor_positions,
        num_heads=num_heads, pred_num_heads=pred_num_heads,
    )
    return loaded.parts(encoder, path)


def _load_vjepa2_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; pass the V-JEPA 2 checkpoint file (.pt)")
    ckpt = safe_torch_load(path, mmap=True)
    if not _is_vjepa2_checkpoint(ckpt):
        if _is_pretrain_checkpoint(ckpt):
            what = "it is a worldmodel pretraining checkpoint (load it with load_model_parts; `worldmodel export` it)"
        else:
            what = f"found {sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__}"
        raise CheckpointError(
            f"{path}: not a V-JEPA 2 checkpoint (expected 'encoder', 'target_encoder' and 'predictor' entries); {what}"
        )
    return ckpt


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _clean_state(ckpt: dict[str, Any], entry: str, path: Path) -> dict[str, Tensor]:
    """One entry of a V-JEPA 2 checkpoint -> {our name: tensor}: wrapper prefixes and position tables gone."""
    state = ckpt.get(entry)
    if state is None:
        present = [k for k in ("encoder", "target_encoder", "predictor") if k in ckpt]
        hint = ""
        if entry == "target_encoder":
            hint = "; import the context encoder instead (--encoder context / encoder='context')"
        raise CheckpointError(f"{path}: the V-JEPA 2 checkpoint has no {entry!r} entry (it has {present}){hint}")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: entry {entry!r} is not a state dict of tensors (got {type(state).__name__})")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {entry!r} holds {key!r}: {type(value).__name__}, not a tensor")
        name = _strip_wrappers(key)
        if name in _UNUSED_KEYS:
            continue
        if name in out:
            raise CheckpointError(f"{path}: entry {entry!r} has {name!r} twice (with and without a wrapper prefix)")
        out[name] = value
    return out


def _layer_count(state: dict[str, Tensor], prefix: str, path: Path, entry: str) -> int:
    ids = {int(m.group(1)) for key in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", key))}
    if ids != set(range(len(ids))):
        raise CheckpointError(f"{path}: entry {entry!r} has {prefix} {sorted(ids)}: not numbered 0..n-1")
    return len(ids)


def _require(state: dict[str, Tensor], key: str, ndim: int, path: Path, entry: str) -> Tensor:
    if key not in state:
        raise CheckpointError(
            f"{path}: entry {entry!r} has no {key!r}: not a V-JEPA 2 {entry.replace('_', ' ')} "
            f"(its tensors: {sorted(state)[:6]}...)"
        )
    tensor = state[key]
    if tensor.ndim != ndim:
        raise CheckpointError(f"{path}: {entry}.{key} has shape {tuple(tensor.shape)}, expected {ndim} dims")
    return tensor


def _mlp_ratio(dim: int, hidden: int) -> float:
    """A ratio r with int(dim * r) == hidden (what Block computes), as close to hidden / dim as floats allow."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _as_size(size: Any) -> int | tuple[int, int]:
    return tuple(int(s) for s in size) if isinstance(size, (list, tuple)) else int(size)


def _vjepa2_encoder_config(
    state: dict[str, Tensor], path: Path, entry: str, img_size: int | tuple[int, int], num_frames: int,
    num_heads: int | None,
) -> tuple[str, VideoViTConfig]:
    """Infer the variant and our VideoViTConfig from the encoder's tensor shapes."""
    embed = _require(state, "patch_embed.proj.weight", 5, path, entry)  # (D, C, tubelet, p, p)
    width, in_chans, tubelet, patch, patch_w = embed.shape
    if patch != patch_w:
        raise CheckpointError(f"{path}: {entry}.patch_embed.proj.weight has non-square patches {patch}x{patch_w}")
    depth = _layer_count(state, "blocks", path, entry)
    if depth == 0:
        raise CheckpointError(f"{path}: entry {entry!r} has no transformer blocks (blocks.0...)")
    hidden = _require(state, "blocks.0.mlp.fc1.weight", 2, path, entry).shape[0]
    by_width = {size["embed_dim"]: name for name, size in VIT_SIZES.items()}
    if num_heads is None and width not in by_width:
        known = ", ".join(f"{w} ({n})" for w, n in sorted(by_width.items()))
        raise CheckpointError(
            f"{path}: encoder width {width} (depth {depth}) matches no V-JEPA 2 variant (known widths: {known}); "
            "if it is another size, pass its head count (num_heads= / --num-heads)"
        )
    variant = by_width.get(width, "custom") if num_heads is None else "custom"
    base = VIT_SIZES.get(variant, {})
    heads = num_heads if num_heads is not None else base["num_heads"]
    if width % heads:
        raise CheckpointError(f"{path}: encoder width {width} is not divisible by {heads} heads")
    ratio = base.get("mlp_ratio", 4.0)
    if int(width * ratio) != hidden:
        ratio = _mlp_ratio(width, hidden)
    sizes = [img_size] * 2 if isinstance(img_size, int) else list(img_size)
    if any(s % patch for s in sizes) or num_frames % tubelet:
        raise CheckpointError(
            f"{path}: img_size {img_size} / num_frames {num_frames} are not multiples of the checkpoint's patch "
            f"{patch} / tubelet {tubelet}; pass sizes that are"
        )
    cfg = VideoViTConfig(
        img_size=img_size, patch_size=patch, num_frames=num_frames, tubelet_size=tubelet, in_chans=in_chans,
        embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=ratio,
        qkv_bias="blocks.0.attn.qkv.bias" in state, norm_eps=1e-6, rope_layout="vjepa2",
    )
    return variant, cfg


def _vjepa2_predictor_state(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Stack the reference's `mask_tokens.{i}` (1, 1, P) into our one (num_mask_tokens, P) tensor."""
    ids = sorted(int(m.group(1)) for key in state if (m := re.fullmatch(r"mask_tokens\.(\d+)", key)))
    if "mask_tokens" in state and not ids:  # already our layout
        return state
    if not ids or ids != list(range(len(ids))):
        raise CheckpointError(
            f"{path}: predictor has mask tokens {ids}; expected mask_tokens.0 .. mask_tokens.n-1 "
            "(a V-JEPA 2 predictor built with use_mask_tokens)"
        )
    out = {k: v for k, v in state.items() if not re.fullmatch(r"mask_tokens\.\d+", k)}
    out["mask_tokens"] = torch.cat([state[f"mask_tokens.{i}"].reshape(1, -1) for i in ids])  # (num_mask_tokens, P)
    return out


def _vjepa2_predictor_arch(
    state: dict[str, Tensor], path: Path, embed_dim: int, pred_num_heads: int | None
) -> dict[str, Any]:
    if any(key.startswith(("action_encoder", "state_encoder", "extrinsics_encoder")) for key in state):
        raise CheckpointError(
            f"{path}: its predictor is V-JEPA 2-AC's action-conditioned predictor, which worldmodel does not "
            "import; use a V-JEPA 2 pretraining checkpoint (vitl.pt, vith.pt, vitg.pt, vitg-384.pt)"
        )
    embed = _require(state, "predictor_embed.weight", 2, path, "predictor")  # (P, D)
    pred_dim, in_dim = embed.shape
    if in_dim != embed_dim:
        raise CheckpointError(f"{path}: the predictor takes {in_dim}-dim tokens but the encoder makes {embed_dim}")
    depth = _layer_count(state, "predictor_blocks", path, "predictor")
    if depth == 0:
        raise CheckpointError(f"{path}: the predictor has no blocks (predictor_blocks.0...)")
    heads = pred_num_heads
    if heads is None:
        if pred_dim % VJEPA2_PRED_HEAD_DIM:
            raise CheckpointError(
                f"{path}: predictor width {pred_dim} matches no V-JEPA 2 predictor ({VJEPA2_PRED_HEAD_DIM}-dim "
                "heads); pass its head count (pred_num_heads= / --pred-num-heads)"
            )
        heads = pred_dim // VJEPA2_PRED_HEAD_DIM
    hidden = _require(state, "predictor_blocks.0.mlp.fc1.weight", 2, path, "predictor").shape[0]
    return dict(
        embed_dim=embed_dim, pred_dim=pred_dim, depth=depth, num_heads=heads, mlp_ratio=_mlp_ratio(pred_dim, hidden),
        num_mask_tokens=state["mask_tokens"].shape[0], rope_layout="vjepa2",
        qkv_bias="predictor_blocks.0.attn.qkv.bias" in state, norm_eps=1e-6,
    )


def _read_vjepa2(
    ckpt: dict[str, Any],
    path: Path,
    roles: tuple[str, ...],
    img_size: int | tuple[int, int] = VJEPA2_IMG_SIZE,
    num_frames: int = VJEPA2_NUM_FRAMES,
    predictor_positions: str = "clip",
    num_heads: int | None = None,
    pred_num_heads: int | None = None,
) -> _LoadedModel:
    if predictor_positions not in PREDICTOR_POSITIONS:
        raise ValueError(f"predictor_positions must be one of {PREDICTOR_POSITIONS}, got {predictor_positions!r}")
    img_size = _as_size(img_size)
    encoders: dict[str, nn.Module] = {}
    variant, cfg = "", None
    for role in roles:
        entry = VJEPA2_ENTRIES[role]
        state = _clean_state(ckpt, entry, path)
        variant, cfg = _vjepa2_encoder_config(state, path, entry, img_size, num_frames, num_heads)
        encoders[role] = _load_exact(lambda cfg=cfg: VideoViT(cfg), state, path, entry, copy=True)
    pred_state = _vjepa2_predictor_state(_clean_state(ckpt, "predictor", path), path)
    arch = _vjepa2_predictor_arch(pred_state, path, cfg.embed_dim, pred_num_heads)
    if predictor_positions == "reference":
        arch["square_grid"] = (img_size if isinstance(img_size, int) else img_size[0]) // cfg.patch_size
    predictor = _load_exact(lambda: build_predictor(arch), pred_state, path, "predictor", copy=True)
    base = VIT_SIZES.get(variant, {})
    overrides = {k: getattr(cfg, k) for k in ("embed_dim", "depth", "num_heads", "mlp_ratio") if base.get(k) != getattr(cfg, k)}
    config = {
        "format": "vjepa2",
        "variant": variant,
        "encoder": variant,  # the key pretraining configs use for the variant
        "encoder_kwargs": {**overrides, "rope_layout": "vjepa2"},
        "img_size": list(img_size) if isinstance(img_size, tuple) else img_size,
        "num_frames": num_frames,
        "patch_size": cfg.patch_size,
        "tubelet_size": cfg.tubelet_size,
        "rope_layout": "vjepa2",
        "normalization": _normalization(),
        "pred_depth": arch["depth"],
        "pred_dim": arch["pred_dim"],
        "pred_heads": arch["num_heads"],
        "num_mask_tokens": arch["num_mask_tokens"],
        "predictor_positions": predictor_positions,
        "masks": None,  # V-JEPA 2 picks a mask token per frames-per-clip group, not per mask kind
        "target": "ema",
    }
    return _LoadedModel(
        encoders=encoders,
        predictor=predictor,
        config=config,
        data_config={"fps": VJEPA2_FPS, "num_frames": num_frames},
        source={"format": "vjepa2", "path": str(path)},
        mask_kinds=None,
    )


def _normalization() -> dict[str, Any]:
    from worldmodel.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "RGB in [0, 1] (uint8 / 255)"}


def build_predictor(arch: dict[str, Any]) -> Predictor:
    """A freshly initialised predictor of the architecture `predictor_arch` describes (the export format's
    "predictor" entry)."""
    arch = dict(arch)
    square_grid = arch.pop("square_grid", None)
    if square_grid:
        return SquareGridPredictor(**arch, square_grid=square_grid)
    return Predictor(**arch)


def _load_exact(
    build: Callable[[], nn.Module], state: dict[str, Tensor], path: Path, what: str, copy: bool = False
) -> nn.Module:
    """Build a module without initialising it (meta device) and give it exactly `state`, as float32.

    Every name must match and every shape agree; the error lists what does not. copy=True copies the
    tensors into memory (for a memory-mapped torch file: a model must not depend on a file that a new
    download may overwrite in place).
    """
    with torch.device("meta"):
        module = build()
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: the {what} weights do not fit the model their shapes describe: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}, "
            f"wrong shapes {wrong[:5]}"
        )
    state = {k: (v.to(torch.float32, copy=copy) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


# ---------------------------------------------------------------------------------------------- export
def _encoder_arch(encoder: VideoViT) -> dict[str, Any]:
    arch = asdict(encoder.cfg)
    if isinstance(arch["img_size"], tuple):
        arch["img_size"] = list(arch["img_size"])
    return arch


def predictor_arch(predictor: Predictor) -> dict[str, Any]:
    """The build arguments of `predictor` (JSON-safe): `build_predictor(predictor_arch(p))` has its shapes."""
    block = predictor.predictor_blocks[0]
    arch = dict(
        embed_dim=predictor.embed_dim,
        pred_dim=predictor.pred_dim,
        depth=len(predictor.predictor_blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=_mlp_ratio(predictor.pred_dim, block.mlp.fc1.out_features),
        num_mask_tokens=predictor.num_mask_tokens,
        rope_layout=predictor.rope.layout,
        activation_checkpointing=predictor.activation_checkpointing,
        qkv_bias=block.attn.qkv.bias is not None,
        norm_eps=predictor.predictor_norm.eps,
    )
    # constructor options the predictor keeps as attributes of the same name (e.g. copy_context)
    for name in inspect.signature(Predictor.__init__).parameters:
        value = getattr(predictor, name, None)
        if name not in arch and isinstance(value, (bool, int, float, str)):
            arch[name] = value
    if isinstance(predictor, SquareGridPredictor):
        arch["square_grid"] = predictor.square_grid
    return arch


def _describe(loaded: _LoadedModel, roles: dict[str, str]) -> dict[str, Any]:
    """The human-readable part of config.json (the exact build recipe is in "architecture")."""
    encoder = next(iter(loaded.encoders.values()))
    cfg, pred = encoder.cfg, predictor_arch(loaded.predictor)
    return {
        "variant": loaded.config.get("variant") or loaded.config.get("encoder"),
        "img_size": list(cfg.img_size) if isinstance(cfg.img_size, tuple) else cfg.img_size,
        "num_frames": cfg.num_frames,
        "patch_size": cfg.patch_size,
        "tubelet_size": cfg.tubelet_size,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "rope_layout": cfg.rope_layout,
        "normalization": _normalization(),
        "predictor": {
            "dim": pred["pred_dim"], "depth": pred["depth"], "num_heads": pred["num_heads"],
            "positions": "reference" if "square_grid" in pred else "clip",
        },
        "num_mask_tokens": pred["num_mask_tokens"],
        "mask_kinds": loaded.mask_kinds,
        "encoders": roles,
    }


def export_model(
    checkpoint_or_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    encoder: str = "target",
    **vjepa2_options: Any,
) -> Path:
    """Write `out_dir/model.safetensors` + `out_dir/config.json` from a pretraining checkpoint (or run
    folder), a V-JEPA 2 checkpoint (with `vjepa2_options`, see `load_vjepa2`) or an exported folder.

    encoder: "target", "context" or "both". The encoder's tensors are stored as `encoder.*`, with "both"
    the context encoder's as `context_encoder.*` (a shared SIGReg encoder is stored once), the
    predictor's as `predictor.*`. config.json says what is what ("encoders": role -> tensor prefix),
    how to rebuild the modules ("architecture"), the hyper-parameters and data config of the source,
    and where it came from. Each file is written atomically; an id in both tells a reader that they
    belong together. Returns out_dir.
    """
    _check_role(encoder, allow_both=True)
    roles = ENCODER_ROLES if encoder == "both" else (encoder,)
    loaded, path = _read_model(checkpoint_or_dir, roles, **vjepa2_options)
    missing = [role for role in roles if role not in loaded.encoders]
    if missing and not loaded.shared:  # an exported folder with one encoder: never write it under another role
        held = " and ".join(loaded.encoders)
        raise CheckpointError(
            f"{path} holds only the {held} encoder, so there is no {' or '.join(missing)} encoder to export; "
            f"export --encoder {next(iter(loaded.encoders))}, or export both from the checkpoint it came from "
            "(`worldmodel export CKPT DIR --encoder both`)"
        )
    return _write_export(loaded, path, out_dir, roles)


def _write_export(loaded: _LoadedModel, path: Path, out_dir: str | os.PathLike, roles: tuple[str, ...]) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    prefixes: dict[str, str] = {}  # role -> tensor prefix
    # the roles stored: both for a shared (SIGReg) encoder; else those asked for that the source has
    stored = ENCODER_ROLES if loaded.shared else tuple(dict.fromkeys(loaded.actual_role(r) for r in roles))
    for role in stored:
        module = loaded.encoders[loaded.actual_role(role)]
        prefix = next((p for r, p in prefixes.items() if loaded.encoders[loaded.actual_role(r)] is module), None)
        if prefix is None:
            prefix = "encoder" if not prefixes else "context_encoder"
            tensors.update({f"{prefix}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()})
        prefixes[role] = prefix
    tensors.update({f"predictor.{k}": v.detach().contiguous() for k, v in loaded.predictor.state_dict().items()})

    export_id = uuid.uuid4().hex
    encoder = loaded.encoders[loaded.actual_role(roles[0])]
    config = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "export_id": export_id,
        **_describe(loaded, prefixes),
        "architecture": {"encoder": _encoder_arch(encoder), "predictor": predictor_arch(loaded.predictor)},
        "hyper_parameters": loaded.config,
        "data": loaded.data_config,
        "source": {**loaded.source, **({"exported_from": str(path)} if path.is_dir() else {})},
    }
    weights = out_dir / WEIGHTS_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_FILE}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "worldmodel_format": EXPORT_FORMAT, "export_id": export_id})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp made it 0o600
        os.replace(tmp, weights)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    text = json.dumps(config, indent=2, default=str) + "\n"
    atomic_write_bytes(text.encode(), out_dir / CONFIG_FILE)
    return out_dir


def read_export_config(folder: Path) -> dict[str, Any]:
    """The config.json of an exported / imported model folder, checked to be one (CheckpointError if not)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; an exported model folder holds {WEIGHTS_FILE} and {CONFIG_FILE} "
            "(re-run `worldmodel export`)"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); re-run `worldmodel export`") from err
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: not a worldmodel export config (no \"format\": \"{EXPORT_FORMAT}\")")
    version = config.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: \"format_version\" is {version!r}, not a whole number; re-run `worldmodel export`")
    if version > EXPORT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer worldmodel (export format {version} > {EXPORT_VERSION}); upgrade worldmodel"
        )
    for key in ("export_id", "encoders", "architecture"):
        if key not in config:
            raise CheckpointError(f"{path}: has no {key!r} entry; re-run `worldmodel export`")
    encoders = config["encoders"]
    if not isinstance(encoders, dict) or not all(isinstance(v, str) for v in encoders.values()):
        raise CheckpointError(f"{path}: bad \"encoders\" entry {encoders!r} (role -> tensor prefix); re-run `worldmodel export`")
    for key, kinds in (("architecture", (dict,)), ("hyper_parameters", (dict, type(None))), ("data", (dict, type(None)))):
        if key in config and not isinstance(config[key], kinds):
            raise CheckpointError(f"{path}: its {key!r} entry is {type(config[key]).__name__}, not an object; "
                                  "re-run `worldmodel export`")  # fmt: skip
    return config


def _read_safetensors(path: Path, prefixes: set[str], export_id: str) -> dict[str, Tensor]:
    """The tensors under `prefixes` of an exported model.safetensors (no pickle involved)."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; an exported model folder holds {WEIGHTS_FILE} and {CONFIG_FILE} "
            "(re-run `worldmodel export`)"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys() if key.split(".", 1)[0] in prefixes}
    except Exception as err:  # safetensors raises SafetensorError (and others) for damaged files
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a complete safetensors file (truncated or damaged?): {msg}") from err
    if metadata.get("export_id") != export_id:
        raise CheckpointError(
            f"{path}: does not belong to the {CONFIG_FILE} beside it (export ids differ: an interrupted or mixed "
            "export?); re-run `worldmodel export`"
        )
    return tensors


def _read_exported(folder: Path, roles: tuple[str, ...]) -> _LoadedModel:
    config = read_export_config(folder)
    stored: dict[str, str] = config["encoders"]  # role -> tensor prefix
    if not stored or not set(stored) <= set(ENCODER_ROLES):
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad \"encoders\" entry {stored!r}; re-run `worldmodel export`")
    wanted = {}  # role actually served -> prefix
    for role in roles:
        actual = role if role in stored else next(iter(stored))
        wanted[actual] = stored[actual]
    tensors = _read_safetensors(folder / WEIGHTS_FILE, set(wanted.values()) | {"predictor"}, config["export_id"])
    where = folder / WEIGHTS_FILE

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    arch = config["architecture"]
    try:
        encoder_cfg = VideoViTConfig(**{**arch["encoder"], "img_size": _as_size(arch["encoder"]["img_size"])})
        pred_arch = dict(arch["predictor"])
        with torch.device("meta"):
            build_predictor(pred_arch)
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{folder / CONFIG_FILE}: its \"architecture\" entry does not build a model with this version of "
            f"worldmodel ({err}); re-export it with this version or upgrade worldmodel"
        ) from err
    modules: dict[str, nn.Module] = {}
    encoders: dict[str, nn.Module] = {}
    for role, prefix in wanted.items():
        if prefix not in modules:
            modules[prefix] = _load_exact(lambda: VideoViT(encoder_cfg), part(prefix), where, prefix)
        encoders[role] = modules[prefix]
    predictor = _load_exact(lambda: build_predictor(pred_arch), part("predictor"), where, "predictor")
    return _LoadedModel(
        encoders=encoders,
        predictor=predictor,
        config=config.get("hyper_parameters") or {},
        data_config=config.get("data"),
        source=config.get("source") or {"format": EXPORT_FORMAT, "path": str(folder)},
        mask_kinds=config.get("mask_kinds"),
    )


# ---------------------------------------------------------------------------------------------- command line
def _size_arg(text: str) -> int | tuple[int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got {text!r}")


def _add_vjepa2_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    group = parser.add_argument_group("V-JEPA 2 checkpoints")
    group.add_argument(
        "--img-size", type=_size_arg, default=VJEPA2_IMG_SIZE if defaults else None,
        help=f"resolution the checkpoint was trained at (default {VJEPA2_IMG_SIZE}; 384 for vitg-384); "
        "HEIGHTxWIDTH also accepted",
    )
    group.add_argument(
        "--num-frames", type=int, default=VJEPA2_NUM_FRAMES if defaults else None,
        help=f"nominal clip length in frames (default {VJEPA2_NUM_FRAMES}, as torch.hub builds them)",
    )
    group.add_argument(
        "--predictor-positions", choices=PREDICTOR_POSITIONS, default="clip" if defaults else None,
        help="clip (default): predictor positions from the clip's own token grid, like the encoder; "
        "reference: V-JEPA 2's square grid of img_size/patch tokens per side (identical to its code for "
        "non-square or other-size clips too)",
    )
    group.add_argument("--num-heads", type=int, default=None, help="encoder heads, only for sizes outside the known variants")
    group.add_argument("--pred-num-heads", type=int, default=None, help="predictor heads, only for unusual predictors")


def _vjepa2_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("img_size", "num_frames", "predictor_positions", "num_heads", "pred_num_heads")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """`worldmodel import-vjepa2 CHECKPOINT OUT_DIR [--encoder target|context|both] ...`"""
    parser.add_argument("checkpoint", help="a V-JEPA 2 checkpoint you downloaded (vitl.pt, vith.pt, vitg.pt, vitg-384.pt)")
    parser.add_argument("out_dir", help=f"folder to write {WEIGHTS_FILE} and {CONFIG_FILE} to")
    parser.add_argument(
        "--encoder", choices=ENCODER_ROLES + ("both",), default="target",
        help="target: the EMA target encoder (default; what V-JEPA 2's evaluations use); context: the online "
        "encoder (what its predictor was trained on); both: keep both (forecasting uses the context one)",
    )
    _add_vjepa2_options(parser, defaults=True)


def run_import(args: argparse.Namespace) -> int:
    """`worldmodel import-vjepa2`: returns an exit code (2 with a message on stderr for an unusable file)."""
    try:
        _check_role(args.encoder, allow_both=True)
        path = Path(args.checkpoint)
        ckpt = _load_vjepa2_file(path)
        roles = ENCODER_ROLES if args.encoder == "both" else (args.encoder,)
        loaded = _read_vjepa2(ckpt, path, roles, **_vjepa2_options(args))
        out = _write_export(loaded, path, args.out_dir, roles)
    except (CheckpointError, ValueError, OSError) as err:
        print(f"worldmodel import-vjepa2: error: {err}", file=sys.stderr)
        return 2
    print(_summary(out))
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """`worldmodel export CHECKPOINT OUT_DIR [--encoder target|context|both]`"""
    parser.add_argument(
        "checkpoint",
        help="a `worldmodel pretrain` checkpoint or run folder, a V-JEPA 2 checkpoint, or an exported folder",
    )
    parser.add_argument("out_dir", help=f"folder to write {WEIGHTS_FILE} and {CONFIG_FILE} to")
    parser.add_argument(
        "--encoder", choices=ENCODER_ROLES + ("both",), default="target",
        help="target: the EMA target encoder (default); context: the online encoder; both: keep both "
        "(forecasting feeds the predictor from the context encoder)",
    )
    _add_vjepa2_options(parser, defaults=False)


def run_export(args: argparse.Namespace) -> int:
    """`worldmodel export`: returns an exit code (2 with a message on stderr for an unusable input)."""
    try:
        out = export_model(args.checkpoint, args.out_dir, encoder=args.encoder, **_vjepa2_options(args))
    except (CheckpointError, ValueError, OSError) as err:
        print(f"worldmodel export: error: {err}", file=sys.stderr)
        return 2
    print(_summary(out))
    return 0


def _summary(out_dir: Path) -> str:
    config = read_export_config(out_dir)
    pred = config["predictor"]
    encoders = ", ".join(f"{role} -> {prefix}.*" for role, prefix in config["encoders"].items())
    return (
        f"wrote {out_dir / WEIGHTS_FILE} and {out_dir / CONFIG_FILE}: {config['variant']} "
        f"({config['depth']} blocks x {config['embed_dim']}, {config['num_heads']} heads, patch {config['patch_size']}, "
        f"tubelet {config['tubelet_size']}, rope {config['rope_layout']}; encoders: {encoders}), predictor "
        f"{pred['depth']} x {pred['dim']} with {config['num_mask_tokens']} mask tokens ({pred['positions']} positions)"
    )


def weights_hash(modules: Sequence[nn.Module]) -> str:
    """sha256 over the names, shapes and bytes of the modules' tensors (weights and buffers)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tuple(tensor.shape)}:{t.dtype};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
