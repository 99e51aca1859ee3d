"""Every shipped pretraining config, checked here as far as a CPU can: the GPU ones (small, base,
vit_large with DDP, vit_giant with FSDP) would otherwise meet their first check on a cluster.

Each config goes through the real `worldmodel pretrain --print_config` (jsonargparse validates every key
and type, the strategy's init_args included), then: data and model agree on the clip geometry, the model
builds on the meta device with the named variant's exact size, its masks leave context and targets for
every mask kind, the schedules fit the run's steps, and an FSDP strategy wraps the blocks the model has.
"""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import pytest
import torch
import yaml

from worldmodel.cli import shipped_configs
from worldmodel.models.vit import build_vit
from worldmodel.pretrain import JEPAPretrainer, check_data_matches_model
from worldmodel.pretrain_cli import run_pretrain_cli
from worldmodel.schedules import Schedule

CONFIGS = sorted(shipped_configs())


def printed_config(name: str) -> dict:
    """The whole config `worldmodel pretrain --config NAME --print_config` prints, as a dict."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        run_pretrain_cli(["--config", str(shipped_configs()[name]), "--print_config"])
    assert done.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


def test_the_gpu_configs_are_shipped():
    assert {"tiny", "small", "base", "vit_large_ddp", "vit_giant_fsdp"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_builds_what_it_promises(name):
    config = printed_config(name)
    model_cfg, data_cfg, trainer = config["model"], config["data"], config["trainer"]

    # the check pretraining runs at setup: clips of the model's size and length
    check_data_matches_model(model_cfg, SimpleNamespace(hparams=data_cfg))
    if data_cfg.get("decode_size") is not None:  # decoding below the crop would upsample every clip
        assert data_cfg["decode_size"] >= data_cfg["crop_size"], data_cfg

    with torch.device("meta"):  # vit_giant is a billion parameters: shapes only
        module = JEPAPretrainer(**model_cfg)
        variant = build_vit(model_cfg["encoder"], img_size=model_cfg["img_size"], **(model_cfg.get("encoder_kwargs") or {}))
    assert sum(p.numel() for p in module.encoder.parameters()) == sum(p.numel() for p in variant.parameters())
    predictor = module.predictor
    assert (predictor.pred_dim, len(predictor.predictor_blocks)) == (model_cfg["pred_dim"], model_cfg["pred_depth"])

    # every mask kind leaves a context and targets on this model's token grid
    grid = module.token_grid()
    collator = module.mask_collator()
    for kind in range(len(module.mask_kinds)):
        for index in range(4):
            context, targets = collator.sample(0, index, kind)
            assert 0 < len(context) and 0 < len(targets), (name, kind, grid)
            assert len(set(context.tolist()) & set(targets.tolist())) == 0

    # the schedules fit the run: every phase from the first step to the last
    total = model_cfg.get("total_steps") or trainer["max_steps"]
    assert total and total > 0, "a shipped config states its length"
    for key in ("lr", "weight_decay", "ema_momentum"):
        if isinstance(model_cfg[key], dict):
            schedule = Schedule.from_config(model_cfg[key], total_steps=total)
            values = [schedule(step) for step in (0, total // 2, total - 1)]
            assert all(v >= 0 for v in values), (key, values)

    strategy = trainer.get("strategy")
    if isinstance(strategy, dict):  # class_path + init_args: instantiate it as Lightning will
        from jsonargparse import ArgumentParser
        from lightning.pytorch.strategies import FSDPStrategy, Strategy

        parser = ArgumentParser()
        parser.add_argument("--strategy", type=Strategy)
        built = parser.instantiate(parser.parse_object({"strategy": strategy})).strategy
        if isinstance(built, FSDPStrategy):
            policy = built.kwargs["auto_wrap_policy"]  # FSDP units: one per block of the encoder and predictor
            wrapped = set(getattr(policy, "_module_classes", ()))
            assert type(module.encoder.blocks[0]) in wrapped and type(predictor.predictor_blocks[0]) in wrapped
    if trainer.get("accelerator") == "gpu":
        assert trainer["precision"] in ("bf16-mixed", "16-mixed", "32-true", "32"), trainer["precision"]
        assert data_cfg["num_workers"] > 0, "a GPU run decodes in worker processes"
