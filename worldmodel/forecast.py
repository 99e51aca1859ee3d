"""Forecast future latents: load a pretrained world model, encode clips, predict what comes next.

`WorldModel` is the inference facade (a plain `nn.Module`, eval mode, no Lightning): the context
encoder, the EMA target encoder and the predictor of a pretraining checkpoint.

Which encoder feeds what
------------------------
- The predictor was trained on *context-encoder* outputs (the online encoder run on the context
  tokens only), so forecasting encodes the context frames with the context encoder.
- Its regression targets were the *target encoder's* tokens of the whole clip, layer-normed without
  affine (`objectives.target_features`). Predicted latents live in that space: compare them with
  `WorldModel.target_features(clip)` at the future positions, as `forecast_quality` does.
- `encode()` returns the target encoder's tokens by default (`load(..., encoder="target")`, what
  V-JEPA 2's evaluations and probes use); `encode(video, encoder="context")` gives the other one. A
  SIGReg checkpoint has one shared encoder, used for both; so has a folder exported with one encoder
  (`context_encoder_role` says which, and the forecast metadata records it).

Forecasting
-----------
The token grid of a clip is (t, h, w); time step i holds tubelet i (`tubelet_size` frames). Given the
tokens of k context steps, `forecast` asks the predictor for the next steps exactly as the future mask
(`masks.FutureMask`) posed it in training: context tokens at grid time steps 0..C-1, one learned mask
token (the FutureMask's kind; kind 0 if the checkpoint was trained without one) at every spatial
position of time steps C..C+W-1, and returns the predictions (B, horizon * h * w, D) in (t h w) order.

Long horizons roll out autoregressively (`rollout_plan` lists the calls):

- each call keeps the newest C = min(available steps, max_context) steps of context, dropping the
  oldest, and RE-INDEXES them to time steps 0..C-1, so the newest context step sits right before the
  first target, where it sat in training. By default max_context is the LONGEST context the
  FutureMask drew in training (k_max of its `context_range`; t_nominal - 1 without a FutureMask);
- each call predicts a window of W future steps, by default W = t_nominal (num_frames / tubelet_size):
  one call places mask tokens at times C..C + t_nominal - 1, past the nominal grid where C + W >
  t_nominal (the rotary positions extrapolate, as in V-JEPA 2's anticipation probe, which queries a
  slot 1 s past the clip). So a horizon up to t_nominal needs no fed-back predictions at all. On the
  tiny run this default was chosen on the TRAINING videos: L1 at steps 1-4 of 0.294 / 0.332 / 0.349 /
  0.360, against 0.286 / 0.337 / 0.360 / 0.411 with the shortest trained context and the longest
  trained window (the previous default), and 0.294 / 0.360 / 0.407 / 0.450 with k_max context and one
  step per call (with the previous tiny predictor, `pred_copy_context: true`, the ranking was the same);
- an explicit `max_context` alone gives W = max(1, t_nominal - C), which fills the nominal grid
  exactly as a training sample with C context steps did; an explicit `window` alone keeps
  C = min(k_max, t_nominal - W) (at least 1) so that the call still fits the nominal grid;
- the window never depends on the horizon: a shorter horizon keeps a prefix of the same call, so
  `forecast(x, h)` equals `forecast(x, H)[:, : h * h_grid * w_grid]` for every h <= H;
- the kept predictions are appended to the context as if they were encoder outputs and the window
  slides on. Predictions are in the layer-normed target space, while the encoder's outputs carry the
  affine of its final LayerNorm, so fed-back predictions are first mapped back to the encoder's scale
  (`feedback="rescale"`, default): layer-normed, then given the per-token mean and standard deviation
  (over D) of the last real context step at the same spatial position. `feedback="raw"` feeds them
  back unchanged.

Measuring a forecast
--------------------
`forecast_quality` compares, per future step, the model with two baselines, all against the same
targets: the target encoder's layer-normed tokens of the real clip (context + future frames encoded
together, as in training), at the future positions. Baselines: "copy_last" repeats the target
features of the last context step; "context_mean" predicts, at each spatial position, the mean over
the context steps of the target features. The baselines take their features from that same
full-clip pass, whose context tokens have attended to the future frames: this can only help them,
so a model that beats them does so honestly. Metrics: cosine similarity and L1 (mean |diff| over
D, like the training loss), averaged over the h * w tokens of a step, then over clips.

Anchoring
---------
On some held-out videos the predictor's far steps are worse than simply keeping the scene's average
(the tiny run: on the built-in corpus's 18 validation videos its steps 3-4 lose to the context mean;
on its training videos and on 72 videos of another corpus draw they win). Its own
`pred_copy_context: blend` gate learns that trade-off from the training poses, which mostly ask for
near targets. An anchor (`ForecastAnchor`, `worldmodel forecast --fit-anchor TRAIN_MANIFEST`)
learns it where the forecast is used: per horizon step, weights (w_p, w_l, w_m) >= 0 summing to 1,
and the forecast becomes

    w_p * predictor + w_l * (last context step) + w_m * (context mean)

where the last two are the target encoder's layer-normed features of the CONTEXT FRAMES ALONE (what a
forecast has; the baselines of `forecast_quality` use the full clip, which has seen the future). The
weights are the point of a 1/20 simplex grid with the lowest mean L1 over clips of the fit manifest:
fit them on training videos and evaluate on others. An anchor records the model (`weights_sha256`)
and the rollout settings it was fit for; using it with another is an error. `--eval --anchor` reports
the anchored forecast as "model" and the predictor's own as "predictor".

Command line (wired by `worldmodel.cli`):

    worldmodel forecast --checkpoint CKPT --video A.mp4 [B.mp4 ...] --out latents.safetensors \
        [--start S] [--context-frames N | --context-s S] [--fps F | --frame-step N] [--horizon H]
    worldmodel forecast --eval MANIFEST --checkpoint CKPT --out DIR [--clips N] [--horizon H] [--anchor JSON]
    worldmodel forecast --fit-anchor TRAIN_MANIFEST --checkpoint CKPT --out DIR [--clips N]
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from worldmodel.checkpoints import CheckpointError, atomic_write_bytes, is_vjepa2_source, load_model_roles, weights_hash
from worldmodel.cliutil import DeviceError, json_text, output_problem, resolve_device
from worldmodel.data.transforms import ResizeCenterCropVideo, normalize_video
from worldmodel.data.video import ClipSampler, VideoError, VideoInfo, read_frames, read_video_info
from worldmodel.masks import FutureMask, build_mask_kinds
from worldmodel.objectives import target_features

FEEDBACK_MODES = ("rescale", "raw")
METHODS = ("model", "copy_last", "context_mean")
METRICS = ("cosine", "l1")
DEFAULT_HORIZON = 4


class ForecastError(RuntimeError):
    """A forecast that cannot be made as asked; the message names the file and what to change."""


ANCHOR_FORMAT = "worldmodel.forecast_anchor/1"
ANCHOR_SOURCES = ("predictor", "copy_last", "context_mean")
ANCHOR_GRID = 20  # anchor weights are fit on the simplex in steps of 1 / ANCHOR_GRID


@dataclass
class ForecastAnchor:
    """Per-step weights that anchor the predictor's forecast to the context (see the module docstring).

    weights[i] = (predictor, copy_last, context_mean) for horizon step i + 1, non-negative, summing to 1;
    steps past the last fitted one use the last row (outputs list them as `steps_past_fit`, and the
    CLIs say so in the log). `model_sha256` names the model it was fit for
    (`WorldModel.weights_sha256`), `rollout` the rollout settings of the fit, `fit` what it was fit on.
    """

    weights: list[list[float]]
    model_sha256: str
    rollout: dict[str, Any]
    fit: dict[str, Any]
    source: str | None = None  # the file it was loaded from, for messages (not saved)

    @staticmethod
    def step_rows(weights: Sequence[Sequence[float]], horizon: int) -> list[list[float]]:
        """The weight rows for steps 1..horizon (past the last fitted step: the last row)."""
        return [list(weights[min(i, len(weights) - 1)]) for i in range(horizon)]

    def apply(self, pred: Tensor, context_targets: Tensor) -> Tensor:
        """pred (B, H, S, D) raw predictions, context_targets (B, k, S, D) the target features of the context
        frames alone -> the anchored forecast (B, H, S, D)."""
        return anchor_mix(torch.tensor(self.step_rows(self.weights, pred.shape[1])), pred, context_targets)

    @property
    def name(self) -> str:
        """How messages name this anchor: by its file when it was loaded from one."""
        return f"anchor {self.source}" if self.source else "the anchor"

    def check(self, model: WorldModel, rollout: dict[str, Any]) -> None:
        """ForecastError unless the anchor was fit for this model and these rollout settings."""
        where = self.name
        if self.model_sha256 != model.weights_sha256():
            raise ForecastError(
                f"{where} was fit for another model (weights sha256 {self.model_sha256[:12]}..., this one "
                f"{model.weights_sha256()[:12]}...; fit on {self.fit.get('checkpoint')}). Fit one for this "
                "checkpoint with `worldmodel forecast --fit-anchor TRAIN_MANIFEST`."
            )
        mismatch = [f"{k} {self.rollout.get(k)} (fit) != {rollout.get(k)}" for k in ("window", "max_context", "feedback")
                    if self.rollout.get(k) != rollout.get(k)]
        if mismatch:
            raise ForecastError(f"{where} was fit with other rollout settings: {', '.join(mismatch)}")

    def as_dict(self) -> dict[str, Any]:
        return {"format": ANCHOR_FORMAT, "sources": list(ANCHOR_SOURCES), "weights": self.weights,
                "model_sha256": self.model_sha256, "rollout": self.rollout, "fit": self.fit}

    def steps_past_fit(self, horizon: int) -> list[int]:
        """Horizon steps (1-based) that no fitted row covers: they reuse the last row."""
        return list(range(len(self.weights) + 1, horizon + 1))

    def applied(self, horizon: int) -> dict[str, Any]:
        """`as_dict` plus what a forecast of `horizon` steps used: each step's weights, and the steps
        past the fitted ones (which reuse the last row), so that outputs say so rather than hide it."""
        return {**self.as_dict(), "step_weights": self.step_rows(self.weights, horizon),
                "steps_past_fit": self.steps_past_fit(horizon)}

    def past_fit_note(self, horizon: int) -> str | None:
        """A one-line note for the log when `horizon` goes past the fitted steps, else None."""
        past = self.steps_past_fit(horizon)
        if not past:
            return None
        steps = f"step {past[0]} reuses" if len(past) == 1 else f"steps {past[0]}-{past[-1]} reuse"
        return (f"{self.name} was fit for {len(self.weights)} horizon steps; {steps} the weights of step "
                f"{len(self.weights)} (fit it with --horizon {horizon} to cover them)")

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_bytes((json_text(self.as_dict(), indent=2) + "\n").encode(), Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ForecastAnchor:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ForecastError(f"anchor file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ForecastError(f"{path}: not a forecast anchor (not JSON: {err})") from None
        if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
            raise ForecastError(f"{path}: not a forecast anchor (format is not {ANCHOR_FORMAT!r})")
        weights = data.get("weights")

        def valid(row: Any) -> bool:
            return (isinstance(row, list) and len(row) == 3 and all(isinstance(x, (int, float)) for x in row)
                    and min(row) >= 0 and abs(sum(row) - 1) <= 1e-6)

        if not isinstance(weights, list) or not weights or not all(valid(row) for row in weights):
            raise ForecastError(f"{path}: weights must be rows of 3 non-negative numbers summing to 1, got {weights}")
        if not isinstance(data.get("model_sha256"), str):
            raise ForecastError(f"{path}: no model_sha256: cannot tell which model the anchor was fit for")
        return cls(weights=[[float(x) for x in row] for row in weights], model_sha256=str(data["model_sha256"]),
                   rollout=dict(data.get("rollout") or {}), fit=dict(data.get("fit") or {}), source=os.fspath(path))


def anchor_mix(weights: Tensor, pred: Tensor, context_targets: Tensor) -> Tensor:
    """weights (H, 3) of (predictor, last context step, context mean) per step; pred (B, H, S, D);
    context_targets (B, k, S, D) -> weights[:, 0] * pred + weights[:, 1] * last + weights[:, 2] * mean."""
    w = weights.to(pred.device, pred.dtype)[:, :, None, None]  # (H, 3, 1, 1)
    last = context_targets[:, -1:].to(pred.dtype)  # (B, 1, S, D)
    mean = context_targets.mean(dim=1, keepdim=True).to(pred.dtype)
    return w[:, 0] * pred + w[:, 1] * last + w[:, 2] * mean


# ---------------------------------------------------------------------------------------------- rollout
@dataclass(frozen=True)
class RolloutCall:
    """One predictor call of a rollout: `context_steps` steps at grid times 0..C-1, targets at C..C+W-1."""

    context_steps: int  # C
    window: int  # W: future steps queried
    keep: int  # how many of the W predictions are used (the rest lie past the horizon)


# |value| no normalised clip reaches: (0 - 0.485) / 0.229 .. (1 - 0.406) / 0.225 is -2.1 .. 2.6 for ImageNet
# statistics; 0-255 pixel values passed as float are far above it
MAX_NORMALISED = 20.0


def rollout_plan(
    available: int, horizon: int, nominal_steps: int, max_context: int, window: int | None = None
) -> list[RolloutCall]:
    """The predictor calls that forecast `horizon` steps from `available` context steps.

    Each call uses C = min(available, max_context) context steps and queries W = window (default:
    max(1, nominal_steps - C)) future steps; its predictions join the context for the next call.
    """
    if available < 1:
        raise ForecastError("forecast needs at least one context time step (one tubelet of frames)")
    for name, value in (("horizon", horizon), ("max_context", max_context), ("window", window)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ForecastError(f"{name} must be a whole number of time steps (tubelets), got {value!r}")
    if horizon < 1:
        raise ForecastError(f"horizon must be >= 1 tubelet, got {horizon}")
    if max_context < 1:
        raise ForecastError(f"max_context must be >= 1 time step, got {max_context}")
    if window is not None and window < 1:
        raise ForecastError(f"window must be >= 1 time step, got {window}")
    calls, produced = [], 0
    while produced < horizon:
        context = min(available, max_context)
        width = window if window is not None else max(1, nominal_steps - context)
        keep = min(width, horizon - produced)
        calls.append(RolloutCall(context, width, keep))
        produced += keep
        available += keep
    return calls


def to_context_space(pred: Tensor, reference: Tensor) -> Tensor:
    """Map predicted (layer-normed) latents back to the scale of encoder outputs, for feeding back.

    pred (B, W, S, D); reference (B, S, D): encoder outputs of the last real context step. Every
    predicted token is layer-normed, then scaled and shifted by the per-token std and mean (over D) of
    the reference token at the same spatial position s. Returns (B, W, S, D).
    """
    ref = reference.float()
    mean = ref.mean(dim=-1, keepdim=True)  # (B, S, 1)
    std = ref.std(dim=-1, keepdim=True, correction=0)  # (B, S, 1)
    normed = F.layer_norm(pred.float(), pred.shape[-1:])
    return (normed * std.unsqueeze(1) + mean.unsqueeze(1)).to(pred.dtype)


# ---------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class ClipTiming:
    """How frames are sampled from a video: at `fps` frames per second, or every `frame_step`-th frame."""

    fps: float | None = None
    frame_step: int | None = None

    def __post_init__(self) -> None:
        if (self.fps is None) == (self.frame_step is None):
            raise ForecastError(f"ClipTiming needs exactly one of fps and frame_step, got {self}")
        if self.fps is not None and not self.fps > 0:
            raise ForecastError(f"--fps must be > 0, got {self.fps}")
        if self.frame_step is not None and (int(self.frame_step) != self.frame_step or self.frame_step < 1):
            raise ForecastError(f"--frame-step must be a positive integer, got {self.frame_step}")

    @classmethod
    def from_data_config(cls, data: dict[str, Any] | None) -> ClipTiming | None:
        """The timing a `VideoDataModule` config trained with (fps or duration_s win over frame_step)."""
        if not data:
            return None
        if data.get("fps"):
            return cls(fps=float(data["fps"]))
        if data.get("duration_s") and data.get("num_frames"):
            return cls(fps=float(data["num_frames"]) / float(data["duration_s"]))
        if data.get("frame_step"):
            return cls(frame_step=int(data["frame_step"]))
        return None

    def sampler(self, num_frames: int) -> ClipSampler:
        return ClipSampler(num_frames=num_frames, fps=self.fps, frame_step=self.frame_step, short_policy="skip")

    def sample_rate(self, video_fps: float) -> float:
        """Sampled frames per second of video time."""
        return float(self.fps) if self.fps is not None else video_fps / int(self.frame_step)

    def as_dict(self) -> dict[str, Any]:
        return {"fps": self.fps} if self.fps is not None else {"frame_step": int(self.frame_step)}


# ---------------------------------------------------------------------------------------------- model
class WorldModel(nn.Module):
    """Context encoder + target encoder + predictor of a pretrained JEPA, for inference (eval mode).

    Build it with `WorldModel.load(checkpoint)`. Inputs are videos (B, C, T, H, W) or (C, T, H, W)
    (a batch of one): uint8 (normalised here with `normalize_video`) or float already normalised.
    """

    def __init__(
        self,
        context_encoder: nn.Module,
        target_encoder: nn.Module,
        predictor: nn.Module,
        config: dict[str, Any],
        encoder: str = "target",
        data_config: dict[str, Any] | None = None,
        source: str | None = None,
        context_encoder_role: str = "context",
    ) -> None:
        super().__init__()
        if encoder not in ("target", "context"):
            raise ValueError(f"encoder must be 'target' or 'context', got {encoder!r}")
        self.context_encoder = context_encoder
        self.target_encoder = target_encoder
        self.predictor = predictor
        self.config = dict(config)
        self.default_encoder = encoder
        self.data_config = dict(data_config) if data_config else None
        self.source = source
        # what `context_encoder` really is: "context", "shared" (SIGReg), or "target" for a folder
        # exported with the target encoder only (forecasts are then fed from the target encoder)
        self.context_encoder_role = context_encoder_role
        try:
            kinds = build_mask_kinds(self.config.get("masks") or _default_masks())
        except (ValueError, TypeError, KeyError) as err:  # a damaged or foreign config, named, not a traceback
            raise CheckpointError(f"{source}: its \"masks\" hyper-parameters do not build masks ({err})") from err
        future = [i for i, kind in enumerate(kinds) if isinstance(kind, FutureMask)]
        self.future_mask: FutureMask | None = kinds[future[0]] if future else None
        self.mask_kind = future[0] if future else 0
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, path: str | os.PathLike, encoder: str = "target", device: torch.device | str | None = None,
        **vjepa2_options: Any,
    ) -> WorldModel:
        """From a `worldmodel pretrain` checkpoint (or whatever `load_model_parts` accepts).

        encoder: which encoder `encode()` uses by default ("target": the EMA encoder). Forecasting
        always feeds the predictor from the context encoder (what it was trained on).
        device: where the model goes ("auto": cuda when available, "cpu", "cuda:1", a torch.device; None
        leaves it on the CPU); one this machine cannot use raises DeviceError before the file is read.
        vjepa2_options: for a V-JEPA 2 `.pt` file read directly, what its file does not record, as
        `worldmodel import-vjepa2` takes them (e.g. ``img_size=384`` for vitg-384; see `load_vjepa2`).
        """
        if encoder not in ("target", "context"):
            raise ValueError(f"encoder must be 'target' or 'context', got {encoder!r}")
        if device is not None:  # checked before the (possibly multi-GB) read: a clear DeviceError, not an assert
            device = resolve_device(device, option="device")
        parts = load_model_roles(path, ("context", "target"), **vjepa2_options)  # one read for both encoders
        context_parts = parts["context"]
        # a SIGReg model has one shared encoder; a folder exported with one encoder gives it for both roles
        target_encoder = parts["target"].encoder
        model = cls(
            context_parts.encoder,
            target_encoder,
            context_parts.predictor,
            context_parts.config,
            encoder=encoder,
            data_config=getattr(context_parts, "data_config", None),
            source=str(path),
            context_encoder_role=getattr(context_parts, "encoder_role", "context"),
        )
        return model.to(device) if device is not None else model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> WorldModel:
        """Alias of `load`, for exported folders (model.safetensors + config.json)."""
        return cls.load(path, **kwargs)

    # ------------------------------------------------------------------ geometry
    @property
    def tubelet_size(self) -> int:
        return int(self.context_encoder.cfg.tubelet_size)

    @property
    def patch_size(self) -> int:
        return int(self.context_encoder.cfg.patch_size)

    @property
    def img_size(self) -> int | tuple[int, int]:
        """Nominal frame size: an int (square) or (height, width)."""
        size = self.context_encoder.cfg.img_size
        return int(size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))

    @property
    def num_frames(self) -> int:
        return int(self.context_encoder.cfg.num_frames)

    @property
    def embed_dim(self) -> int:
        return int(self.context_encoder.cfg.embed_dim)

    @property
    def nominal_steps(self) -> int:
        """Token time steps of a training clip (num_frames / tubelet_size)."""
        return self.num_frames // self.tubelet_size

    @property
    def context_range(self) -> tuple[int, int]:
        """(k_min, k_max) context steps the FutureMask drew in training; (1, t - 1) without one."""
        if self.future_mask is None:
            return 1, max(1, self.nominal_steps - 1)
        return self.future_mask.context_range(self.nominal_steps)

    @property
    def max_context(self) -> int:
        """The longest context the FutureMask drew in training: how much context a clip to forecast from
        gets by default (each rollout call then keeps `rollout_context()` steps of it)."""
        return self.context_range[1]

    def rollout_context(self, window: int | None = None, max_context: int | None = None) -> int:
        """Context steps a rollout call keeps: `max_context` if given; with an explicit `window` the longest
        trained context that still fits the nominal grid with it; by default the longest trained context
        (see the module docstring)."""
        if max_context is not None:
            return max_context
        if window is None:
            return self.max_context
        return max(1, min(self.max_context, self.nominal_steps - window))

    def rollout_window(self, window: int | None = None, max_context: int | None = None) -> int | None:
        """Future steps a rollout call queries: `window` if given; None (fill the nominal grid, see
        `rollout_plan`) with an explicit `max_context` alone; by default t_nominal steps, past the grid."""
        if window is not None or max_context is not None:
            return window
        return self.nominal_steps

    @property
    def clip_timing(self) -> ClipTiming | None:
        """The frame sampling the model was pretrained with, when the checkpoint records it."""
        return ClipTiming.from_data_config(self.data_config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def weights_sha256(self) -> str:
        """sha256 of the three parts' weights: what a forecast anchor was fit for."""
        return weights_hash([self.context_encoder, self.target_encoder, self.predictor])

    def rollout_settings(self, window: int | None = None, max_context: int | None = None,
                         feedback: str = "rescale") -> dict[str, Any]:
        return {"window": self.rollout_window(window, max_context), "max_context": self.rollout_context(window, max_context),
                "nominal_steps": self.nominal_steps, "feedback": feedback}

    def eval_transform(self) -> ResizeCenterCropVideo:
        """uint8 (T, H, W, C) frames -> uint8 (C, T, S, S) at the model's img_size (resize + centre crop)."""
        return ResizeCenterCropVideo(self.img_size)

    # ------------------------------------------------------------------ encoding
    def _as_input(self, video: Tensor) -> Tensor:
        """uint8 or float (B, C, T, H, W) / (C, T, H, W) -> normalised float (B, C, T, H, W) on the device."""
        if isinstance(video, (str, os.PathLike)):
            raise ForecastError(
                f"encode / forecast take a video tensor, not a path ({os.fspath(video)!r}): read the clip first, e.g. "
                "frames = worldmodel.data.video.read_frames(path, indices); video = model.eval_transform()(frames)"
            )
        if not isinstance(video, Tensor):
            video = torch.as_tensor(np.asarray(video))  # a numpy array (or nested lists) of frames
        if video.ndim == 4:
            video = video.unsqueeze(0)
        cfg = self.context_encoder.cfg
        if video.ndim != 5 or video.shape[1] != cfg.in_chans:
            raise ForecastError(
                f"expected a video (B, C, T, H, W) or (C, T, H, W) with C = {cfg.in_chans} channels, got shape "
                f"{tuple(video.shape)}. Frames from read_frames / read_clips are (T, H, W, C): use "
                "model.eval_transform()(frames), which also crops them to the model's size, or frames.permute(3, 0, 1, 2)"
            )
        if video.shape[2] < cfg.tubelet_size:
            raise ForecastError(
                f"the video has {video.shape[2]} frames; the model needs at least one tubelet ({cfg.tubelet_size} frames)"
            )
        try:  # frames a multiple of the tubelet, sides of the patch: a ForecastError like every input check here
            self.context_encoder.grid(tuple(video.shape))
        except ValueError as err:
            raise ForecastError(str(err).removeprefix("worldmodel/models/vit.py: ")) from None
        video = video.to(self.device)
        if video.dtype == torch.uint8:
            norm = self.config.get("normalization") or {}
            video = normalize_video(video, **{k: tuple(norm[k]) for k in ("mean", "std") if k in norm})
        elif not video.is_floating_point():
            raise ForecastError(f"video must be uint8 or float (already normalised), got {video.dtype}")
        elif video.numel():
            low, high = (float(v) for v in torch.aminmax(video.detach()))  # one pass over the clip
            if (largest := max(-low, high)) > MAX_NORMALISED:
                raise ForecastError(
                    f"float video holds values up to {largest:.4g}: it looks like pixel "
                    "values (0-255), not a normalised clip; pass uint8 frames (normalised here) or normalise them "
                    "with worldmodel.data.transforms.normalize_video"
                )
            if video.numel() >= 1024 and low >= 0.0 and high <= 1.0:
                # a normalised clip is negative wherever a pixel is darker than the mean (about 115 of 255)
                warnings.warn(
                    "float video lies within [0, 1]: it looks like pixel values scaled to 0-1, not a normalised "
                    "clip (nothing in it is darker than the normalisation mean); pass uint8 frames (normalised here) "
                    "or normalise with worldmodel.data.transforms.normalize_video", stacklevel=3,
                )  # fmt: skip
        return video.to(next(self.parameters()).dtype)

    def _encoder(self, name: str | None) -> nn.Module:
        name = name or self.default_encoder
        if name == "context":
            return self.context_encoder
        if name == "target":
            return self.target_encoder
        raise ValueError(f"encoder must be 'target' or 'context', got {name!r}")

    @torch.no_grad()
    def encode(self, video: Tensor, encoder: str | None = None) -> Tensor:
        """Tokens (B, N, D), N = t*h*w in (t h w) order; (C, T, H, W) input gives B = 1.

        encoder: "target" or "context"; default the one chosen at `load`.
        """
        return self._encoder(encoder)(self._as_input(video))

    @torch.no_grad()
    def target_features(self, video: Tensor) -> Tensor:
        """What the predictor was trained to match: layer-normed target-encoder tokens (B, N, D)."""
        return target_features(self.encode(video, encoder="target"))

    def target_steps(self, video: Tensor, tokens: Tensor | None = None) -> Tensor:
        """`target_features` per time step: (B, t, h * w, D). tokens: the target encoder's tokens of
        `video` when the caller already has them (not encoded again)."""
        positions = math.prod(self._spatial_grid(video.shape))
        features = self.target_features(video) if tokens is None else target_features(tokens)
        return rearrange(features, "b (t s) d -> b t s d", s=positions)

    # ------------------------------------------------------------------ forecasting
    def _spatial_grid(self, video_shape: Sequence[int]) -> tuple[int, int]:
        _, h_grid, w_grid = self.context_encoder.grid(tuple(video_shape))
        return h_grid, w_grid

    @torch.no_grad()
    def forecast(
        self,
        context: Tensor,
        horizon: int,
        window: int | None = None,
        *,
        max_context: int | None = None,
        encoder: str = "context",
        feedback: str = "rescale",
        anchor: ForecastAnchor | None = None,
        encoded: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Latents of the next `horizon` tubelets after the context clip: (B, horizon * h * w, D).

        context: video (B, C, T, H, W) or (C, T, H, W), uint8 or normalised float, T a multiple of
        tubelet_size. window / max_context: see the module docstring (defaults: t_nominal future steps per
        call / the longest trained context). encoder: which encoder feeds the predictor ("context", as in
        training). The predictor's mask token is the FutureMask's kind (`self.mask_kind`), kind 0 for a
        checkpoint trained without a FutureMask (its predictor never learned to forecast). anchor: mix
        each step with the context's own target features (see "Anchoring" in the module docstring).
        encoded: tokens of `context` the caller already has, by encoder ("context", "target"; from
        `encode`), used instead of running that encoder again.
        """
        encoded = encoded or {}
        video = self._as_input(context)
        hw = self._spatial_grid(video.shape)
        tokens = encoded[encoder] if encoder in encoded else self._encoder(encoder)(video)  # (B, k*h*w, D)
        pred = self.predict(tokens, hw, horizon, window, max_context=max_context, feedback=feedback)
        if anchor is None:
            return pred
        context_steps = self.target_steps(video, encoded.get("target"))  # (B, k, h*w, D)
        anchored = anchor.apply(rearrange(pred, "b (t s) d -> b t s d", s=hw[0] * hw[1]), context_steps)
        return rearrange(anchored, "b t s d -> b (t s) d")

    @torch.no_grad()
    def predict(
        self,
        context_tokens: Tensor,
        spatial_grid: tuple[int, int],
        horizon: int,
        window: int | None = None,
        *,
        max_context: int | None = None,
        feedback: str = "rescale",
    ) -> Tensor:
        """The rollout on encoder tokens: context_tokens (B, k*h*w, D) of k whole time steps in (t h w)
        order -> predicted latents (B, horizon * h * w, D). See the module docstring."""
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
        h_grid, w_grid = spatial_grid
        positions = h_grid * w_grid
        if context_tokens.ndim != 3 or context_tokens.shape[1] % positions:
            raise ForecastError(
                f"context tokens {tuple(context_tokens.shape)} are not (B, k * {h_grid} * {w_grid}, D) "
                "for whole time steps"
            )
        history = rearrange(context_tokens, "b (t s) d -> b t s d", s=positions)  # (B, k, S, D)
        reference = history[:, -1]  # (B, S, D) last real step: scale of fed-back predictions
        plan = rollout_plan(
            history.shape[1], horizon, self.nominal_steps, self.rollout_context(window, max_context),
            self.rollout_window(window, max_context),
        )
        predicted = []
        for call in plan:
            context = history[:, -call.context_steps :]  # newest C steps, re-indexed to times 0..C-1
            out = self._predict_window(context, call.window, (h_grid, w_grid))  # (B, W, S, D)
            kept = out[:, : call.keep]
            predicted.append(kept)
            if call is not plan[-1]:
                fed = to_context_space(kept, reference) if feedback == "rescale" else kept
                history = torch.cat([history, fed.to(history.dtype)], dim=1)
        return rearrange(torch.cat(predicted, dim=1), "b t s d -> b (t s) d")  # (B, H*S, D)

    def _predict_window(self, context: Tensor, window: int, spatial_grid: tuple[int, int]) -> Tensor:
        """One predictor call: context (B, C, S, D) at times 0..C-1, mask tokens at times C..C+W-1."""
        batch, steps, positions, _ = context.shape
        grid = (steps + window, *spatial_grid)
        device = context.device
        context_idx = torch.arange(steps * positions, device=device).expand(batch, -1)  # (B, C*S)
        target_idx = torch.arange(steps * positions, grid[0] * positions, device=device).expand(batch, -1)  # (B, W*S)
        pred = self.predictor(
            rearrange(context, "b t s d -> b (t s) d"), context_idx, None, target_idx, None,
            grid=grid, mask_kind=self.mask_kind,
        )  # (B, W*S, D)
        return rearrange(pred, "b (t s) d -> b t s d", s=positions)

    # ------------------------------------------------------------------ video files
    def read_clip(
        self,
        path: str | os.PathLike,
        horizon: int = DEFAULT_HORIZON,
        *,
        start_s: float = 0.0,
        context_frames: int | None = None,
        context_s: float | None = None,
        timing: ClipTiming | None = None,
        require_future: bool = False,
    ) -> ForecastClip:
        """Decode the context (and, when the video holds them, the future) frames of one forecast."""
        return read_forecast_clip(
            path, self, horizon, start_s=start_s, context_frames=context_frames, context_s=context_s,
            timing=timing, require_future=require_future,
        )


def _default_masks() -> list[dict[str, Any]]:
    from worldmodel.pretrain import DEFAULT_MASKS

    return DEFAULT_MASKS


# ---------------------------------------------------------------------------------------------- clips
@dataclass
class ForecastClip:
    """The frames of one forecast: context (and future, when the video holds them), and where they are."""

    path: str
    context: Tensor  # uint8 (C, k * tubelet, S, S)
    future: Tensor | None  # uint8 (C, horizon * tubelet, S, S), None when the video ends before
    context_indices: np.ndarray  # int64 (k * tubelet,) source frames
    future_indices: np.ndarray  # int64 (horizon * tubelet,) source frames the forecast stands for
    video: VideoInfo  # frame count, rate and (variable rate) frame times
    timing: ClipTiming

    def metadata(self) -> dict[str, Any]:
        return {
            "video": self.path,
            "context_frame_indices": self.context_indices.tolist(),
            "context_timestamps": self.video.times_of(self.context_indices).round(6).tolist(),
            "future_frame_indices": self.future_indices.tolist(),
            "future_timestamps": self.video.times_of(self.future_indices).round(6).tolist(),
            "future_available": self.future is not None,
        }


def resolve_timing(model: WorldModel, fps: float | None = None, frame_step: int | None = None) -> ClipTiming:
    """--fps / --frame-step, else the checkpoint's training timing, else every frame."""
    if fps is not None and frame_step is not None:
        raise ForecastError("give --fps or --frame-step, not both")
    if fps is not None:
        return ClipTiming(fps=float(fps))
    if frame_step is not None:
        return ClipTiming(frame_step=int(frame_step))
    return model.clip_timing or ClipTiming(frame_step=1)


def context_frame_count(
    model: WorldModel,
    timing: ClipTiming,
    video_fps: float,
    context_frames: int | None = None,
    context_s: float | None = None,
    where: str = "",
) -> int:
    """Sampled context frames: --context-frames, or --context-s seconds at the sampling rate (rounded,
    then down to whole tubelets), or by default the longest trained context (max_context tubelets)."""
    tubelet = model.tubelet_size
    prefix = f"{where}: " if where else ""
    if context_frames is not None and context_s is not None:
        raise ForecastError("give --context-frames or --context-s, not both")
    if context_s is not None:
        if not context_s > 0:
            raise ForecastError(f"--context-s must be > 0, got {context_s}")
        frames = round(context_s * timing.sample_rate(video_fps)) // tubelet * tubelet
        if frames < tubelet:
            raise ForecastError(
                f"{prefix}--context-s {context_s} gives fewer than one tubelet ({tubelet} frames) at "
                f"{timing.sample_rate(video_fps):.3g} sampled frames/s; give a longer context"
            )
        return frames
    if context_frames is None:
        return model.max_context * tubelet
    if context_frames < tubelet or context_frames % tubelet:
        raise ForecastError(
            f"--context-frames must be a positive multiple of the tubelet size {tubelet}, got {context_frames}"
        )
    return int(context_frames)


def read_forecast_clip(
    path: str | os.PathLike,
    model: WorldModel,
    horizon: int,
    *,
    start_s: float = 0.0,
    context_frames: int | None = None,
    context_s: float | None = None,
    timing: ClipTiming | None = None,
    require_future: bool = False,
) -> ForecastClip:
    """The clip of one forecast: context frames from `start_s` (the frame nearest to it), then the
    `horizon` tubelets it forecasts, all sampled with `timing` (default: as in training).

    Raises ForecastError when the video is too short for the context (or, with `require_future`, for
    context + horizon), naming the file, the frames needed and the frames it has.
    """
    path = os.fspath(path)
    timing = timing or resolve_timing(model)
    info = read_video_info(path)
    tubelet = model.tubelet_size
    num_context = context_frame_count(model, timing, info.fps, context_frames, context_s, where=path)
    if start_s < 0:
        raise ForecastError(f"--start must be >= 0 seconds, got {start_s}")
    # the frame nearest to start_s, then the clip's frames (by real frame times in a variable-rate video)
    indices = timing.sampler(num_context + horizon * tubelet).indices_starting_at(info, start_s)  # (T,)
    context_idx, future_idx = indices[:num_context], indices[num_context:]
    needed = int(future_idx[-1]) + 1 if require_future else int(context_idx[-1]) + 1
    if needed > info.num_frames:
        what = f"{num_context} context frames + {horizon} future tubelets" if require_future else f"{num_context} context frames"
        raise ForecastError(
            f"{path}: video too short: {what} sampled with {timing.as_dict()} from {start_s:g} s need source frames "
            f"{int(indices[0])}..{needed - 1} ({needed / info.fps:.2f} s), the video has {info.num_frames} frames "
            f"({info.duration_s:.2f} s at {info.fps:.3g} fps). Use a shorter --horizon or context, an earlier "
            "--start, a higher --fps / smaller --frame-step, or leave this video out."
        )
    has_future = int(future_idx[-1]) < info.num_frames
    read_idx = indices if has_future else context_idx
    transform = model.eval_transform()
    video = transform(read_frames(path, read_idx))  # (C, T, S, S) uint8
    return ForecastClip(
        path=path,
        context=video[:, :num_context],
        future=video[:, num_context:] if has_future else None,
        context_indices=context_idx,
        future_indices=future_idx,
        video=info,
        timing=timing,
    )


# ---------------------------------------------------------------------------------------------- quality
@torch.no_grad()
def _forecast_clip(
    model: WorldModel, clip: Tensor, context_steps: int, horizon: int, **forecast_kwargs: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forecast of a clip's future and what it is compared with: (future targets (B, H, S, D),
    full-clip context targets (B, k, S, D), predictions (B, H, S, D), the context video)."""
    video = model._as_input(clip)
    tubelet = model.tubelet_size
    needed = (context_steps + horizon) * tubelet
    if video.shape[2] < needed:
        raise ForecastError(
            f"forecast_quality: the clip has {video.shape[2]} frames, {context_steps} context + {horizon} future "
            f"tubelets need {needed}"
        )
    video = video[:, :, :needed]
    positions = math.prod(model._spatial_grid(video.shape))
    targets_all = model.target_steps(video)  # (B, k+H, S, D)
    context = video[:, :, : context_steps * tubelet]
    pred = rearrange(model.forecast(context, horizon, **forecast_kwargs), "b (t s) d -> b t s d", s=positions)
    return targets_all[:, context_steps:], targets_all[:, :context_steps], pred, context


def forecast_quality(
    model: WorldModel,
    clip: Tensor,
    context_steps: int,
    horizon: int,
    anchor: ForecastAnchor | None = None,
    **forecast_kwargs: Any,
) -> dict[str, dict[str, Tensor]]:
    """Per-clip, per-step forecast quality of the model and the two baselines.

    clip: uint8 or normalised float (B, C, T, H, W) holding `context_steps` + `horizon` tubelets
    (context first). Returns {method: {"cosine": (B, H), "l1": (B, H)}} on the CPU, methods in
    METHODS; all are compared with the same targets (see the module docstring). With an anchor, "model"
    is the anchored forecast and "predictor" the predictor's own, before the anchor.
    """
    targets, context_targets, pred, context = _forecast_clip(model, clip, context_steps, horizon, **forecast_kwargs)
    guesses = {
        "model": pred,
        "copy_last": repeat(context_targets[:, -1], "b s d -> b t s d", t=horizon),
        "context_mean": repeat(context_targets.mean(dim=1), "b s d -> b t s d", t=horizon),
    }
    if anchor is not None:
        # the anchor mixes in the target features of the context frames ALONE (what a forecast has); the
        # baselines above keep the full-clip ones, which have seen the future frames
        alone = model.target_steps(context)
        guesses = {"model": anchor.apply(pred, alone), "predictor": pred, **{k: v for k, v in guesses.items() if k != "model"}}
    out = {}
    for method, guess in guesses.items():
        guess, target = guess.float(), targets.float()
        out[method] = {
            "cosine": F.cosine_similarity(guess, target, dim=-1).mean(dim=-1).cpu(),  # (B, H)
            "l1": (guess - target).abs().mean(dim=-1).mean(dim=-1).cpu(),  # (B, H)
        }
    return out


def _standard_error(values: Tensor, groups: Sequence[str] | None = None) -> Tensor:
    """Standard error of the mean of values (N, H) over N, per column; with `groups` (one label per row,
    e.g. the clip's video) rows of one group are averaged first and the error is taken over groups, as
    clips cut from one video are not independent. inf with fewer than two (groups of) rows (null in the
    JSON files, which cannot hold inf)."""
    if groups is not None:
        labels = {label: k for k, label in enumerate(dict.fromkeys(groups))}
        index = torch.tensor([labels[g] for g in groups])
        sums = torch.zeros(len(labels), values.shape[1], dtype=values.dtype).index_add_(0, index, values)
        values = sums / torch.bincount(index, minlength=len(labels)).to(values.dtype)[:, None]
    num = values.shape[0]
    if num < 2:
        return torch.full((values.shape[1],), math.inf, dtype=values.dtype)
    return values.std(dim=0, correction=1) / math.sqrt(num)


def summarize_quality(per_clip: dict[str, dict[str, Tensor]], groups: Sequence[str] | None = None) -> dict[str, Any]:
    """{method: {metric: (num_clips, H)}} -> per-step means and standard errors, the verdict, and the
    paired comparison of the model with each baseline.

    "paired"[baseline][metric] holds, per step, the model's mean advantage over the baseline on the same
    clips (baseline L1 - model L1, or model cosine - baseline cosine: positive when the model is better),
    its standard error over clips, and the share of clips where the model is better. Differences between
    methods are far less noisy than the methods' own standard errors suggest (the clips' difficulty is
    shared), so the advantage and its error are what tell a real lead from luck;
    "model_beats_baselines"["every_step_clearly"] asks for an advantage above twice its error everywhere.
    groups: one label per clip (its video); when some label repeats, every standard error (the methods'
    own and the paired ones) is taken over the groups' means, not over clips (["paired"]["error_over"]
    says which: "N videos" or "clips"); with fewer than two it is inf (written as null to JSON).
    """
    grouped = groups is not None and len(set(groups)) < len(groups)
    summary: dict[str, Any] = {"methods": list(per_clip)}
    for method in per_clip:
        summary[method] = {}
        for metric in METRICS:
            values = per_clip[method][metric].double()  # (N, H)
            summary[method][metric] = values.mean(dim=0).tolist()
            summary[method][f"{metric}_sem"] = _standard_error(values, groups if grouped else None).tolist()
    beats: dict[str, Any] = {}
    for metric, better in (("cosine", np.greater), ("l1", np.less)):
        model = np.array(summary["model"][metric])
        steps = np.ones_like(model, dtype=bool)
        for baseline in ("copy_last", "context_mean"):
            steps &= better(model, np.array(summary[baseline][metric]))
        beats[metric] = steps.tolist()
    beats["every_step"] = bool(all(beats["cosine"]) and all(beats["l1"]))
    paired: dict[str, Any] = {}
    clearly = True
    for baseline in ("copy_last", "context_mean"):
        paired[baseline] = {}
        for metric, sign in (("cosine", 1.0), ("l1", -1.0)):
            diff = sign * (per_clip["model"][metric].double() - per_clip[baseline][metric].double())  # (N, H)
            sem = _standard_error(diff, groups if grouped else None)
            advantage = diff.mean(dim=0)
            paired[baseline][metric] = {
                "advantage": advantage.tolist(),
                "advantage_sem": sem.tolist(),
                "model_better_share": (diff > 0).double().mean(dim=0).tolist(),
            }
            clearly &= bool((advantage > 2 * sem).all())
    beats["every_step_clearly"] = clearly
    summary["model_beats_baselines"] = beats
    summary["paired"] = {"error_over": f"{len(set(groups))} videos" if grouped else "clips", **paired}
    return summary


# ---------------------------------------------------------------------------------------------- eval
DEFAULT_EVAL_CLIPS = 64  # --eval's default: the paired errors need a few dozen clips to separate the methods


def _clips_per_video(num_videos: int, num_clips: int | None) -> list[int]:
    """Round-robin: every video gets num_clips // V clips, the first num_clips % V one more.
    num_clips None: max(V, DEFAULT_EVAL_CLIPS), so at least one clip per video."""
    if num_clips is None:
        num_clips = max(num_videos, DEFAULT_EVAL_CLIPS)
    if num_clips < 1:
        raise ForecastError(f"--clips must be >= 1, got {num_clips}")
    base, extra = divmod(num_clips, num_videos)
    return [base + (1 if i < extra else 0) for i in range(num_videos)]


def _eval_clip_indices(
    path: str, model: WorldModel, timing: ClipTiming, context_frames: int | None, context_s: float | None,
    horizon: int, count: int,
) -> tuple[list[np.ndarray], int, float]:
    """`count` clips spread evenly over the video (one: centred): (indices list, context frames, fps)."""
    info = read_video_info(path)
    num_context = context_frame_count(model, timing, info.fps, context_frames, context_s, where=path)
    total = num_context + horizon * model.tubelet_size
    sampler = timing.sampler(total)
    if not sampler.fits(info):
        raise ForecastError(
            f"{path}: video too short for forecast evaluation: {num_context} context frames + {horizon} future "
            f"tubelets = {total} frames sampled with {timing.as_dict()} span {sampler.span_text(info, 'source frames')}, "
            f"the video has {info.num_frames} frames ({info.duration_s:.2f} s). Use a shorter --horizon or context, "
            "a higher --fps / smaller --frame-step, remove the video from the manifest, or pass --skip-bad to leave "
            "such videos out."
        )
    mode = "uniform" if count > 1 else "center"
    return sampler.indices(info, mode=mode, num_clips=count), num_context, info.fps


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ForecastError(f"--batch-size must be >= 1, got {batch_size}")


@dataclass
class _EvalClips:
    videos: list[Tensor]  # uint8 (C, T, S, S) each
    clips: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    context_lengths: set[int]

    def batches(self, batch_size: int) -> Iterator[list[int]]:
        """Index groups of at most batch_size clips of one length (--context-s on videos of different frame
        rates gives different context lengths)."""
        order = sorted(range(len(self.videos)), key=lambda i: self.videos[i].shape[1])
        start = 0
        while start < len(order):
            length = self.videos[order[start]].shape[1]
            group = [i for i in order[start : start + batch_size] if self.videos[i].shape[1] == length]
            yield group
            start += len(group)


def _read_eval_clips(
    model: WorldModel, manifest: str | os.PathLike, horizon: int, num_clips: int | None,
    context_frames: int | None, context_s: float | None, timing: ClipTiming, skip_bad: bool,
) -> _EvalClips:
    """Decode the context + future frames of `num_clips` clips spread over a manifest's videos."""
    from worldmodel.data.datasets import read_manifest

    try:
        entries = read_manifest(manifest)
    except (ValueError, FileNotFoundError) as err:
        raise ForecastError(str(err)) from err
    transform = model.eval_transform()
    out = _EvalClips([], [], [], set())
    for entry, count in zip(entries, _clips_per_video(len(entries), num_clips)):
        if count == 0:
            continue
        try:
            indices, num_context, video_fps = _eval_clip_indices(
                entry.path, model, timing, context_frames, context_s, horizon, count
            )
            frames = read_frames(entry.path, np.concatenate(indices))  # (count * T, H, W, 3)
        except (ForecastError, VideoError) as err:
            if not skip_bad:
                raise ForecastError(str(err)) from err
            out.skipped.append({"path": entry.path, "reason": str(err)})
            continue
        out.context_lengths.add(num_context)
        for k, idx in enumerate(indices):
            out.videos.append(transform(frames[k * len(idx) : (k + 1) * len(idx)]))  # (C, T, S, S)
            out.clips.append({
                "path": entry.path,
                "context_frame_indices": idx[:num_context].tolist(),
                "future_frame_indices": idx[num_context:].tolist(),
                "seconds_per_step": model.tubelet_size / timing.sample_rate(video_fps),
            })
    if not out.clips:
        raise ForecastError(f"{manifest}: no clip could be evaluated (all videos skipped: {out.skipped[:3]})")
    return out


