"""Two DDP processes (gloo, CPU) that resume from different checkpoints, as two nodes with unshared run
folders would (only rank 0 finds last.ckpt): both must stop before training, with the reason. Used by
tests/test_ddp.py; run as a script so Lightning can launch the second rank.

    python tests/scripts/ddp_unshared.py MANIFEST OUT_DIR first|mismatch
"""

import os
import sys
from pathlib import Path

import lightning as L
import torch

from worldmodel.checkpoints import LastCheckpoint
from worldmodel.data.datamodule import VideoDataModule
from worldmodel.pretrain import JEPAPretrainer


def main() -> None:
    manifest, out_dir, mode = sys.argv[1:4]
    out = Path(out_dir)
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
                           pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0, total_steps=10)
    data = VideoDataModule(train_manifests=[manifest], num_frames=4, frame_step=2, crop_size=32, batch_size=1,
                           num_workers=0, samples_per_epoch=8, seed=0, persistent_workers=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2 if mode == "first" else 4,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[LastCheckpoint(out / "ckpt", every_n_steps=1)])
    # rank 0 finds the checkpoint, rank 1 (the process Lightning starts with LOCAL_RANK=1) does not
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    ckpt = str(out / "ckpt" / "last.ckpt") if mode == "mismatch" and rank == 0 else None
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    except ValueError as err:
        (out / f"refused_rank{rank}.txt").write_text(str(err))
        sys.exit(3)


if __name__ == "__main__":
    main()
