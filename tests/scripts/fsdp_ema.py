"""Two CPU processes (gloo) shard a small JEPAPretrainer with torch FSDP, wrapped by the given policy (as
Lightning's FSDPStrategy wraps the LightningModule: use_orig_params, full sharding), then check the EMA
layout and apply one EMA update to the shards. Writes OUT/rank{r}.json, with the largest difference
between the gathered target encoder and the same update applied to an unsharded copy.

    python fsdp_ema.py OUT PORT CLASS_PATH [CLASS_PATH ...]
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def run(rank: int, out: str, port: str, policy: list[str]) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from worldmodel.objectives import ema_layout_problem, ema_update
    from worldmodel.pretrain import JEPAPretrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = JEPAPretrainer(img_size=32, num_frames=4, encoder_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 3},
                            pred_depth=1, pred_dim=32, pred_heads=2)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the online encoder a training step away from its EMA copy
        for param in module.encoder.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    reference = copy.deepcopy(module)
    ema_update(reference.target_encoder, reference.encoder, 0.9)
    root = FullyShardedDataParallel(module, auto_wrap_policy=ModuleWrapPolicy({_class(p) for p in policy}),
                                    use_orig_params=True, sharding_strategy=ShardingStrategy.FULL_SHARD,
                                    device_id=torch.device("cpu"))
    problem = ema_layout_problem(module.target_encoder, module.encoder, sharded=True)
    result = {"problem": problem}
    if problem is None:
        ema_update(module.target_encoder, module.encoder, 0.9)
        expected = dict(reference.target_encoder.named_parameters())
        with FullyShardedDataParallel.summon_full_params(root, writeback=False):  # every process: whole tensors
            full = {n: p.detach().clone() for n, p in module.target_encoder.named_parameters()}
        result["compared"] = len(full)
        result["max_abs_diff"] = max(float((full[n] - expected[n]).abs().max()) for n in expected)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    out, port, *policy = sys.argv[1:]
    mp.spawn(run, args=(out, port, policy), nprocs=2)