def evaluate_forecast(
    model: WorldModel,
    manifest: str | os.PathLike,
    horizon: int = DEFAULT_HORIZON,
    *,
    num_clips: int | None = None,
    context_frames: int | None = None,
    context_s: float | None = None,
    timing: ClipTiming | None = None,
    batch_size: int = 8,
    skip_bad: bool = False,
    window: int | None = None,
    max_context: int | None = None,
    feedback: str = "rescale",
    anchor: ForecastAnchor | None = None,
) -> dict[str, Any]:
    """Forecast quality over the clips of a manifest: a JSON-ready report (see `write_eval_report`).

    num_clips: clips in all, spread round-robin over the videos and evenly within each (one clip: centred);
    default max(number of videos, DEFAULT_EVAL_CLIPS): with one clip per video a manifest of 18 videos
    could not tell the methods apart. A video too short for context + horizon, or unreadable, raises
    ForecastError unless `skip_bad`, which records it under "skipped". anchor: "model" is the anchored
    forecast, "predictor" the predictor's own (the anchor must have been fit for this model and rollout).
    """
    _check_batch_size(batch_size)
    timing = timing or resolve_timing(model)
    rollout = model.rollout_settings(window, max_context, feedback)
    if anchor is not None:
        anchor.check(model, rollout)
    data = _read_eval_clips(model, manifest, horizon, num_clips, context_frames, context_s, timing, skip_bad)
    clips = data.clips
    per_clip: dict[str, dict[str, list[Tensor]]] = {}
    clip_videos: list[str] = []  # the video of each row of per_clip, for the paired errors
    for group in data.batches(batch_size):
        batch = torch.stack([data.videos[i] for i in group])  # (b, C, T, S, S) uint8
        context_steps = batch.shape[2] // model.tubelet_size - horizon
        result = forecast_quality(
            model, batch, context_steps, horizon, anchor=anchor, window=window, max_context=max_context,
            feedback=feedback,
        )
        for method, metrics in result.items():
            for metric in METRICS:
                per_clip.setdefault(method, {k: [] for k in METRICS})[metric].append(metrics[metric])
        clip_videos.extend(clips[i]["path"] for i in group)
        for j, i in enumerate(group):
            clips[i]["quality"] = {m: {k: result[m][k][j].tolist() for k in METRICS} for m in result}
    stacked = {m: {k: torch.cat(v) for k, v in metrics.items()} for m, metrics in per_clip.items()}
    spatial = model._spatial_grid((1, 3, model.tubelet_size, *_pair(model.img_size)))
    definitions = {
        "targets": "target-encoder tokens of the whole clip (context + future frames), layer-normed as in "
                   "training, at the future positions",
        "model": "predicted latents (context encoder -> predictor with the future mask token, rollout)",
        "copy_last": "target features of the last context step, repeated",
        "context_mean": "per spatial position, the mean of the context steps' target features",
        "cosine": "cosine similarity per token, mean over a step's tokens, then over clips (higher is better)",
        "l1": "mean |prediction - target| over D and a step's tokens, then over clips (lower is better)",
    }
    if anchor is not None:
        definitions["model"] = ("the anchored forecast: per step, weights['anchor'] of (predictor, last context step, "
                                "context mean), the last two from the target features of the context frames alone")
        definitions["predictor"] = "the predictor's latents before the anchor"
    report = {
        "checkpoint": model.source,
        "manifest": os.fspath(manifest),
        "num_clips": len(clips),
        "horizon": horizon,
        "steps": list(range(1, horizon + 1)),
        "seconds_per_step": float(np.mean([c["seconds_per_step"] for c in clips])),
        "context_frames": sorted(data.context_lengths),
        "timing": timing.as_dict(),
        "tubelet_size": model.tubelet_size,
        "grid_hw": list(spatial),
        "mask_kind": model.mask_kind,
        "predictor_input_encoder": model.context_encoder_role,
        "rollout": rollout,
        "anchor": anchor.applied(horizon) if anchor is not None else None,
        "definitions": definitions,
        **summarize_quality(stacked, groups=clip_videos),
        "skipped": data.skipped,
        "clips": clips,
    }
    return report


