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


class ResumableDataLoader(DataLoader):
    """DataLoader over an `EpochSampler` (it must have `epoch`, `set_epoch` and `start_index`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_consumed = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": int(self.sampler.epoch),
            "batches_consumed": int(self.batches_consumed),
            "batch_size": int(self.batch_size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batch_size") != self.batch_size:
            raise ValueError(
                f"cannot resume mid-epoch exactly: the checkpoint was written with batch_size "
                f"{state.get('batch_size')} per process, this run uses {self.batch_size}. Resume with the same "
                "data.batch_size (and the same number of processes)."
            )
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start_index = state["batches_consumed"] * self.batch_size
        self.batches_consumed = state["batches_consumed"]


class DataProgressCallback(Callback):
    """Tells each resumable training loader how many of its batches this epoch have been consumed."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        loader = trainer.fit_loop._combined_loader
        for dl in loader.flattened if loader is not None else []:
            if isinstance(dl, ResumableDataLoader):
                dl.batches_consumed = batch_idx + 1
