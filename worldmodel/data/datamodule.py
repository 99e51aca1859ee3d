"""The pretraining LightningDataModule and the callback that watches for unusable videos.

`VideoDataModule` turns manifests into training batches: `ClipDataset` (decode + crop in workers,
uint8), `EpochSampler` (this rank's share of the epoch, as ``(epoch, index)`` keys) and a DataLoader
whose ``collate_fn`` the pretraining module replaces with its mask collator. The Trainer is created
with ``use_distributed_sampler=False``: the sampler does the rank split itself.

`DataErrorCallback` feeds each training batch's ``errors`` into a `DataErrorTracker`, logs
``data/skipped`` and stops the run with `DataFailureError` when too much of the data is unusable.
"""

from __future__ import annotations

import random
import signal
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.utilities import rank_zero_info

from worldmodel.data.datasets import ClipDataset, DataErrorTracker, EpochSampler, SampleFailureError, collate_samples
from worldmodel.data.loader import ResumableDataLoader
from worldmodel.data.transforms import RandomResizedCropVideo
from worldmodel.data.video import ClipSampler

__all__ = ["DEFAULT_CORPUS_DIR", "DataErrorCallback", "VideoDataModule", "seed_worker"]

# The built-in procedural corpus, used when no manifest is given (relative to the working directory).
DEFAULT_CORPUS_DIR = "data/corpus"


def seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """DataLoader worker_init_fn: seed torch / numpy / random per (seed, rank, worker).

    Samples do not use these global generators (each has its own from (seed, epoch, index)); this keeps
    any other randomness in a worker (third-party code) reproducible and distinct across workers.
    """
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[0]))
    # SIGTERM to the whole process group (SLURM, docker stop) is the main process's to handle: it stops at
    # the batch's end and checkpoints; a worker killed first would crash the run without a checkpoint.
    # Workers end with the main process anyway.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class VideoDataModule(LightningDataModule):
    """Pretraining clips from manifests (default: the training videos of the built-in corpus, ``data/corpus/manifest_train.csv``).

    Clip timing: ``num_frames`` frames at ``fps`` frames per second, or every ``frame_step``-th frame,
    or spread over ``duration_s`` seconds; ``fps`` or ``duration_s`` (not both), when given, take precedence
    over ``frame_step``. Crops: random resized crop to ``crop_size`` (scale ``crop_scale``, aspect ratio
    ``crop_ratio``, horizontal flip with ``hflip``), after decoding with the short side resized to
    ``decode_size`` (None: native size). ``batch_size`` is per process. ``samples_per_epoch`` counts
    samples over all processes (default: the number of videos).
    """

    def __init__(
        self,
        train_manifests: list[str] | str | None = None,
        manifest_weights: list[float] | None = None,
        num_frames: int = 16,
        fps: float | None = None,
        frame_step: int | None = 4,
        duration_s: float | None = None,
        crop_size: int = 112,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] = (0.75, 1.35),
        hflip: bool = True,
        decode_size: int | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        short_policy: str = "repeat_last",
        max_failure_ratio: float = 0.1,
        persistent_workers: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if fps is None and duration_s is None and frame_step is None:
            raise ValueError("set one of data.fps, data.frame_step or data.duration_s")
        if fps is not None and duration_s is not None:
            raise ValueError(f"set data.fps ({fps}) or data.duration_s ({duration_s}), not both: they time a clip two ways")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_manifests = train_manifests
        self.manifest_weights = manifest_weights
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.max_failure_ratio = max_failure_ratio
        # The pretraining module swaps in its mask collator (`datamodule.collate_fn = ...`) in setup().
        self.collate_fn: Callable[[list[dict]], Any] = collate_samples
        self.clip_sampler = ClipSampler(
            num_frames=num_frames,
            fps=fps,
            frame_step=None if (fps is not None or duration_s is not None) else frame_step,
            duration_s=duration_s,
            short_policy=short_policy,
        )
        self.train_dataset: ClipDataset | None = None
        self.train_sampler: EpochSampler | None = None
        self._train_loader: ResumableDataLoader | None = None

    # ------------------------------------------------------------------ data preparation
    def manifest_paths(self) -> list[str]:
        if self.train_manifests is None:
            # the training videos only: the validation videos stay unseen for the probes
            return [str(Path(DEFAULT_CORPUS_DIR) / "manifest_train.csv")]
        if isinstance(self.train_manifests, str):
            return [self.train_manifests]
        return list(self.train_manifests)

    def prepare_data(self) -> None:
        """Build the built-in corpus when no manifest is given and it is missing (one process per node)."""
        if self.train_manifests is not None:
            return
        from worldmodel.data.corpus import ensure_corpus

        ensure_corpus(DEFAULT_CORPUS_DIR)  # writes it once (atomically) if it is missing

    def setup(self, stage: str | None = None) -> None:
        if stage not in (None, "fit") or self.train_dataset is not None:
            return
        manifests = self.manifest_paths()
        if self.train_manifests is None and not Path(manifests[0]).exists():
            raise FileNotFoundError(
                f"no data.train_manifests given and the built-in corpus is missing ({manifests[0]}). "
                f"Write it with `worldmodel corpus --out {DEFAULT_CORPUS_DIR}` or point "
                "data.train_manifests at your manifest(s) or video folder(s)."
            )
        hp = self.hparams
        transform = RandomResizedCropVideo(
            hp.crop_size,
            scale=tuple(hp.crop_scale),
            ratio=tuple(hp.crop_ratio),
            hflip_p=0.5 if hp.hflip else 0.0,
        )
        self.train_dataset = ClipDataset(
            manifests,
            sampler=self.clip_sampler,
            transform=transform,
            weights=self.manifest_weights,
            seed=self.seed,
            decode_size=hp.decode_size,
        )

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> ResumableDataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        rank, world_size = self._rank_world()
        sampler = EpochSampler(
            self.train_dataset,
            samples_per_epoch=self.hparams.samples_per_epoch,
            shuffle=True,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )
        if len(sampler) < self.batch_size:
            raise ValueError(
                f"each of the {world_size} process(es) gets {len(sampler)} samples per epoch, fewer than "
                f"batch_size={self.batch_size} (batches are full: drop_last): raise data.samples_per_epoch "
                "or lower data.batch_size"
            )
        loader = ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            worker_init_fn=partial(seed_worker, seed=self.seed, rank=rank),
            drop_last=True,
            persistent_workers=bool(self.hparams.persistent_workers and self.num_workers > 0),
            pin_memory=self.hparams.pin_memory,
        )
        if self._train_loader is not None and self.trainer is not None and self.trainer.training:
            # rebuilt during a fit (reload_dataloaders_every_n_epochs): keep a resumed run's epoch numbering
            sampler.epoch_offset = self._train_loader.sampler.epoch_offset
        self.train_sampler, self._train_loader = sampler, loader
        return loader

    # ------------------------------------------------------------------ monitoring
    def error_callback(self, out_dir: str | None = None) -> "DataErrorCallback":
        """A DataErrorCallback with this module's ``max_failure_ratio``."""
        return DataErrorCallback(out_dir=out_dir, max_failure_ratio=self.max_failure_ratio)