def anchor_candidates(grid: int = ANCHOR_GRID) -> Tensor:
    """(G, 3) weights on the simplex in steps of 1 / grid, the predictor's own forecast first."""
    rows = [(p, c, grid - p - c) for p in range(grid, -1, -1) for c in range(grid - p + 1)]
    return torch.tensor(rows, dtype=torch.float64) / grid


# the clip and rollout options the fit shares with evaluate_forecast (its keyword-only ones but the anchor)
_EVAL_OPTIONS = {name: param.default for name, param in inspect.signature(evaluate_forecast).parameters.items()
                 if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "anchor"}


@torch.no_grad()
def fit_forecast_anchor(
    model: WorldModel, manifest: str | os.PathLike, horizon: int = DEFAULT_HORIZON, *, grid: int = ANCHOR_GRID,
    **options: Any,
) -> ForecastAnchor:
    """Fit the anchor's weights on a manifest's clips (use TRAINING videos; evaluate on others).

    options: the clip and rollout options of `evaluate_forecast` (num_clips, context_frames, context_s,
    timing, batch_size, skip_bad, window, max_context, feedback), with the same defaults.

    For every horizon step, the weights of (predictor, last context step, context mean) on the simplex
    grid (steps of 1 / grid) with the lowest mean L1 to the real future's target features over the
    clips, the same L1 as `--eval`'s. The pure predictor is a candidate, so on the fit clips the anchor
    is never worse than any of the three alone; ties keep the larger predictor weight.
    """
    unknown = set(options) - set(_EVAL_OPTIONS)
    if unknown:
        raise TypeError(f"fit_forecast_anchor: unknown options {sorted(unknown)}")
    opt = {**_EVAL_OPTIONS, **options}
    window, max_context, feedback, batch_size = opt["window"], opt["max_context"], opt["feedback"], opt["batch_size"]
    _check_batch_size(batch_size)
    timing = opt["timing"] or resolve_timing(model)
    rollout = model.rollout_settings(window, max_context, feedback)
    data = _read_eval_clips(model, manifest, horizon, opt["num_clips"], opt["context_frames"], opt["context_s"],
                            timing, opt["skip_bad"])
    candidates = anchor_candidates(grid)  # (G, 3)
    totals = torch.zeros(horizon, len(candidates), dtype=torch.float64)
    for group in data.batches(batch_size):
        batch = torch.stack([data.videos[i] for i in group])
        steps = batch.shape[2] // model.tubelet_size - horizon
        targets, _, pred, context = _forecast_clip(
            model, batch, steps, horizon, window=window, max_context=max_context, feedback=feedback
        )
        pred, targets, alone = pred.float(), targets.float(), model.target_steps(context).float()
        for g, candidate in enumerate(candidates):
            mixed = anchor_mix(candidate.expand(horizon, 3), pred, alone)
            totals[:, g] += (mixed - targets).abs().mean(dim=-1).mean(dim=-1).sum(dim=0).double().cpu()
    l1 = totals / len(data.clips)  # (H, G)
    best = l1.argmin(dim=1)  # first minimum: candidates run from the pure predictor down
    vertices = {name: int(torch.nonzero((candidates == torch.eye(3, dtype=candidates.dtype)[k]).all(dim=1))[0])
                for k, name in enumerate(ANCHOR_SOURCES)}
    fit = {
        "checkpoint": model.source,
        "manifest": os.fspath(manifest),
        "num_clips": len(data.clips),
        "num_videos": len({c["path"] for c in data.clips}),
        "context_frames": sorted(data.context_lengths),
        "timing": timing.as_dict(),
        "grid": grid,
        "l1": {**{name: l1[:, g].tolist() for name, g in vertices.items()},
               "anchored": l1.gather(1, best[:, None])[:, 0].tolist()},
        "skipped": data.skipped,
    }
    weights = [[round(float(x), 6) for x in candidates[b]] for b in best.tolist()]
    return ForecastAnchor(weights=weights, model_sha256=model.weights_sha256(), rollout=rollout, fit=fit)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def plot_quality(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: cosine similarity and L1 against the horizon, model vs the two baselines (error bars: s.e.m.)."""
    from matplotlib.figure import Figure  # object API: no pyplot state, Agg canvas

    fig = Figure(figsize=(9, 3.6), dpi=100)
    steps = report["steps"]
    anchored = bool(report.get("anchor"))
    styles = {"model": ("C0", "o", "model (anchored)" if anchored else "model"),
              "predictor": ("C3", "D", "predictor alone"), "copy_last": ("C1", "s", "copy last context step"),
              "context_mean": ("C2", "^", "context mean")}
    for ax_i, (metric, label) in enumerate((("cosine", "cosine similarity (higher is better)"),
                                            ("l1", "L1 (lower is better)"))):
        ax = fig.add_subplot(1, 2, ax_i + 1)
        for method in report.get("methods", METHODS):
            colour, marker, name = styles[method]
            errors = [e if math.isfinite(e) else 0.0 for e in report[method][f"{metric}_sem"]]  # inf: one clip
            ax.errorbar(steps, report[method][metric], yerr=errors, color=colour,
                        marker=marker, capsize=3, label=name)
        ax.set_xlabel(f"horizon (tubelets of {report['tubelet_size']} frames, "
                      f"~{report['seconds_per_step']:.2g} s each)")
        ax.set_ylabel(label)
        ax.set_xticks(steps)
        ax.grid(alpha=0.3)
        if ax_i == 0:
            ax.legend(fontsize=8)
    verdict = "beats both baselines at every step" if report["model_beats_baselines"]["every_step"] else \
        "does NOT beat both baselines at every step"
    fig.suptitle(f"forecast quality over {report['num_clips']} clips: model {verdict}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()  # rendered in memory, then written atomically: never a half-written PNG
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(buffer.getvalue(), path)


def write_eval_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """DIR/forecast_eval.json and DIR/forecast_eval.png. Numbers that are not finite (the standard error
    over a single clip or video is inf) are written as null: JSON has no Infinity or NaN."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_bytes((json_text(report, indent=2) + "\n").encode(), out_dir / "forecast_eval.json")
    return json_path, plot_quality(report, out_dir / "forecast_eval.png")


def format_quality_table(report: dict[str, Any]) -> str:
    methods = report.get("methods", METHODS)
    lines = ["step  " + "  ".join(f"{m + ' ' + k:>20s}" for k in METRICS for m in methods)]
    for i, step in enumerate(report["steps"]):
        lines.append(f"{step:4d}  " + "  ".join(f"{report[m][k][i]:20.4f}" for k in METRICS for m in methods))
    paired = report.get("paired")
    if paired:
        lines.append("model's L1 advantage, paired over the same clips (baseline - model, +- standard error over "
                     f"{paired.get('error_over', 'clips')}):")
        units = "videos" if "videos" in paired.get("error_over", "") else "clips"
        no_error_bar = False
        for baseline in ("copy_last", "context_mean"):
            sems = paired[baseline]["l1"]["advantage_sem"]
            no_error_bar |= not all(math.isfinite(e) for e in sems)
            cells = [f"{a:+.4f} +- {e:.4f}" if math.isfinite(e) else f"{a:+.4f}"
                     for a, e in zip(paired[baseline]["l1"]["advantage"], sems)]
            lines.append(f"  vs {baseline:<12s} " + "   ".join(cells))
        if no_error_bar:
            lines.append(f"  (no standard error where there are fewer than 2 {units})")
    if report.get("anchor"):
        weights = "   ".join(f"{step}: {w[0]:.2f}/{w[1]:.2f}/{w[2]:.2f}" for step, w in
                               zip(report["steps"], ForecastAnchor.step_rows(report["anchor"]["weights"], len(report["steps"]))))
        lines.append(f"model = anchored forecast, weights predictor/last/mean per step  {weights}")
    beats = report["model_beats_baselines"]
    lines.append(f"model beats both baselines at every step: {'yes' if beats['every_step'] else 'no'} "
                 f"(cosine: {beats['cosine']}, l1: {beats['l1']})")
    if "every_step_clearly" in beats:
        lines.append(f"... by more than twice the paired standard error at every step: {'yes' if beats['every_step_clearly'] else 'no'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def add_forecast_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `worldmodel forecast`."""
    parser.add_argument("--checkpoint", required=True,
                        help="pretraining checkpoint (.ckpt) or its run folder, an exported or imported model folder, "
                        "or a V-JEPA 2 checkpoint")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--video", nargs="+", metavar="FILE", help="forecast these videos")
    what.add_argument("--eval", metavar="MANIFEST", help="measure forecast quality over a manifest's clips")
    what.add_argument("--fit-anchor", metavar="MANIFEST",
                      help="fit the forecast anchor (per-step weights of the predictor, the last context step and "
                           "the context mean) on a manifest's clips, TRAINING videos, and write "
                           "OUT/forecast_anchor.json for --anchor")
    parser.add_argument("--out", required=True,
                        help="with --video: the .safetensors file to write; with --eval / --fit-anchor: the output folder")
    parser.add_argument("--anchor", metavar="JSON", default=None,
                        help="forecast_anchor.json from --fit-anchor: forecast with the anchored latents (--video, --eval)")
    parser.add_argument("--horizon", type=int, default=DEFAULT_HORIZON, help="future tubelets to predict")
    parser.add_argument("--start", type=float, default=0.0, help="time of the first context frame, seconds (--video)")
    context = parser.add_mutually_exclusive_group()
    context.add_argument("--context-frames", type=int, default=None,
                         help="sampled context frames, a multiple of the tubelet size (default: longest trained context)")
    context.add_argument("--context-s", type=float, default=None, help="context length in seconds")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, default=None, help="sample frames at this rate (default: as in training)")
    rate.add_argument("--frame-step", type=int, default=None, help="sample every N-th frame (default: as in training)")
    parser.add_argument("--clips", type=int, default=None,
                        help=f"clips to evaluate in all, spread round-robin over the videos (--eval, --fit-anchor; default: "
                             f"{DEFAULT_EVAL_CLIPS}, or one per video if there are more videos)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="--eval, --fit-anchor: skip videos too short or unreadable (listed in the JSON) instead of failing")
    parser.add_argument("--window", type=int, default=None,
                        help="future tubelets per predictor call (default: the clip length the model trained on, "
                             "or, with --max-context alone, what fills its nominal grid)")
    parser.add_argument("--max-context", type=int, default=None,
                        help="context tubelets kept per predictor call (default: the longest trained context, "
                             "or with --window alone the longest that fits the nominal grid)")
    parser.add_argument("--feedback", choices=FEEDBACK_MODES, default="rescale",
                        help="how predictions are fed back in long rollouts")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (--eval, --fit-anchor)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="for a V-JEPA 2 checkpoint (.pt) read directly, which does not record it: the frame size "
                             "it was trained at, which clips are cropped to (default 256; 384 for vitg-384)")


def _check_options(args: argparse.Namespace) -> None:
    """ForecastError for a numeric option out of range, before the checkpoint or any video is read."""
    for option, value in (("--horizon", args.horizon), ("--batch-size", args.batch_size), ("--clips", args.clips),
                          ("--window", args.window), ("--max-context", args.max_context)):
        if value is not None and value < 1:
            raise ForecastError(f"{option} must be >= 1, got {value}")
    if getattr(args, "img_size", None) is not None and args.img_size < 1:
        raise ForecastError(f"--img-size must be >= 1, got {args.img_size}")
    if args.context_frames is not None and args.context_frames < 1:
        raise ForecastError(f"--context-frames must be a positive multiple of the tubelet size, got {args.context_frames}")
    if args.frame_step is not None and args.frame_step < 1:
        raise ForecastError(f"--frame-step must be a positive integer, got {args.frame_step}")
    for option, value in (("--fps", args.fps), ("--context-s", args.context_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ForecastError(f"{option} must be > 0, got {value}")
    if not (math.isfinite(args.start) and args.start >= 0):
        raise ForecastError(f"--start must be >= 0 seconds, got {args.start}")
    problem = output_problem(args.out, "dir" if (args.eval or args.fit_anchor) else "file")
    if problem:  # found now, not after the whole evaluation or fit
        raise ForecastError(f"--out: {problem}")


def forecast_videos(
    model: WorldModel,
    videos: Sequence[str | os.PathLike],
    horizon: int = DEFAULT_HORIZON,
    *,
    start_s: float = 0.0,
    context_frames: int | None = None,
    context_s: float | None = None,
    timing: ClipTiming | None = None,
    window: int | None = None,
    max_context: int | None = None,
    feedback: str = "rescale",
    anchor: ForecastAnchor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Forecast each video: latents (V, horizon * h * w, D) float32 on the CPU, and their metadata.

    Where every video holds the forecast frames, the metadata also has "quality" (forecast_quality
    over these videos, summarised like the eval report). anchor: the latents are the anchored forecast.
    """
    timing = timing or resolve_timing(model)
    rollout = model.rollout_settings(window, max_context, feedback)
    if anchor is not None:
        anchor.check(model, rollout)
    latents, clips, per_video = [], [], []
    for path in videos:
        clip = read_forecast_clip(
            path, model, horizon, start_s=start_s, context_frames=context_frames, context_s=context_s, timing=timing
        )
        kwargs = dict(window=window, max_context=max_context, feedback=feedback)
        latents.append(model.forecast(clip.context, horizon, anchor=anchor, **kwargs)[0].float().cpu())  # (H*h*w, D)
        clips.append(clip.metadata())
        if clip.future is not None:
            steps = clip.context.shape[1] // model.tubelet_size
            per_video.append(forecast_quality(model, torch.cat([clip.context, clip.future], 1), steps, horizon,
                                              anchor=anchor, **kwargs))
    h_grid, w_grid = model._spatial_grid((1, 3, model.tubelet_size, *_pair(model.img_size)))
    meta: dict[str, Any] = {
        "format": "worldmodel.forecast/1",
        "layout": "latents[v] is (horizon * h * w, D): the predicted target-space tokens of the next horizon "
                  "tubelets of video v, in (t h w) raster order",
        "checkpoint": model.source,
        "videos": [os.fspath(v) for v in videos],
        "clips": clips,
        "horizon": horizon,
        "grid": [horizon, h_grid, w_grid],
        "tubelet_size": model.tubelet_size,
        "patch_size": model.patch_size,
        "img_size": model.img_size,
        "timing": timing.as_dict(),
        "start_s": start_s,
        "mask_kind": model.mask_kind,
        "predictor_input_encoder": model.context_encoder_role,
        "rollout": rollout,
        "anchor": anchor.applied(horizon) if anchor is not None else None,
    }
    if per_video and len(per_video) == len(videos):
        stacked = {m: {k: torch.cat([q[m][k] for q in per_video]) for k in METRICS} for m in per_video[0]}
        meta["quality"] = {"steps": list(range(1, horizon + 1)), **summarize_quality(stacked)}
    return torch.stack(latents), meta


def save_latents(path: str | os.PathLike, latents: Tensor, metadata: dict[str, Any]) -> Path:
    """Write {"latents": (V, M, D)} with JSON-encoded string metadata (atomically); numbers that are not
    finite (a standard error over one video is inf) are encoded as null."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ForecastError(f"--out {path}: give a .safetensors file name for the latents")
    data = save({"latents": latents.contiguous()}, metadata={k: json_text(v) for k, v in metadata.items()})
    return atomic_write_bytes(data, path)


def load_latents(path: str | os.PathLike) -> tuple[Tensor, dict[str, Any]]:
    """Read back what `save_latents` wrote: (latents, decoded metadata)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        return f.get_tensor("latents"), metadata


def run_forecast(args: argparse.Namespace) -> int:
    """`worldmodel forecast`: returns an exit code (2 with a message on stderr for unusable input)."""
    try:
        _check_options(args)
        device = resolve_device(args.device)  # before the checkpoint is read: a bad --device fails at once
        options = {}
        if getattr(args, "img_size", None) is not None:
            if not is_vjepa2_source(args.checkpoint):
                raise ForecastError(
                    f"--img-size applies to a V-JEPA 2 checkpoint (.pt) read directly, the one source that does not record "
                    f"its frame size; {args.checkpoint} records its own"
                )
            options["img_size"] = args.img_size
        model = WorldModel.load(args.checkpoint, device=device, **options)
        if model.context_encoder_role == "target":  # "shared" (SIGReg) is what its predictor was trained on
            print(f"worldmodel forecast: note: {args.checkpoint} holds no context encoder (an export written without "
                  f"--encoder both), so the predictor reads the {model.context_encoder_role} encoder's tokens, not the "
                  "ones it was trained on: forecasts differ from the checkpoint's; `worldmodel export CKPT DIR "
                  "--encoder both` keeps them", file=sys.stderr)  # fmt: skip
        timing = resolve_timing(model, args.fps, args.frame_step)
        common = dict(context_frames=args.context_frames, context_s=args.context_s, timing=timing,
                      window=args.window, max_context=args.max_context, feedback=args.feedback)
        if args.fit_anchor:
            if args.anchor:
                raise ForecastError("--anchor applies to --video and --eval; --fit-anchor fits a new one")
            anchor = fit_forecast_anchor(model, args.fit_anchor, args.horizon, num_clips=args.clips,
                                         batch_size=args.batch_size, skip_bad=args.skip_bad, **common)
            path = anchor.save(Path(args.out) / "forecast_anchor.json")
            fit_l1 = anchor.fit["l1"]
            print("step  weights predictor/last/mean   L1 on the fit clips: " + "  ".join(f"{k:>12s}" for k in fit_l1))
            for i, w in enumerate(anchor.weights):
                print(f"{i + 1:4d}  {w[0]:6.2f} {w[1]:6.2f} {w[2]:6.2f}" + " " * 23
                      + "  ".join(f"{fit_l1[k][i]:12.4f}" for k in fit_l1))
            print(f"wrote {path} (fit on {anchor.fit['num_clips']} clips of {anchor.fit['num_videos']} videos; "
                  f"{len(anchor.fit['skipped'])} skipped)")
            return 0
        anchor = ForecastAnchor.load(args.anchor) if args.anchor else None
        note = anchor.past_fit_note(args.horizon) if anchor is not None else None
        if note:
            print(f"worldmodel forecast: note: {note}", file=sys.stderr)
        common["anchor"] = anchor
        if args.eval:
            report = evaluate_forecast(model, args.eval, args.horizon, num_clips=args.clips, batch_size=args.batch_size,
                                       skip_bad=args.skip_bad, **common)
            json_path, png_path = write_eval_report(report, args.out)
            print(format_quality_table(report))
            print(f"wrote {json_path} and {png_path} ({report['num_clips']} clips, {len(report['skipped'])} skipped)")
            return 0
        latents, meta = forecast_videos(model, args.video, args.horizon, start_s=args.start, **common)
        out = save_latents(args.out, latents, meta)
        if "quality" in meta:
            print(format_quality_table(meta["quality"]))
        print(f"wrote {out}: latents {tuple(latents.shape)} for {len(args.video)} video(s)")
        return 0
    except (ForecastError, VideoError, CheckpointError, DeviceError, OSError) as err:
        print(f"worldmodel forecast: error: {err}", file=sys.stderr)
        return 2
