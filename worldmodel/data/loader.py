"""A DataLoader whose position inside an epoch survives a checkpoint.

Lightning saves `state_dict()` of every training DataLoader that has one and hands it back through
`load_state_dict()` before the first batch of a resumed run. The state is small: the sampler's epoch
and how many batches of that epoch the model has consumed. Because every random choice of a sample
(clip start, crop, flip, masks) is a function of (seed, epoch, index), skipping the consumed samples
is all it takes for a resumed run to see exactly the batches the uninterrupted run would have seen.

`batches_consumed` is advanced by `DataProgressCallback` at the start of each training batch (the
data fetcher prefetches, so counting in the iterator would overcount).

Iterating the loader starts its sampler (and worker processes) at the first batch asked for, not when
the iterator is made: Lightning makes the first epoch's iterator while it sets a run up, before it
calls `set_epoch` and the callbacks' `on_train_start`, and with workers the sampler's first indices
would be drawn from a position not yet restored.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from worldmodel.data.datasets import DataConfigError


class ResumableDataLoader(DataLoader):
    """DataLoader over an `EpochSampler` (`epoch`, `set_epoch`, `start_index`, `seed`, `world_size`,
    `samples_per_epoch`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_consumed = 0

    def __iter__(self) -> "_StartAtFirstBatch":
        return _StartAtFirstBatch(self)

    def _settings(self) -> dict[str, Any]:
        """What must not change between a checkpoint and its resume for the batches to be the same."""
        return {
            "seed": int(self.sampler.seed),
            "batch_size": int(self.batch_size),
            "world_size": int(self.sampler.world_size),
            "samples_per_epoch": int(self.sampler.samples_per_epoch),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": int(self.sampler.epoch), "batches_consumed": int(self.batches_consumed), **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        changed = [
            f"{key} {state[key]} in the checkpoint, {now} now" for key, now in self._settings().items()
            if key in state and state[key] != now
        ]  # fmt: skip
        if changed:
            raise DataConfigError(
                "cannot resume exactly: " + "; ".join(changed) + " (batch_size counts clips per process, "
                "world_size processes). Resume with the same data.seed, data.batch_size, "
                "data.samples_per_epoch and number of processes, or start a new run."
            )
        self.sampler.resume(state["epoch"], state["batches_consumed"] * self.batch_size)
        self.batches_consumed = state["batches_consumed"]


class _StartAtFirstBatch:
    """A `ResumableDataLoader`'s iterator: the DataLoader's own, made at the first `next` (see the module
    docstring)."""

    def __init__(self, loader: ResumableDataLoader) -> None:
        self._loader = loader
        self._iterator = None

    def __iter__(self) -> "_StartAtFirstBatch":
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = DataLoader.__iter__(self._loader)
        return next(self._iterator)

    def __len__(self) -> int:
        return len(self._loader)


class DataProgressCallback(Callback):
    """Keeps each resumable training loader's data position current, and in checkpoints.

    - At each batch start, how many batches of this epoch have been consumed (Lightning's batch index
      goes on from the checkpoint's position after a resume).
    - The position is also kept in this callback's own checkpoint state. Lightning hands a checkpoint's
      loader states back only when it restarts a run mid-way; for a run bounded by epochs whose checkpoint
      counts the stopped epoch as finished (saved after `fit` returned or when `max_time` stopped it) it
      does not, and the loader would start a new epoch, skipping the rest of the stopped one. Then the
      position is restored from here at the start of training.
    - During fit, the sampler can ask where the trainer's epoch stands (`EpochSampler.trainer_position`).
    """

    def __init__(self) -> None:
        self._trainer = None
        self._states: list[dict[str, Any]] | None = None

    @staticmethod
    def _loaders(trainer) -> list[ResumableDataLoader]:
        combined = trainer.fit_loop._combined_loader if trainer is not None else None
        return [dl for dl in combined.flattened if isinstance(dl, ResumableDataLoader)] if combined is not None else []

    def on_train_start(self, trainer, pl_module) -> None:
        self._trainer = trainer
        for i, dl in enumerate(self._loaders(trainer)):
            state = self._states[i] if self._states is not None and i < len(self._states) else None
            # only when Lightning did not resume the loader (its position then waits for the first
            # set_epoch), and only a position inside an epoch: at an epoch's end the trainer's next epoch
            # is the data's next one anyway (and another batch size or process count may then start it)
            if not dl.sampler.resume_pending and state is not None and state.get("batches_consumed", 0) < len(dl):
                dl.load_state_dict(state)
            dl.sampler.trainer_position = partial(_trainer_position, trainer, dl.batch_size)
        self._states = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        for dl in self._loaders(trainer):
            dl.batches_consumed = batch_idx + 1

    def on_train_end(self, trainer, pl_module) -> None:
        for dl in self._loaders(trainer):  # a later fit with the same loader starts from its own checkpoint
            dl.sampler.trainer_position, dl.sampler.epoch_offset = None, 0

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._states = None  # a fit that failed before training must not hand its position to the next

    def state_dict(self) -> dict[str, Any]:
        return {"loaders": [dl.state_dict() for dl in self._loaders(self._trainer)]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._states = list(state_dict.get("loaders") or [])


def _trainer_position(trainer, batch_size: int) -> tuple[int, int]:
    """(samples the trainer has counted in the epoch it is running, samples of a whole trainer epoch) of one
    rank; 0 for the second when the trainer's epoch has no known length."""
    counted = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
    batches = trainer.num_training_batches
    return counted * batch_size, int(batches) * batch_size if math.isfinite(batches) else 0