class DataErrorCallback(Callback):
    """Counts the unusable videos skipped in training batches; stops the run when there are too many.

    On each training batch end the batch's ``errors`` go into a `DataErrorTracker` (CSV in ``out_dir``,
    else the trainer's log_dir or default_root_dir) and ``data/skipped`` (files skipped so far by this
    process) is logged. The summary line is printed at epoch end (when something was skipped) and at
    the end of fit. ``max_failure_ratio`` defaults to the datamodule's ``max_failure_ratio`` (or 0.1).

    With several processes each keeps its own list (``data_errors.csv`` for rank 0,
    ``data_errors.rankN.csv``), the stop threshold applies to the counts summed over all of them (so
    every rank stops at the same batch, with one message), the summary line sums them too, and
    checkpoints keep every rank's counts, each restored to its own rank.
    """

    def __init__(
        self,
        out_dir: str | None = None,
        max_failure_ratio: float | None = None,
        min_samples: int = 50,
    ) -> None:
        self.out_dir = out_dir
        self.max_failure_ratio = max_failure_ratio
        self.min_samples = min_samples
        self.tracker: DataErrorTracker | None = None
        self._pending_state: dict | None = None
        self._said: str | None = None  # the summary line last printed at an epoch end
        self._trainer = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.tracker is not None:
            return
        ratio = self.max_failure_ratio
        if ratio is None:
            ratio = getattr(trainer.datamodule, "max_failure_ratio", 0.1) if trainer.datamodule else 0.1
        out_dir = self.out_dir or trainer.log_dir or trainer.default_root_dir
        self.tracker = DataErrorTracker(out_dir, ratio, self.min_samples, rank=trainer.global_rank)
        self._trainer = trainer
        if self._pending_state is not None:
            pending = dict(self._pending_state)
            self.tracker.load_state_dict(self._own(pending, pending.pop("ranks", None), self.tracker.rank))
            self._pending_state = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            self.tracker.start()  # a CSV of an earlier attempt: set aside, or cut back to the checkpoint's rows

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.tracker is None or not isinstance(batch, dict) or "video" not in batch:
            return
        errors = batch.get("errors") or []
        num_ok = int(batch["video"].shape[0])
        flags, paths = batch.get("padded"), batch.get("path")
        padded = [p for p, short in zip(paths, flags.tolist()) if short] if flags is not None and paths else []
        several = trainer.world_size > 1
        try:
            self.tracker.update(errors, num_ok, padded, check=not several)
            if several:  # the same decision on every rank, from the summed counts (one small all-reduce)
                local = torch.tensor([self.tracker.num_failures, self.tracker.num_failures + self.tracker.num_ok],
                                     dtype=torch.float64, device=pl_module.device)
                failures, attempts = (int(v) for v in trainer.strategy.reduce(local, reduce_op="sum").tolist())
                if self.tracker.over_threshold(failures, attempts):  # every rank is here (same totals): stop,
                    states = self._gathered(trainer, self.tracker.state_dict())  # with every rank's reasons
                    DataErrorTracker.merged(states, self.tracker).check(totals=(failures, attempts))
        finally:
            pl_module.log(
                "data/skipped", float(self.tracker.num_failures), on_step=True, on_epoch=False, batch_size=num_ok
            )

    def _gathered(self, trainer, state: dict) -> list[dict]:
        """Every rank's `state` (a collective: every rank calls it at the same point)."""
        if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return [state]
        states: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(states, state)
        return states

    def _summary(self, trainer) -> tuple[str, bool]:
        """(the summary line over every rank, whether anything was skipped or padded)."""
        states = self._gathered(trainer, self.tracker.state_dict())
        total = DataErrorTracker.merged(states, self.tracker)
        line = total.summary()
        if len(states) > 1 and total.num_failures:
            line += f" (summed over {len(states)} processes; rank N > 0 lists its own in data_errors.rankN.csv)"
        return line, bool(total.num_failures or total.num_padded)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            line, anything = self._summary(trainer)
            if anything:
                rank_zero_info(line)
                self._said = line

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            line = self._summary(trainer)[0]
            if line != self._said:  # (a run that ends at an epoch's end said it just now)
                rank_zero_info(line)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a sample for which no video could be found stopped the run from inside the dataset: its failed
        # attempts never reached a batch, so they are listed here
        if self.tracker is not None and isinstance(exception, SampleFailureError):
            self.tracker.record(exception.errors)

    def state_dict(self) -> dict[str, Any]:
        if self.tracker is None:
            return {}
        state = self.tracker.state_dict()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # saving is collective: every rank is here
            return {**state, "ranks": self._gathered(trainer, state)}  # rank 0's at the top (older readers)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        ranks = state.pop("ranks", None)
        if self.tracker is not None:
            self.tracker.load_state_dict(self._own(state, ranks, self.tracker.rank))
        else:
            self._pending_state = dict(state_dict)

    @staticmethod
    def _own(state: dict, ranks: list | None, rank: int) -> dict:
        """This rank's counts from a checkpoint: its own entry when the checkpoint kept every rank's; rank 0's
        (the top level) for rank 0; nothing for another rank the checkpoint has no entry for (one written
        before every rank's counts were kept, or by fewer processes): taking rank 0's would count them twice."""
        if ranks and 0 <= rank < len(ranks) and ranks[rank] is not None:
            return dict(ranks[rank])
        return state if rank == 0 else {}
