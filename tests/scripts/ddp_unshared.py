"""Two DDP processes (gloo, CPU) that resume from different checkpoints, as two nodes with unshared run
folders would (only rank 0 finds last.ckpt): both must stop before training, with the reason. Used by
tests/test_ddp.py; run as a script so Lightning can launch the second rank.

    python tests/scripts/ddp_unshared.py MANIFEST OUT_DIR first|mismatch
"""

import os
import sys
from pathlib import Path

from two_ranks import two_rank_run  # (this folder: the scripts run with it on sys.path)

from worldmodel.checkpoints import LastCheckpoint


def main() -> None:
    manifest, out_dir, mode = sys.argv[1:4]
    out = Path(out_dir)
    model, data, trainer = two_rank_run(manifest, max_steps=2 if mode == "first" else 4,
                                        callbacks=[LastCheckpoint(out / "ckpt", every_n_steps=1)])
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
