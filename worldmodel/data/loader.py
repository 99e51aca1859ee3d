"""A DataLoader whose position inside an epoch survives a checkpoint.

Lightning saves `state_dict()` of every training DataLoader that has one and hands it back through
`load_state_dict()` before the first batch of a resumed run. The state is small: the sampler's epoch
and how many batches of that epoch the model has consumed. Because every random choice of a sample
(clip start, crop, flip, masks) is a function of (seed, epoch, index), skipping the consumed samples
is all it takes for a resumed run to see exactly the batches the uninterrupted run would have seen.

`batches_consumed` is advanced by `DataProgressCallback` at the start of each training batch (the
data fetcher prefetches, so counting in the iterator would overcount).
"""

from __future__ import annotations

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


class DataProgressCallback(Callback):
    """Tells each resumable training loader how many of its batches this epoch have been consumed.

    Lightning's batch index goes on from the checkpoint's position after a resume, also when it counts the
    stopped epoch as finished and finishes it under the next epoch's number (`EpochSampler.resume`)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        loader = trainer.fit_loop._combined_loader
        for dl in loader.flattened if loader is not None else []:
            if isinstance(dl, ResumableDataLoader):
                dl.batches_consumed = batch_idx + 1
