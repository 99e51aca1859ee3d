"""Two DDP processes (gloo, CPU) where the loss turns NaN on rank 1 only, at step 2: both must stop at that
step with the reason (naming the rank), instead of rank 0 waiting in the next collective for a rank that
has gone. Used by tests/test_ddp.py; run as a script so Lightning can launch the second rank.

    python tests/scripts/ddp_nan.py MANIFEST OUT_DIR
"""

import dataclasses
import os
import sys
from pathlib import Path

from two_ranks import two_rank_run  # (this folder: the scripts run with it on sys.path)

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
    model, data, trainer = two_rank_run(manifest, max_steps=6, model_class=NaNOnRank1)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        trainer.fit(model, datamodule=data)
    except NonFiniteLossError as err:
        (out / f"stopped_rank{rank}.txt").write_text(f"{trainer.global_step}\n{err}")
        sys.exit(3)


if __name__ == "__main__":
    main()
