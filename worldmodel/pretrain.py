"""The pretraining LightningModule: wires the JEPA pieces into a training step.

The models (`worldmodel.models`), the masks (`worldmodel.masks`), the loss, EMA and SIGReg
(`worldmodel.objectives`) and the schedules (`worldmodel.schedules`) each live in their own module;
this file only builds them from a config, runs one step, steps the optimiser and logs.

One step, for a batch of uint8 clips and one mask set per mask kind:

    target = LN(target_encoder(clip))                       (B, N, D), no grad (EMA) or shared (SIGReg)
    for each kind:  ctx  = encoder(clip, context_idx)       (B, Nc, D)
                    pred = predictor(ctx, ..., target_idx)  (B, Nt, D)
                    loss += |pred - target[target_idx]|     mean over each clip's valid targets, then clips
    (all kinds run together: one packed context-encoder pass and one predictor batch, see `_predict`)
    AdamW step (scheduled lr / wd, gradient clipping from the Trainer), then EMA(target <- encoder).

Everything random in a step is a function of (seed, epoch, sample index, step), so a resumed run
continues with exactly the losses of the uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from worldmodel.data.transforms import normalize_video
from worldmodel.masks import MaskCollator, build_mask_kinds
from worldmodel.models import vit as vit_models
from worldmodel.models.predictor import Predictor
from worldmodel.models.vit import VideoViT
from worldmodel.objectives import (
    CollapseMonitor,
    collapse_stats,
    copy_context_loss,
    ema_layout_problem,
    ema_update,
    gather_tokens,
    jepa_loss,
    sigreg,
    target_features,
)
from worldmodel.schedules import Schedule

@dataclass
class StepOutput:
    total: torch.Tensor  # what is optimised (prediction loss + regulariser)
    loss: torch.Tensor  # the prediction loss alone
    metrics: dict[str, torch.Tensor]  # detached scalars, still on the device
    full: torch.Tensor  # (B, N, D) target-encoder tokens of the whole clip, detached
    targets: torch.Tensor  # (B, N, D) their layer-normed targets, detached
    masks: list[Any]  # the masks of the step, one per kind (the batch's, or drawn for it)


ENCODERS = ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant")

DEFAULT_MASKS: list[dict[str, Any]] = [
    {"type": "multiblock", "num_blocks": 8, "spatial_scale": [0.15, 0.15]},
    {"type": "multiblock", "num_blocks": 2, "spatial_scale": [0.7, 0.7]},
]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stops before the bad update is applied or saved."""


def memory_stats(device: torch.device | None = None) -> dict[str, float]:
    """This process's memory in MB: ``host_rss_mb`` (resident now; on systems without /proc, the peak)
    and, on a CUDA device, ``device_peak_mb`` (the most the tensors of this process have held)."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
    stats = {"host_rss_mb": rss / 2**20}
    if device is not None and device.type == "cuda":
        stats["device_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return stats


class ConfigError(ValueError):
    """Settings that cannot work together, found before the first step (`worldmodel pretrain` prints it
    as one line)."""


# the hyper-parameters that decide the weights' shapes: a checkpoint resumes only into the same ones
ARCHITECTURE_KEYS = (
    "encoder", "patch_size", "tubelet_size", "encoder_kwargs", "pred_depth", "pred_dim", "pred_heads",
    "pred_copy_context", "target",
)


def check_data_matches_model(hparams: Any, datamodule: Any) -> None:
    """The clips the data module makes must be the ones the model (and its mask grid) is built for.

    Masks are drawn on the token grid of (model.num_frames, model.img_size); other clip sizes would leave
    tokens outside every mask, or index past the clip's tokens.
    """
    data = getattr(datamodule, "hparams", None)
    if data is None:
        return
    pairs = [("img_size", "crop_size"), ("num_frames", "num_frames")]  # (model's, data's)
    wrong = [
        f"model.{m}={hparams[m]} but data.{d}={data[d]}"
        for m, d in pairs if d in data and m in hparams and int(data[d]) != int(hparams[m])
    ]
    if wrong:
        raise ConfigError(
            f"the clips do not fit the model: {'; '.join(wrong)}. Masks are drawn on the model's token grid, "
            "so set both to the same value (e.g. --model.img_size 128 --data.crop_size 128)."
        )


def _is_fsdp(strategy: Any) -> bool:
    """Whether Lightning shards the model with FSDP."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


