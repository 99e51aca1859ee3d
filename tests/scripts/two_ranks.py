"""The small 2-process (gloo, CPU) pretraining run that tests/scripts/ddp_nan.py and ddp_unshared.py build:
a 1-block encoder on 32 px clips of 4 frames, one clip per process and step, Lightning's DDP. Seeded."""

import lightning as L
import torch

from worldmodel.data.datamodule import VideoDataModule
from worldmodel.pretrain import JEPAPretrainer


def two_rank_run(manifest: str, max_steps: int, model_class: type = JEPAPretrainer, callbacks: list | None = None):
    """(model, data, trainer), seeded, one torch thread per process."""
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = model_class(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                        pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0, total_steps=10)
    data = VideoDataModule(train_manifests=[manifest], num_frames=4, frame_step=2, crop_size=32, batch_size=1,
                           num_workers=0, samples_per_epoch=8, seed=0, persistent_workers=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=max_steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=callbacks or [])
    return model, data, trainer
