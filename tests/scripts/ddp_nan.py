"""Two DDP processes (gloo, CPU) where the loss turns NaN on rank 1 only, at step 2: both must stop at that
step with the reason (naming the rank), instead of rank 0 waiting in the next collective for a rank that
has gone. Used by tests/test_ddp.py; run as a script so Lightning can launch the second rank.

    python tests/scripts/ddp_nan.py MANIFEST OUT_DIR
"""

import dataclasses
import os
import sys
from pathlib import Path

import lightning as L
import torch

from worldmodel.data.datamodule import VideoDataModule
from worldmodel.pretrain import JEPAPretrainer, NonFiniteLossError


class NaNOnRank1(JEPAPretrainer):
    def compute_loss(self, batch):
        out = super().compute_loss(batch)
        if self.global_rank == 1 and self.global_step == 2:
            out = dataclasses.replace(out, total=out.total * float("nan"))
        return out


def main() -> None:
    manifest, out_dir = sys.argv[1:3]
    out = Path(out_dir)
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = NaNOnRank1(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                       pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0, total_steps=10)
    data = VideoDataModule(train_manifests=[manifest], num_frames=4, frame_step=2, crop_size=32, batch_size=1,
                           num_workers=0, samples_per_epoch=8, seed=0, persistent_workers=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        trainer.fit(model, datamodule=data)
    except NonFiniteLossError as err:
        (out / f"stopped_rank{rank}.txt").write_text(f"{trainer.global_step}\n{err}")
        sys.exit(3)


if __name__ == "__main__":
    main()