class JEPAPretrainer(L.LightningModule):
    """Video JEPA pretraining: context encoder, target encoder (EMA or shared + SIGReg), predictor.

    Args:
        encoder: named variant (vit_tiny ... vit_giant).
        img_size, num_frames, patch_size, tubelet_size: clip geometry the model is built for (RoPE
            lets it run on other sizes too).
        encoder_kwargs: further overrides of the variant (e.g. {"depth": 6}) for small experiments.
        pred_depth, pred_dim, pred_heads: the predictor (V-JEPA 2: 12 x 384, 12 heads).
        pred_copy_context: target tokens start from the context token at the same spatial position and
            the latest earlier time (true or "last"), or from the mean of the context tokens at that
            position ("mean"), or from a learned per-offset mix of the two ("blend"); see `Predictor`.
            False is V-JEPA 2's pure mask-token predictor.
        masks: mask kinds (see `worldmodel.masks.build_mask_kinds`); default V-JEPA 2's two.
        loss: "l1" (V-JEPA 2) or "l2".
        target: "ema" (EMA target encoder, V-JEPA 2) or "sigreg" (one shared encoder, no EMA, SIGReg
            regulariser with weight `sigreg_weight`, LeJEPA).
        lr, weight_decay, ema_momentum: schedules as dicts for `worldmodel.schedules.Schedule`
            (e.g. {"kind": "warmup_constant_cooldown", "base": 5e-4, "warmup_steps": 50, ...}) or a
            constant number.
        total_steps: length of the schedules; default: the Trainer's max_steps.
        collapse_every: compute collapse statistics every this many steps (0: never): per-dimension std
            of target features, effective rank of pooled and token features, and the loss of a
            copy-the-context baseline (`collapse/*` metrics). A warning is printed when the std falls
            below `collapse_std_min` or the token effective rank below `collapse_rank_min`.
        mask_seed: seed of the mask generator (sample masks depend on (mask_seed, epoch, index, kind)).
    """

    def __init__(
        self,
        encoder: str = "vit_tiny",
        img_size: int = 112,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        activation_checkpointing: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        pred_depth: int = 6,
        pred_dim: int = 192,
        pred_heads: int = 6,
        pred_copy_context: bool | str = False,
        masks: list[dict[str, Any]] | None = None,
        loss: str = "l1",
        target: str = "ema",
        sigreg_weight: float = 0.05,
        sigreg_slices: int = 256,
        lr: float | dict[str, Any] = 5e-4,
        weight_decay: float | dict[str, Any] = 0.04,
        ema_momentum: float | dict[str, Any] = 0.996,
        betas: tuple[float, float] = (0.9, 0.999),
        total_steps: int | None = None,
        collapse_every: int = 25,
        collapse_std_min: float = 0.05,
        collapse_rank_min: float = 4.0,
        mask_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
        if target not in ("ema", "sigreg"):
            raise ValueError(f"target must be 'ema' or 'sigreg', got {target!r}")

        self.encoder = getattr(vit_models, encoder)(
            img_size=img_size,
            num_frames=num_frames,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            activation_checkpointing=activation_checkpointing,
            **(encoder_kwargs or {}),
        )
        self.mask_kinds = build_mask_kinds(masks if masks is not None else DEFAULT_MASKS)
        self.predictor = Predictor(
            embed_dim=self.encoder.cfg.embed_dim,
            pred_dim=pred_dim,
            depth=pred_depth,
            num_heads=pred_heads,
            num_mask_tokens=len(self.mask_kinds),
            activation_checkpointing=activation_checkpointing,
            copy_context=pred_copy_context,
        )
        if target == "ema":
            self.target_encoder = copy.deepcopy(self.encoder)
            self.target_encoder.requires_grad_(False)
        else:
            self.target_encoder = None
        self.collapse_monitor = CollapseMonitor(min_feature_std=collapse_std_min, min_token_effective_rank=collapse_rank_min)
        self._last_update: float | None = None  # when the previous optimiser step ended (throughput)
        self._clips_since_update = 0  # clips of this process's batches since then (gradient accumulation)

    # ------------------------------------------------------------------ data wiring
    def token_grid(self) -> tuple[int, int, int]:
        cfg = self.hparams
        shape = (1, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
        return self.encoder.grid(shape)

    def mask_collator(self) -> MaskCollator:
        return MaskCollator(self.token_grid(), self.mask_kinds, seed=self.hparams.mask_seed)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            check_data_matches_model(self.hparams, datamodule)
        if datamodule is not None and hasattr(datamodule, "collate_fn"):
            datamodule.collate_fn = self.mask_collator()

    def configure_callbacks(self) -> list[L.Callback]:
        """What a Trainer built by hand (not by `worldmodel pretrain`, which adds its own) needs for two of
        pretraining's promises: `DataErrorCallback` (unusable videos counted, listed in data_errors.csv,
        the run stopped past the failure share) and `DataProgressCallback` (exact mid-epoch resume).
        Only the kinds the Trainer lacks are added."""
        from worldmodel.data.datamodule import DataErrorCallback
        from worldmodel.data.loader import DataProgressCallback

        present = list(self.trainer.callbacks) if self._trainer is not None else []
        return [kind() for kind in (DataErrorCallback, DataProgressCallback) if not any(isinstance(c, kind) for c in present)]

    def _draw_masks(self, batch: dict[str, Any], grid: tuple[int, int, int], device: torch.device) -> list:
        """Masks for a batch collated without `mask_collator()` (a DataLoader of one's own): drawn here
        from each sample's (epoch, index), exactly as the collator draws them (a host sync per step)."""
        if "epoch" not in batch or "index" not in batch:
            raise ValueError(
                "the batch has no 'masks', nor each sample's 'epoch' and 'index' to draw them from: give the "
                "training DataLoader collate_fn=model.mask_collator() (VideoDataModule gets it at setup)"
            )
        collator = self.mask_collator()  # microseconds to build, beside the step's host sync below
        if tuple(grid) != tuple(collator.grid):
            raise ValueError(
                f"the clips give a token grid {tuple(grid)}, the model's masks are drawn on {tuple(collator.grid)} "
                f"(model.num_frames={self.hparams.num_frames}, model.img_size={self.hparams.img_size}): make the "
                "clips that size"
            )
        epochs = torch.as_tensor(batch["epoch"]).reshape(-1).tolist()
        indices = torch.as_tensor(batch["index"]).reshape(-1).tolist()
        return move_data_to_device(collator.masks(epochs, indices), device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume into another architecture, naming the settings that differ (before Lightning
        would list every missing and unexpected weight)."""
        self._resumed_schedule_steps = dict(checkpoint.get("schedule_steps") or {})
        self._resumed_step = checkpoint.get("global_step")
        saved = checkpoint.get("hyper_parameters") or {}
        differ = [
            f"model.{key}: checkpoint {saved[key]!r}, this run {self.hparams.get(key)!r}"
            for key in ARCHITECTURE_KEYS if key in saved and saved[key] != self.hparams.get(key)
        ]
        if "masks" in saved:  # one learned mask token per kind: the number of kinds is part of the weights
            kinds = [len(build_mask_kinds(m if m is not None else DEFAULT_MASKS)) for m in (saved["masks"], self.hparams.get("masks"))]
            if kinds[0] != kinds[1]:
                differ.append(f"model.masks: checkpoint {kinds[0]} mask kinds, this run {kinds[1]} "
                              "(the predictor learns one mask token per kind)")  # fmt: skip
        if differ:
            raise ConfigError(
                "the checkpoint was trained with other model settings, so its weights do not fit this model: "
                + "; ".join(differ) + ". Resume with the run's own config (its logs/config.yaml)."
            )

    # ------------------------------------------------------------------ schedules
    def _schedule(self, name: str) -> Schedule:
        value = self.hparams[name]
        if isinstance(value, (int, float)):
            return Schedule.constant(float(value))
        total, source = self.hparams.total_steps, "model.total_steps"
        if not total:
            total, source = int(self.trainer.max_steps), "trainer.max_steps"
        if total <= 0:  # a run bounded by epochs: the steps those epochs take
            estimate = self.trainer.estimated_stepping_batches
            if not math.isfinite(estimate):
                raise ConfigError(
                    f"a scheduled model.{name} needs the run's length: set trainer.max_steps, "
                    "trainer.max_epochs or model.total_steps"
                )
            total, source = int(estimate), "trainer.max_epochs"
        try:
            schedule = Schedule.from_config(value, total_steps=total)
        except (ValueError, TypeError) as err:  # an unknown kind or argument: named, not a traceback
            raise ConfigError(f"model.{name}: {err}") from None
        try:  # every phase must fit: fail now, not at the first optimiser step
            schedule(0)
        except ValueError as err:
            raise ConfigError(f"model.{name} does not fit a run of {total} steps ({source}): {err}") from None
        self._schedule_steps[name] = (total, source)
        return schedule

    def on_fit_start(self) -> None:
        self._schedule_steps: dict[str, tuple[int, str]] = {}
        self.lr_schedule = self._schedule("lr")
        self.wd_schedule = self._schedule("weight_decay")
        self.ema_schedule = self._schedule("ema_momentum")
        last = self._schedule_steps.get("ema_momentum", (1, ""))[0] - 1
        outside = [v for v in (self.ema_schedule(0), self.ema_schedule(last)) if not 0.0 <= v <= 1.0]
        if outside:  # found now, not at the first optimiser step (after an update the EMA never sees)
            raise ConfigError(f"model.ema_momentum must stay within [0, 1], got {outside[0]:g}")
        if self.target_encoder is not None:  # found now, not at the first optimiser step
            problem = ema_layout_problem(self.target_encoder, self.encoder, sharded=_is_fsdp(self.trainer.strategy))
            if problem:
                raise ConfigError(problem)
        saved = getattr(self, "_resumed_schedule_steps", None) or {}
        self._resumed_schedule_steps = {}  # said once, for the fit that resumed
        changed = sorted(
            (name, saved[name], total, source) for name, (total, source) in self._schedule_steps.items()
            if name in saved and saved[name] != total and not (name == "ema_momentum" and self.target_encoder is None)
        )
        if changed:  # a longer (or shorter) run re-plans its schedules: say so, it is easy to miss
            names = ", ".join(f"model.{name}" for name, *_ in changed)
            _, before, now, source = changed[0]
            # a plain print: LightningModule.print goes through a progress bar, which does not exist yet here
            # and the note was lost
            if self.trainer.is_global_zero:
                print(
                    f"[worldmodel] note: resumed at step {self._resumed_step} into schedules of {now} steps ({source}); "
                    f"the checkpoint's run planned {before}. {names} now follow the {now}-step plan from this step on "
                    f"(e.g. a cooldown that had begun starts over). To keep the old plan, set model.total_steps {before}.",
                    flush=True,
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        steps = getattr(self, "_schedule_steps", None)
        if steps:  # how long each scheduled value's plan was: a resume into another length says so
            checkpoint["schedule_steps"] = {name: total for name, (total, _) in steps.items()}

    # ------------------------------------------------------------------ step
    def forward_targets(self, video: torch.Tensor) -> torch.Tensor:
        if self.target_encoder is None:  # shared encoder; gradients flow, SIGReg prevents collapse
            return self.encoder(video)
        with torch.no_grad():
            return self.target_encoder(video)

    def _predict(self, video: torch.Tensor, masks: list, grid: tuple[int, int, int]) -> list[torch.Tensor]:
        """Predicted target tokens (B, Nt, D) of every mask kind.

        Per kind this is `predictor(encoder(video, context_idx), ...)`; all kinds run together: the
        context encoder embeds the clip once and encodes every kind's valid context tokens in one packed
        pass, and the predictor runs every kind in one batch on the token grid (`VideoViT.forward_subsets`,
        `Predictor.forward_kinds`: the same outputs up to float rounding). Subclassed modules that
        override `forward` (e.g. a predictor with other positions) keep the per-kind calls.
        """
        plain = type(self.encoder).forward is VideoViT.forward and type(self.predictor).forward is Predictor.forward
        if not plain:
            preds = []
            for mask in masks:
                context = self.encoder(video, token_idx=mask.context_idx, token_valid=mask.context_valid)  # (B, Nc, D)
                preds.append(self.predictor(
                    context, mask.context_idx, mask.context_valid, mask.target_idx, mask.target_valid,
                    grid=grid, mask_kind=mask.kind,
                ))  # (B, Nt, D)
            return preds
        contexts = self.encoder.forward_subsets(
            video, [m.context_idx for m in masks], [m.context_valid for m in masks],
            num_valid=[getattr(m, "context_count", None) for m in masks],
        )  # [(B, Nc_k, D)]
        # every built-in kind splits each clip's grid into context and targets (known on the host, no sync)
        covered = all(getattr(m, "covers_grid", False) and tuple(m.grid) == tuple(grid) for m in masks)
        return self.predictor.forward_kinds(
            contexts, [m.context_idx for m in masks], [m.context_valid for m in masks],
            [m.target_idx for m in masks], [m.target_valid for m in masks], grid, [m.kind for m in masks],
            grid_covered=covered,
        )  # [(B, Nt_k, D)]

    def compute_loss(self, batch: dict[str, Any]) -> StepOutput:
        """One JEPA forward pass over a collated batch; no host syncs."""
        video = normalize_video(batch["video"])  # (B, C, T, H, W) float
        grid = self.encoder.grid(video.shape)
        full = self.forward_targets(video)  # (B, N, D)
        targets = target_features(full)  # (B, N, D), per-token LN

        metrics: dict[str, torch.Tensor] = {}
        losses = []
        masks = batch.get("masks")
        if masks is None:
            masks = self._draw_masks(batch, grid, video.device)
        for mask, pred in zip(masks, self._predict(video, masks, grid)):
            kind_loss = jepa_loss(pred, gather_tokens(targets, mask.target_idx), mask.target_valid, kind=self.hparams.loss)
            losses.append(kind_loss)
            metrics[f"loss_kind{mask.kind}"] = kind_loss.detach()
            # effective ratios: each clip's own valid count over the grid size, averaged over clips
            metrics[f"context_ratio_kind{mask.kind}"] = mask.context_ratio
            metrics[f"target_ratio_kind{mask.kind}"] = mask.target_ratio
        loss = torch.stack(losses).mean()
        total = loss
        if self.target_encoder is None:
            generator = torch.Generator(device="cpu").manual_seed(self.hparams.mask_seed * 1_000_003 + self.global_step)
            reg = sigreg(full.flatten(0, 1).float(), num_slices=self.hparams.sigreg_slices, generator=generator)
            total = loss + self.hparams.sigreg_weight * reg
            metrics["sigreg"] = reg.detach()
        return StepOutput(total, loss, metrics, full.detach(), targets.detach(), list(masks))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.compute_loss(batch)
        total = out.total
        loss, bad_ranks = self._loss_over_ranks(out.loss.detach(), total.detach())
        if bad_ranks:
            where = "" if self.trainer.world_size == 1 else f" on rank(s) {', '.join(map(str, bad_ranks))} of {self.trainer.world_size}"
            raise NonFiniteLossError(
                f"loss became {total.item() if self.global_rank in bad_ranks else 'non-finite'}{where} at step "
                f"{self.global_step} (epoch {self.current_epoch}); stopped before applying the update. The last "
                "good checkpoint is kept. Try a lower model.lr, fp32 (trainer.precision=32), or gradient clipping "
                "(trainer.gradient_clip_val)."
            )
        self._clips_since_update += int(batch["video"].shape[0])
        # the mean over processes; the other train/* metrics are this rank's
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, on_step=True)
        every = self.hparams.collapse_every
        if every and self.global_step % every == 0:
            self._log_collapse(batch, out.full, out.targets, out.masks[0])
        return total

    def _loss_over_ranks(self, loss: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(the loss averaged over processes, the ranks whose total loss is not finite), from one all-gather
        a step (the collective the logged mean needs anyway). Every rank learns of a NaN on any rank, so all
        of them stop at the same step. A rank that stopped alone left the others in the next collective:
        waiting there until the launcher's timeout (NCCL), or failing with "connection closed by peer" (gloo)."""
        flags = torch.stack([loss.float(), (~torch.isfinite(total)).float()])  # (2,)
        if self.trainer.world_size == 1:
            return loss, [0] if flags[1] else []
        gathered = self.all_gather(flags)  # (world, 2)
        bad = torch.nonzero(gathered[:, 1]).flatten().tolist()
        return gathered[:, 0].mean().to(loss.dtype), bad

    @torch.no_grad()
    def _log_collapse(self, batch, full, targets, mask) -> None:
        """The collapse monitors, over every process's clips in a multi-process run (`collapse_stats` with
        `gather`; the copy-context baseline is the mean of the processes' values): with a small batch per
        process, the effective rank of rank 0's clips alone is capped by that batch and its check was off."""
        world = self.trainer.world_size
        gather = self.all_gather if world > 1 else None
        stats = collapse_stats(full, gather=gather)
        baseline = copy_context_loss(
            targets, mask.context_idx, mask.context_valid, mask.target_idx, mask.target_valid,
            kind=self.hparams.loss, grid=self.encoder.grid(batch["video"].shape),
        )
        if gather is not None:
            baseline = gather(baseline.reshape(1)).mean()
        # straight to the loggers, at this step only: through self.log, Lightning would repeat these
        # values at every later logging step until the next measurement
        row = {f"collapse/{name}": float(value) for name, value in stats.items()}
        row["collapse/copy_context_loss"] = float(baseline)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(row, step=self.global_step)
        for warning in self.collapse_monitor.check(stats, batch_size=full.shape[0] * world):
            self.print(f"[worldmodel] collapse warning at step {self.global_step}: {warning}")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            # biases, norms, mask tokens and the predictor's copy gate are not weight-decayed
            if param.ndim <= 1 or "mask_token" in name or "copy_gate" in name:
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [
            {"params": decay, "weight_decay": 0.0, "wd_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=0.0, betas=tuple(self.hparams.betas))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping (trainer.gradient_clip_val), also under FSDP, whose precision plugin refuses
        clipping by norm at the first step: there the sharded model clips itself, by the norm over all shards."""
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and _is_fsdp(self.trainer.strategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        step = self.global_step
        lr, wd = self.lr_schedule(step), self.wd_schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd * group.get("wd_scale", 1.0)
        optimizer.step(closure=optimizer_closure)
        if self.target_encoder is not None:
            momentum = self.ema_schedule(step)
            ema_update(self.target_encoder, self.encoder, momentum)
            self.log("train/ema_momentum", momentum, on_step=True)
        self.log("train/lr", lr, on_step=True)
        self.log("train/weight_decay", wd, on_step=True)
        # throughput: the clips of all processes since the previous update, over the time between the two
        # (loading included). Logged here, inside the batch, so that the progress bar (a callback, whose
        # batch-end hook runs before this module's) shows this step's value, not the previous one's.
        now = time.perf_counter()
        if self._last_update is not None:
            clips = self._clips_since_update * self.trainer.world_size
            self.log("train/clips_per_s", clips / max(now - self._last_update, 1e-9), on_step=True, prog_bar=True)
        self._last_update, self._clips_since_update = now, 0

    # ------------------------------------------------------------------ memory
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        for name, value in memory_stats(self.device).items():  # to watch a long run's memory in its logs
            self.log(f"memory/{name}", value, on_step=True)
