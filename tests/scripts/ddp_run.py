"""Run a few pretraining steps with Lightning, on 1 process or 2 DDP processes (gloo, CPU), and save
each rank's final parameters, and what rank 0 logged of the collapse monitors (measured every step).
Used by tests/test_ddp.py; run as a script so Lightning can launch ranks.

    python tests/scripts/ddp_run.py MANIFEST OUT_DIR DEVICES GLOBAL_BATCH STEPS
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers.logger import Logger

from worldmodel.checkpoints import atomic_torch_save
from worldmodel.data.datamodule import VideoDataModule
from worldmodel.pretrain import JEPAPretrainer


class Rows(Logger):
    """Keeps the collapse monitors' rows in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    name, version = "rows", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        collapse = {k: float(v) for k, v in metrics.items() if k.startswith("collapse/")}
        if collapse:
            self.rows.setdefault(int(step), {}).update(collapse)


def main() -> None:
    manifest, out_dir, devices, global_batch, steps = sys.argv[1:6]
    devices, global_batch, steps = int(devices), int(global_batch), int(steps)
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = JEPAPretrainer(
        img_size=32, num_frames=4, encoder_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 3},
        pred_depth=1, pred_dim=32, pred_heads=2, lr=1e-3, weight_decay=0.04, ema_momentum=0.9, collapse_every=1,
    )
    data = VideoDataModule(
        train_manifests=[manifest], num_frames=4, frame_step=2, crop_size=32, batch_size=global_batch // devices,
        num_workers=0, samples_per_epoch=global_batch, seed=0, persistent_workers=False,
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=steps,
        logger=(rows := Rows()), enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, gradient_clip_val=1.0,
    )
    trainer.fit(model, datamodule=data)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, Path(out_dir) / f"devices{devices}_rank{trainer.global_rank}.pt")
    if trainer.is_global_zero:
        (Path(out_dir) / f"devices{devices}_collapse.json").write_text(json.dumps(rows.rows))


if __name__ == "__main__":
    main()
