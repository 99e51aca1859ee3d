"""Probe the frozen encoder: action anticipation (EPIC-KITCHENS-100 protocol) and clip classification.

What a run does (`worldmodel probe`, or `run_probe(args)`):

1. **Frozen model.** A `worldmodel.forecast.WorldModel` from a pretraining checkpoint (or its run
   folder, an exported or imported folder, a V-JEPA 2 checkpoint), or seeded random weights
   (`--checkpoint random`: `JEPAPretrainer()`'s default architecture, or that of `--config-from`, which
   takes any of the same sources). Which encoder: `--encoder target` (the EMA
   target, what V-JEPA 2 probes), `context`, or `auto` (the default): both are probed in step 4 and
   the one whose best head scores higher on the held-out TRAINING videos is kept, a choice made like
   the learning rate's. Early in training the EMA target is still close to its random initialisation
   and the context encoder is the better one; after a long run it is usually the target. When the two
   have identical weights (random weights, one shared encoder) there is nothing to choose. A folder
   exported with one encoder (`worldmodel export`'s default keeps the target one) is probed with that
   encoder under `auto`, and asking for the other one is an error.
   `--blocks K` probes the tokens after the encoder's first K blocks (then its final LayerNorm)
   instead of after all of them: where in depth the features are (random weights are cut alike).
2. **Clips.** Anticipation: for every annotated action, the `num_frames` frames at `fps` whose last
   frame is the last video frame at or before ``start - anticipation_s`` (`AnticipationDataset`: the
   context ends before the action START, the EK100 protocol, not before its end as in V-JEPA 2's
   code). With `--train-anticipation-s 0.5 1.0 1.5` every training action gives one clip per gap (V-JEPA 2
   jitters the gap in [0.25, 1.75] s while training its probe); held-out training clips are scored,
   and validation is run, at `--anticipation-s` only. Classification (`path label` manifests):
   `num_clips` clips spread evenly over each video; the classes are the training videos' labels, and a
   validation video with a label no training video has is labelled -1, as an unseen action pair is.
   Frames are resized (shorter side) and centre-cropped to the encoder's `img_size`.
3. **Features, once.** Encoder tokens (B, N, D) of every clip are computed in batches under
   `torch.no_grad` and kept (`--feature-store`: in memory, or in memory-mapped files in OUT when they
   would not fit; their size is worked out before any encoding, see `worldmodel.featurestore`; and, with
   `--disk-cache`, also in ``OUT/feature_cache/<key>.pt``,
   keyed by a hash of the model weights, of the data (annotation / manifest bytes, video file sizes and
   times) and of the clip geometry and transform), so every training epoch after the first reads
   tokens instead of decoding and encoding videos. With `--forecast` the predictor's latents of the
   `horizon` tubelets that cover the anticipation gap are appended to the tokens (V-JEPA 2's
   anticipation trick), marked with a token type the probe learns an embedding for; with
   `--forecast-anchor JSON` the anchored forecast (`worldmodel forecast --fit-anchor`). With `--augment`
   training clips get a random resized crop per epoch and are re-encoded every epoch (not cached).
   `--feature-store stream` (and `auto`, when neither memory nor the disk of OUT can hold them) keeps
   no features at all: every training epoch and every evaluation encodes its clips again, batch by
   batch while the heads train (V-JEPA 2's way: no memory or disk for features, about 2 x `epochs`
   times the encoding work per encoder, search and final heads). `--feature-dtype bfloat16` halves the
   stored size instead.
4. **Hyper-parameters on training data only.** A grid of learning rate x weight decay heads, of each
   probe kind (attentive, linear), is trained at once on the shared features of 80% of the TRAINING
   videos (split by video) and scored on the held-out 20%; validation data is never used to choose.
   The selection key is, in order: the mean over outputs of mean-class recall@5, then of recall@1,
   then of top-1 accuracy. The held-out part is labelled exactly as validation is: for anticipation
   actions are the verb+noun pairs of the fitted part, other pairs are -1; for classification the
   classes are the labels of the fitted part's videos, other labels are -1.
5. **Retrain, evaluate once.** The chosen setting of each probe kind is retrained from the same
   initialisation on all training data (the action vocabulary then covers all training pairs, so the
   fitted head cannot simply be reused) and evaluated once on validation.
6. **Outputs** in OUT: ``metrics.json`` (the contract keys ``verb_recall@5``, ``verb_recall@1``,
   ``verb_top1``, ... of the first probe kind, ``num_train``, ``num_val``, and everything else: chosen
   hyper-parameters, the held-out grid, every probe kind's metrics, per-class recall, a class-prior
   baseline, timing), ``report.md``, ``per_class_recall.png``, the trained probes (``probe_<kind>.pt``)
   and the action vocabulary (``vocabulary.json``); each file is written atomically (a reader, or a
   run killed while writing, sees the previous file or the whole new one).
7. **Repeats** (`--repeats N`). With a few hundred labelled clips, the held-out split and the heads'
   initialisation move recall@1 by several points between probe seeds. `--repeats N` runs steps 4-5
   N times with probe seeds SEED..SEED+N-1 on the same features (extracted once; the weights of
   `--checkpoint random` stay those of SEED); the contract keys then hold the means, and
   ``metrics.json["repeats"]`` the mean, sample std and values of every metric of every probe kind.

Scoring (see `worldmodel.metrics`): mean-class recall@k averages over the classes present in the
evaluated split; top-k accuracy counts every sample. Validation actions whose pair never occurs in
training, like validation videos whose label no training video has (label -1, counted in
``<output>_num_unlabelled``), are misses there, and each such pair (label) is a class present in the
split with recall 0 in the class average (counted in ``<output>_num_unseen_classes``): no output of
the head stands for it, so nothing can rank it.

Training: AdamW (no weight decay on biases, norms, query tokens), a linear warm-up then cosine decay to
zero, cross-entropy (default) or sigmoid focal loss (alpha 0.25, gamma 2, V-JEPA 2's choice for EK100),
summed over the outputs (verb + noun + action). All heads of a grid share the batches and start from
the same initial weights, so they differ only by their hyper-parameters.

Why no LightningModule here: the heads train on in-memory tensors for a few hundred steps; a plain
loop makes the per-epoch timing, the shared batches of many heads and determinism easy to see, and
costs nothing to start.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import io
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from worldmodel.checkpoints import (
    ENCODER_ROLES,
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    build_predictor,
    is_vjepa2_source,
    load_model_parts,
    predictor_arch,
    read_export_config,
    resolve_model_path,
    safe_torch_load,
    weights_hash,
)
from worldmodel.cliutil import json_text, output_problem, resolve_device
from worldmodel.data.annotations import ActionVocabulary, read_annotations
from worldmodel.data.datasets import AnticipationDataset, ManifestEntry, collate_samples, read_manifest, to_video
from worldmodel.data.transforms import RandomResizedCropVideo, ResizeCenterCropVideo
from worldmodel.data.video import ClipSampler, VideoError, VideoInfo, check_file, read_frames, read_video_info
from worldmodel.featurestore import FEATURE_STORES, FeatureStore, plan_feature_store
from worldmodel.forecast import ForecastAnchor, ForecastError
from worldmodel.metrics import UNSEEN, classification_metrics
from worldmodel.models.probe import build_probe, no_weight_decay

__all__ = [
    "ClipSet",
    "FeatureCache",
    "FeatureSource",
    "Features",
    "HeadSetting",
    "ManifestClips",
    "ProbeConfig",
    "ProbeInputError",
    "add_probe_arguments",
    "anticipation_clip_sets",
    "build_world_model",
    "checkpoint_encoders",
    "classification_clip_sets",
    "evaluate_heads",
    "extract_features",
    "forecast_horizon",
    "run_probe",
    "run_protocol",
    "sigmoid_focal_loss",
    "split_by_video",
    "train_heads",
]

FEATURE_FORMAT = "worldmodel.probe_features/2"  # 2: rotated videos' decode size, variable-rate clip starts in time
PROBE_KINDS = ("attentive", "linear")
FEATURE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# V-JEPA 2's EK100 grid is lr {5e-3, 3e-3, 1e-3, 3e-4, 1e-4} x wd {1e-4, 1e-3, 1e-2, 0.1}; ours is a
# smaller grid of the same range (all heads train at once on shared features, so it is cheap).
DEFAULT_LRS = (1e-2, 3e-3, 1e-3)
DEFAULT_WEIGHT_DECAYS = (1e-3, 0.1)


def _log(message: str) -> None:
    print(f"[probe] {message}", flush=True)


# ============================================================================================ config
@dataclass
class ProbeConfig:
    """Everything that defines a probe run besides the data paths and the model."""

    num_frames: int = 8  # context frames (a multiple of the tubelet size)
    fps: float = 4.0  # context frame rate: 8 frames at 4 fps = 2 s of context
    anticipation_s: float = 1.0  # the context ends this long before the action starts (EK100: 1 s)
    # gaps of the TRAINING clips: one clip per gap and action (None: anticipation_s only). Held-out
    # scoring and validation always use anticipation_s, which must be among them.
    train_anticipation_s: tuple[float, ...] | None = None
    img_size: int | None = None  # default: the checkpoint's
    resize: int | None = None  # shorter side before the centre crop (default: just cover img_size)
    num_clips: int = 4  # classification: clips per video (training samples / views averaged at eval)
    probes: tuple[str, ...] = PROBE_KINDS  # the first kind gives metrics.json's contract keys
    probe_depth: int = 1  # attentive probe blocks: depth-1 self-attention + 1 cross-attention (V-JEPA 2: 4)
    probe_heads: int | None = None  # attention heads of the attentive probe (default: the encoder's)
    loss: str = "ce"  # "ce" or "focal"
    lrs: tuple[float, ...] = DEFAULT_LRS
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    epochs: int = 20
    batch_size: int = 32
    warmup_epochs: float = 1.0
    holdout_fraction: float = 0.2  # share of the training videos held out to choose hyper-parameters
    seed: int = 0
    forecast: bool = False  # append the forecast latents of the anticipation gap
    forecast_tokens: str = "all"  # "all" horizon tubelets, or the "last" one (the anticipated time)
    forecast_anchor: str | None = None  # a `worldmodel forecast --fit-anchor` JSON: anchored forecasts
    encoder_blocks: int | None = None  # probe the tokens after the encoder's first K blocks (None: all)
    augment: bool = False  # random resized crops of training clips, re-encoded every epoch
    extract_batch_size: int = 16
    num_workers: int = 1
    device: str = "cpu"
    head_threads: int | None = 1  # CPU threads while training heads (None: leave as is)
    feature_store: str = "auto"  # where frozen features live: "memory", "disk" (memory-mapped), "stream" (nowhere) or "auto"
    feature_dtype: str = "float32"  # how they are kept: "float32", or "bfloat16" / "float16" (half the bytes)

    def __post_init__(self) -> None:
        self.probes = tuple(self.probes)
        if self.train_anticipation_s is not None:
            self.train_anticipation_s = tuple(float(g) for g in self.train_anticipation_s)
            if self.anticipation_s not in self.train_anticipation_s:
                raise ValueError(
                    f"train_anticipation_s {list(self.train_anticipation_s)} must include anticipation_s "
                    f"{self.anticipation_s:g}: held-out training clips are scored at that gap, as validation is"
                )
            if self.forecast and len(self.train_anticipation_s) > 1:
                raise ValueError("forecast covers one anticipation gap; use it with a single training gap")
        self.lrs = tuple(float(x) for x in self.lrs)
        self.weight_decays = tuple(float(x) for x in self.weight_decays)
        bad = [k for k in self.probes if k not in PROBE_KINDS]
        if bad or not self.probes:
            raise ValueError(f"probe kinds must be among {PROBE_KINDS}, got {list(self.probes)}")
        if self.loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' or 'focal', got {self.loss!r}")
        if self.forecast_anchor is not None and not self.forecast:
            raise ValueError("forecast_anchor anchors the forecast latents: use it with forecast")
        if self.encoder_blocks is not None and self.encoder_blocks < 0:
            raise ValueError(f"encoder_blocks must be >= 0, got {self.encoder_blocks}")
        if self.encoder_blocks is not None and self.forecast:
            raise ValueError("--blocks probes an intermediate depth; the forecast latents live in the whole "
                             "encoder's space: use one or the other")
        if self.forecast_tokens not in ("all", "last"):
            raise ValueError(f"forecast_tokens must be 'all' or 'last', got {self.forecast_tokens!r}")
        if not self.lrs or not self.weight_decays or min(self.lrs) <= 0 or min(self.weight_decays) < 0:
            raise ValueError(f"need learning rates > 0 and weight decays >= 0, got {self.lrs}, {self.weight_decays}")
        if self.epochs < 1 or self.batch_size < 1 or self.num_frames < 1 or self.num_clips < 1:
            raise ValueError("epochs, batch_size, num_frames and num_clips must be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.probe_heads is not None and self.probe_heads < 1:
            raise ValueError(f"--probe-heads must be >= 1, got {self.probe_heads}")
        if self.head_threads is not None and self.head_threads < 1:
            raise ValueError(f"--head-threads must be >= 1, got {self.head_threads}")
        if self.feature_store not in FEATURE_STORES:
            raise ValueError(f"feature_store must be one of {FEATURE_STORES}, got {self.feature_store!r}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {tuple(FEATURE_DTYPES)}, got {self.feature_dtype!r}")

    @property
    def token_dtype(self) -> torch.dtype:
        """The dtype frozen features are stored in (heads always compute in float32)."""
        return FEATURE_DTYPES[self.feature_dtype]


@dataclass(frozen=True)
class HeadSetting:
    """One probe head of the grid: its kind and optimiser hyper-parameters."""

    kind: str
    lr: float
    weight_decay: float

    @property
    def name(self) -> str:
        return f"{self.kind}_lr{self.lr:g}_wd{self.weight_decay:g}"


def head_grid(cfg: ProbeConfig) -> list[HeadSetting]:
    return [HeadSetting(kind, lr, wd) for kind in cfg.probes for lr in cfg.lrs for wd in cfg.weight_decays]


# ============================================================================================ model
def _takes_jepa_arguments(config: Mapping[str, Any]) -> bool:
    """Whether `config` holds `JEPAPretrainer` arguments only: the hyper-parameters of a worldmodel
    pretraining run, as its checkpoint and the folders exported from it carry them (a V-JEPA 2 model's
    describe its import instead)."""
    from worldmodel.pretrain import JEPAPretrainer

    return set(config) <= set(inspect.signature(JEPAPretrainer.__init__).parameters) - {"self"}


def build_world_model(
    checkpoint: str, encoder: str = "target", config_from: str | None = None, seed: int = 0, img_size: int | None = None
):
    """The frozen `WorldModel`: from a checkpoint, or "random": seeded random weights of an architecture.

    checkpoint: anything `WorldModel.load` reads (a pretraining checkpoint or its run folder, an exported
    or imported folder, a V-JEPA 2 checkpoint), or "random". config_from (with "random" only): a model
    source of the same kinds whose architecture the random weights take (default: `JEPAPretrainer()`'s).
    A worldmodel pretraining run's hyper-parameters build a `JEPAPretrainer`, so the weights are those
    its pretraining starts from; another model (V-JEPA 2) is rebuilt from its encoder's and predictor's
    build recipe, in the same order, and its EMA target starts as a copy of the context encoder, as
    pretraining's does. The source's weights are read to find its architecture, then dropped.
    img_size: the frame size a V-JEPA 2 checkpoint file read directly was trained at (its file does not
    record it); ignored for every other source, which records its own."""
    from worldmodel.forecast import WorldModel
    from worldmodel.models.vit import VideoViT
    from worldmodel.pretrain import JEPAPretrainer

    if checkpoint != "random":
        if config_from is not None:
            raise ValueError("--config-from only applies to --checkpoint random (a checkpoint brings its own config)")
        return WorldModel.load(checkpoint, encoder=encoder, **_vjepa2_options(checkpoint, img_size))
    source = f"random(seed={seed}" + (f", config_from={config_from})" if config_from else ")")
    parts = load_model_parts(config_from, **_vjepa2_options(config_from, img_size)) if config_from is not None else None
    if parts is None or _takes_jepa_arguments(parts.config):
        torch.manual_seed(seed)
        module = JEPAPretrainer(**(parts.config if parts is not None else {}))
        config = {k: v for k, v in dict(module.hparams).items() if not str(k).startswith("_")}
        target = module.target_encoder if module.target_encoder is not None else module.encoder
        return WorldModel(module.encoder, target, module.predictor, config, encoder=encoder, source=source)
    encoder_cfg, pred_arch, config = parts.encoder.cfg, predictor_arch(parts.predictor), parts.config
    del parts  # the source's weights are not needed any more
    torch.manual_seed(seed)
    context = VideoViT(encoder_cfg)
    predictor = build_predictor(pred_arch)
    return WorldModel(context, copy.deepcopy(context), predictor, config, encoder=encoder, source=source)


def _vjepa2_options(source: str, img_size: int | None) -> dict[str, Any]:
    """{"img_size": img_size} for a V-JEPA 2 checkpoint file (which does not record its size), else {}."""
    return {"img_size": img_size} if img_size is not None and is_vjepa2_source(source) else {}


def checkpoint_encoders(checkpoint: str) -> tuple[str, ...]:
    """The encoders a model source holds, of ("target", "context"): for an exported or imported folder
    those its config.json lists under "encoders" (`worldmodel export` keeps only the target encoder
    unless given `--encoder both`); a pretraining checkpoint or run folder, a V-JEPA 2 checkpoint and
    random weights hold both. A SIGReg model's one shared encoder is listed under both names."""
    if checkpoint == "random":
        return ENCODER_ROLES
    path = resolve_model_path(checkpoint)
    if not path.is_dir():
        return ENCODER_ROLES
    stored = read_export_config(path)["encoders"]
    held = tuple(role for role in ENCODER_ROLES if isinstance(stored, dict) and role in stored)
    return held or ENCODER_ROLES  # a damaged entry: loading the folder reports it


def cut_encoder_blocks(encoders: Iterable[nn.Module], blocks: int) -> None:
    """Keep only the first `blocks` transformer blocks of each encoder (in place; its final norm stays)."""
    for encoder in encoders:
        depth = len(encoder.blocks)
        if not 0 <= blocks <= depth:
            raise ValueError(f"--blocks {blocks}: the encoder has {depth} blocks (0 probes the tubelet embedding)")
        encoder.blocks = encoder.blocks[:blocks]


def forecast_horizon(anticipation_s: float, fps: float, tubelet_size: int) -> int:
    """Tubelets needed to cover the `anticipation_s` gap between the context's end and the action start."""
    return max(1, math.ceil(anticipation_s * fps / tubelet_size - 1e-9))


def feature_bytes(
    cfg: ProbeConfig, grid: tuple[int, int, int], width: int, horizon: int | None, num_train: int, num_val: int,
    num_encoders: int, repeats: int = 1,
) -> tuple[int, str]:
    """Bytes of features (cfg.feature_dtype) a probe run keeps at its peak, and what they are (for messages): every
    training clip's tokens for each candidate encoder, the validation clips' for the chosen one (for each
    candidate with several repeats: each repeat chooses), and with augmentation the re-encoded training
    epochs (the previous, the new one and its fresh rows)."""
    t, h, w = grid
    forecast = 0 if horizon is None else (horizon if cfg.forecast_tokens == "all" else 1) * h * w
    tokens = t * h * w + forecast
    val_sets = num_encoders if repeats > 1 else 1
    clips = num_train * num_encoders + num_val * val_sets + (3 * num_train if cfg.augment else 0)
    parts = [f"{num_train} training clips" + (f" x {num_encoders} encoders" if num_encoders > 1 else ""),
             f"{num_val} validation clips" + (f" x {val_sets} encoders" if val_sets > 1 else "")]
    parts += ["3 augmented training epochs"] if cfg.augment else []
    what = f"{' + '.join(parts)}, each {tokens} tokens x {width} {cfg.feature_dtype}"
    return clips * tokens * width * cfg.token_dtype.itemsize, what


def forecast_tokens(
    world_model, video: Tensor, horizon: int, spatial: int, keep: str = "all", anchor: ForecastAnchor | None = None,
    encoded: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Predicted latents (B, F, D) of the `horizon` tubelets after the clip: all of them (F = horizon * h * w)
    or only the "last" one (F = h * w, the anticipated time itself, as V-JEPA 2 does). anchor: fit for this
    model (the anchored forecast), or None. encoded: the clip's tokens already computed, by encoder name
    (`WorldModel.forecast` reuses them instead of encoding the clip again)."""
    future = world_model.forecast(video, horizon, anchor=anchor, encoded=encoded)  # (B, horizon*h*w, D)
    return future[:, -spatial:] if keep == "last" else future


# ============================================================================================ data
class ManifestClips(Dataset):
    """Clips of `path label` manifest videos: item ``video * num_clips + k`` is clip k of `num_clips`
    spread evenly over the video (one clip: the centre one). Items as `collate_samples` expects."""

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        sampler: ClipSampler,
        num_clips: int,
        transform: Callable | None,
        decode_size: int | tuple[int, int] | None = None,
        seed: int = 0,
    ) -> None:
        self.entries = list(entries)
        self.sampler = sampler
        self.num_clips = int(num_clips)
        self.transform = transform
        self.decode_size = decode_size
        self.seed = int(seed)
        self._infos: dict[str, VideoInfo] = {}

    def __len__(self) -> int:
        return len(self.entries) * self.num_clips

    def check(self) -> None:
        """Open every video once (a `VideoError` naming the file for one that cannot be used), so that a
        bad file stops the probe before hours of feature extraction, not in the middle of it."""
        for index in range(0, len(self), self.num_clips):
            self.clip_indices(index)
        short = [entry.path for entry in self.entries if not self.sampler.fits(self._infos[entry.path])]
        if short:
            _log(f"note: {len(short)} of {len(self.entries)} videos are shorter than one clip ({self.sampler.num_frames} "
                 f"frames): their clips repeat the last frame (e.g. {', '.join(short[:3])})")  # fmt: skip

    def clip_indices(self, index: int) -> np.ndarray:
        entry = self.entries[index // self.num_clips]
        if entry.path not in self._infos:
            self._infos[entry.path] = read_video_info(entry.path)
        return self.sampler.indices(self._infos[entry.path], mode="uniform", num_clips=self.num_clips)[index % self.num_clips]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, (tuple, list)) else (0, key)
        entry = self.entries[index // self.num_clips]
        frames = read_frames(entry.path, self.clip_indices(index), size=self.decode_size)  # (T, H, W, C)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        video = to_video(frames, self.transform, rng)
        label = -1 if entry.label is None else int(entry.label)
        return {"video": video, "label": label, "index": int(index), "epoch": int(epoch), "errors": []}


@dataclass
class ClipSet:
    """One split's clips before encoding, and what the protocol needs to know about each item.

    dataset: items in a fixed order (eval transform); train_dataset: the same items with augmentation
    (None: not augmented). video_ids (N,): items of one video stay on one side of a split.
    sample_ids (N,): items sharing an id are views of one sample, their scores averaged at evaluation.
    label_space(rows) -> (outputs {name: classes}, labels {name: LongTensor (N,)}): the labels of ALL
    items when the classes are defined by the items `rows` (anticipation: actions = their verb+noun
    pairs; -1 for others). fingerprint: what the clips depend on (for the feature cache key).
    """

    dataset: Dataset
    video_ids: np.ndarray
    sample_ids: np.ndarray
    label_space: Callable[[np.ndarray], tuple[dict[str, int], dict[str, Tensor]]]
    fingerprint: dict[str, Any]
    train_dataset: Dataset | None = None
    class_names: dict[str, Any] = field(default_factory=dict)
    eval_rows: np.ndarray | None = None  # items that score held-out data (None: all); the others only train

    def __len__(self) -> int:
        return len(self.sample_ids)


def _file_stamp(path: str) -> list:
    try:
        stat = os.stat(path)
    except OSError:
        check_file(path)  # a missing / unreadable video: the VideoError every other reader gives
        raise
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _transforms(cfg: ProbeConfig, img_size: int) -> tuple[Callable, Callable | None, int]:
    """(eval transform, train transform or None, decode size = the shorter side to decode at)."""
    shorter = cfg.resize or img_size
    evaluation = ResizeCenterCropVideo(img_size, resize=cfg.resize)
    training = RandomResizedCropVideo(img_size, scale=(0.3, 1.0), hflip_p=0.5) if cfg.augment else None
    return evaluation, training, shorter


def _clip_fingerprint(cfg: ProbeConfig, img_size: int) -> dict[str, Any]:
    return {"num_frames": cfg.num_frames, "fps": cfg.fps, "img_size": img_size, "resize": cfg.resize,
            "transform": "resize_center_crop"}  # fmt: skip


def anticipation_clip_sets(
    train_csv: str, val_csv: str, videos_dir: str, cfg: ProbeConfig, img_size: int
) -> tuple[ClipSet, ClipSet, ActionVocabulary]:
    """Train and val ClipSets of `AnticipationDataset`s, and the final action vocabulary (training pairs;
    verb and noun counts cover both splits)."""
    train_segments = read_annotations(train_csv, videos_dir=videos_dir)
    val_segments = read_annotations(val_csv, videos_dir=videos_dir)
    vocab = ActionVocabulary.from_annotations(train_segments, eval_segments=val_segments)
    evaluation, training, shorter = _transforms(cfg, img_size)
    common = dict(num_frames=cfg.num_frames, fps=cfg.fps, decode_size=shorter, seed=cfg.seed)
    gaps = cfg.train_anticipation_s or (cfg.anticipation_s,)
    train_ds = AnticipationDataset(train_csv, videos_dir, vocab, transform=evaluation, anticipation_s=gaps, **common)
    val_ds = AnticipationDataset(val_csv, videos_dir, vocab, transform=evaluation, anticipation_s=cfg.anticipation_s, **common)
    train_aug = (
        AnticipationDataset(train_csv, videos_dir, vocab, transform=training, anticipation_s=gaps, **common) if training else None
    )

    names = {
        "verb": {i: vocab.verb_names.get(i, str(i)) for i in range(vocab.num_verbs)},
        "noun": {i: vocab.noun_names.get(i, str(i)) for i in range(vocab.num_nouns)},
    }

    def clip_set(dataset: AnticipationDataset, csv_path: str, train_ds: Dataset | None) -> ClipSet:
        # one item per (gap, action): item g * n + i is action i at gap g (see AnticipationDataset)
        num_gaps = len(dataset.anticipation_gaps)
        segments = dataset.segments * num_gaps
        verbs = torch.tensor([s.verb for s in segments])
        nouns = torch.tensor([s.noun for s in segments])

        def label_space(rows: np.ndarray, final: ActionVocabulary | None = None) -> tuple[dict[str, int], dict[str, Tensor]]:
            if final is None:
                final = ActionVocabulary.from_annotations(
                    [segments[i] for i in rows], num_verbs=vocab.num_verbs, num_nouns=vocab.num_nouns
                )
            actions = torch.tensor([final.action_id(s.verb, s.noun) for s in segments])
            outputs = {"verb": final.num_verbs, "noun": final.num_nouns, "action": final.num_actions}
            # the pair of each unseen action: a class of the split with recall 0 (see worldmodel.metrics)
            unseen = torch.where(actions < 0, verbs * final.num_nouns + nouns, -1)
            return outputs, {"verb": verbs, "noun": nouns, "action": actions, "action" + UNSEEN: unseen}

        fingerprint = {
            "task": "anticipation",
            "annotations": _sha256_file(csv_path),
            "videos": sorted(_file_stamp(p) for p in dataset.video_paths.values()),
            "anticipation_s": list(dataset.anticipation_gaps),
            **_clip_fingerprint(cfg, img_size),
        }
        num_actions = len(dataset.segments)
        scored_gap = dataset.anticipation_gaps.index(cfg.anticipation_s)
        return ClipSet(
            dataset=dataset,
            video_ids=np.array([s.video_id for s in segments]),
            sample_ids=np.tile(np.arange(num_actions), num_gaps),  # the gaps of one action are one sample
            eval_rows=None if num_gaps == 1 else np.arange(scored_gap * num_actions, (scored_gap + 1) * num_actions),
            label_space=label_space,
            fingerprint=fingerprint,
            train_dataset=train_ds,
            class_names=names,
        )

    train = clip_set(train_ds, train_csv, train_aug)
    val = clip_set(val_ds, val_csv, None)
    # validation is always labelled with the final vocabulary (all training pairs)
    val_space = val.label_space
    val.label_space = lambda rows: val_space(rows, final=vocab)
    action_names = [f"{names['verb'][v]} {names['noun'][n]}" for v, n in vocab.actions]
    for clip_set_ in (train, val):
        clip_set_.class_names = {**names, "action": action_names}
    return train, val, vocab


def classification_clip_sets(train_manifest: str, val_manifest: str, cfg: ProbeConfig, img_size: int) -> tuple[ClipSet, ClipSet]:
    """Train and val ClipSets of `num_clips` clips per manifest video, labelled with the manifest's labels.

    The classes are the labels of the TRAINING videos, as the actions of anticipation are its training
    pairs: the head has ``1 + max(training label)`` outputs, and a validation video whose label no
    training video has keeps its place with label -1 (a miss in top-k accuracy, and its label a class
    with recall 0 in the mean-class recall; counted in ``label_num_unlabelled``). The held-out part of the hyper-parameter
    search is labelled the same way by the videos it is fitted on."""
    evaluation, training, shorter = _transforms(cfg, img_size)
    sampler = ClipSampler(num_frames=cfg.num_frames, fps=cfg.fps)
    entries = {"train": read_manifest(train_manifest), "val": read_manifest(val_manifest)}
    for split, manifest in (("train", train_manifest), ("val", val_manifest)):
        unlabelled = [e.path for e in entries[split] if e.label is None]
        if unlabelled:
            raise ValueError(
                f"{manifest}: {len(unlabelled)} video(s) have no label (e.g. {unlabelled[0]}); a classification "
                "probe needs 'path label' lines"
            )
    labels = {split: torch.tensor([e.label for e in split_entries]).repeat_interleave(cfg.num_clips)
              for split, split_entries in entries.items()}  # fmt: skip
    train_classes = torch.unique(labels["train"])
    unseen = sorted({e.label for e in entries["val"]} - set(train_classes.tolist()))
    if unseen:
        count = sum(e.label in unseen for e in entries["val"])
        _log(f"{val_manifest}: {count} of {len(entries['val'])} validation videos have a label no training video has "
             f"({', '.join(map(str, unseen[:10]))}{' ...' if len(unseen) > 10 else ''}); they are kept as label -1, "
             "misses for top-k accuracy, and classes with recall 0 in the mean-class recall")  # fmt: skip

    def space(split: str, classes: Tensor) -> tuple[dict[str, int], dict[str, Tensor]]:
        """Outputs for the labels `classes`, and the split's labels with the others as -1."""
        known = torch.isin(labels[split], classes)
        return {"label": int(classes.max()) + 1}, {"label": torch.where(known, labels[split], -1),
                                                   "label" + UNSEEN: torch.where(known, -1, labels[split])}

    def clip_set(split: str, manifest: str, label_space: Callable) -> ClipSet:
        split_entries = entries[split]
        fingerprint = {
            "task": "classification",
            "manifest": _sha256_file(manifest),
            "videos": [_file_stamp(e.path) for e in split_entries],
            "num_clips": cfg.num_clips,
            **_clip_fingerprint(cfg, img_size),
        }
        return ClipSet(
            dataset=ManifestClips(split_entries, sampler, cfg.num_clips, evaluation, shorter, cfg.seed),
            video_ids=np.array([e.path for e in split_entries]).repeat(cfg.num_clips),
            sample_ids=np.arange(len(split_entries)).repeat(cfg.num_clips),
            label_space=label_space,
            fingerprint=fingerprint,
            train_dataset=ManifestClips(split_entries, sampler, cfg.num_clips, training, shorter, cfg.seed) if training else None,
        )

    # training rows define the classes (all of them for the final head, the fitted part in the search);
    # validation is always labelled with the classes of all training videos
    def train_space(rows: np.ndarray) -> tuple[dict[str, int], dict[str, Tensor]]:
        return space("train", torch.unique(labels["train"][torch.as_tensor(rows, dtype=torch.long)]))

    train = clip_set("train", train_manifest, train_space)
    val = clip_set("val", val_manifest, lambda rows: space("val", train_classes))
    return train, val


def split_by_video(video_ids: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows): about `fraction` of the distinct videos (at least one) are held out."""
    videos = np.unique(video_ids)
    if len(videos) < 2:
        raise ValueError(
            f"cannot hold out training videos to choose hyper-parameters: the training data has {len(videos)} "
            "video(s); give at least two"
        )
    rng = np.random.default_rng([seed, 20_250_601])
    count = min(len(videos) - 1, max(1, round(fraction * len(videos))))
    held = set(rng.permutation(videos)[:count].tolist())
    mask = np.array([v in held for v in video_ids])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# ============================================================================================ features
@dataclass
class Features:
    """Tokens of every item of a split: (N, L, D) float32, and the type of each token (L,): 0 = observed
    (encoder), 1 = forecast (predictor)."""

    tokens: Tensor
    token_types: Tensor

    @property
    def num_token_types(self) -> int:
        return int(self.token_types.max()) + 1 if self.token_types.numel() else 1

    @property
    def batch_size(self) -> int | None:
        """Items per batch for reading them all (None: any)."""
        return None

    def batches(self, chunks: Sequence[Tensor]) -> Iterator[Tensor]:
        """The tokens of each chunk of item indices, (len(chunk), L, D), in order."""
        for chunk in chunks:
            yield self.tokens[chunk]


class StreamedFeatures(Features):
    """Features that are not stored (`--feature-store stream`): the tokens of a chunk of items are encoded
    when asked for, by the source's frozen encoder (in DataLoader order, decoding ahead in workers while
    the heads train). `tokens` is None; `batches` is the way in."""

    def __init__(self, source: "FeatureSource", dataset: Dataset, token_types: Tensor, epoch: int | None = None) -> None:
        super().__init__(None, token_types)  # type: ignore[arg-type]
        self.source, self.dataset, self.epoch = source, dataset, epoch

    @property
    def batch_size(self) -> int | None:
        return self.source.cfg.extract_batch_size

    def batches(self, chunks: Sequence[Tensor]) -> Iterator[Tensor]:
        # the encoder takes --extract-batch-size clips at a time, whatever the size of the chunks asked for
        size = max(1, self.source.cfg.extract_batch_size)
        pieces, counts = [], []
        for chunk in chunks:
            keys = [int(i) if self.epoch is None else (self.epoch, int(i)) for i in chunk]
            parts = [keys[first : first + size] for first in range(0, len(keys), size)]
            pieces += parts
            counts.append(len(parts))
        encoded = self.source.encode_chunks(self.dataset, pieces)
        for count in counts:
            yield torch.cat([next(encoded) for _ in range(count)])


def clip_batches(
    dataset: Dataset, keys: Sequence, batch_size: int, num_workers: int, batches: Sequence[Sequence] | None = None
) -> Iterator[dict]:
    """Collated uint8 batches (video (B, C, T, H, W)) of the dataset items `keys`, in that order, `batch_size`
    at a time; or, given `batches` (lists of keys), exactly those batches in that order."""
    if batches is not None:
        loader = DataLoader(dataset, batch_sampler=[list(b) for b in batches], num_workers=num_workers,
                            collate_fn=collate_samples, persistent_workers=False)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=list(keys), num_workers=num_workers,
                            collate_fn=collate_samples, persistent_workers=False)
    yield from loader  # a worker's VideoError arrives as a VideoError with its own one-line message


@torch.no_grad()
def encode_clips(
    world_model, video: Tensor, horizon: int | None = None, keep: str = "all", encoder: str | None = None,
    anchor: ForecastAnchor | None = None, dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """A batch of uint8 clips (B, C, T, H, W) -> (tokens (B, L, D) on the CPU in `dtype`, token types (L,)):
    the frozen encoder's tokens, then (with `horizon`) the forecast latents (`forecast_tokens`)."""
    video = video.to(world_model.device)
    encoded = world_model.encode(video, encoder=encoder)  # (B, N, D)
    parts, types = [encoded], [torch.zeros(encoded.shape[1], dtype=torch.long)]
    if horizon is not None:
        _, grid_h, grid_w = world_model.target_encoder.grid(video.shape)
        role = encoder or world_model.default_encoder  # the forecast reuses this encoder's tokens
        future = forecast_tokens(world_model, video, horizon, grid_h * grid_w, keep, anchor,
                                 encoded={role: encoded})  # (B, F, D)
        parts.append(future.to(encoded.dtype))
        types.append(torch.ones(future.shape[1], dtype=torch.long))
    return torch.cat(parts, dim=1).float().to(dtype).cpu(), torch.cat(types)


@torch.no_grad()
def extract_features(
    world_model,
    dataset: Dataset,
    keys: Sequence,
    batch_size: int = 16,
    num_workers: int = 1,
    horizon: int | None = None,
    keep: str = "all",
    log_every_s: float = 30.0,
    encoder: str | None = None,
    anchor: ForecastAnchor | None = None,
    store: FeatureStore | None = None,
    dtype: torch.dtype = torch.float32,
) -> Features:
    """Encode the items `keys` of `dataset` with the frozen encoder: Features of (len(keys), L, D).

    encoder: "target" or "context" (default: the world model's own choice). store: where the tokens are
    allocated (default: memory; see `worldmodel.featurestore`). dtype: what they are stored as (the
    encoder's float32 output rounded to it: bfloat16 / float16 halve the memory or disk they take).

    horizon: also append the forecast latents of the next `horizon` tubelets (`forecast_tokens`), anchored
    with `anchor` when one is given.
    """
    tokens: Tensor | None = None
    token_types: Tensor | None = None
    start, last_log, done = time.perf_counter(), time.perf_counter(), 0
    for batch in clip_batches(dataset, keys, batch_size, num_workers):
        out, types = encode_clips(world_model, batch["video"], horizon, keep, encoder, anchor, dtype)  # (B, L, D)
        if tokens is None:
            tokens = (store or FeatureStore()).empty((len(keys), *out.shape[1:]), dtype=dtype)
            token_types = types
        tokens[done : done + len(out)] = out
        done += len(out)
        now = time.perf_counter()
        if now - last_log > log_every_s:
            which = encoder or getattr(world_model, "default_encoder", None)  # (auto encodes with both, in turn)
            _log(f"  encoded {done}/{len(keys)} clips{f' with the {which} encoder' if which else ''} "
                 f"({done / (now - start):.1f} clips/s)")
            last_log = now
    if tokens is None:
        raise ValueError("extract_features: no items to encode")
    return Features(tokens, token_types)


class FeatureCache:
    """Features by key: in memory, and on disk under `folder` when given (``<key>.pt`` + ``<key>.json``).

    `get(key, compute)` returns ``(features, source)`` with source "memory", "disk" or "computed".
    Disk files are written atomically and read with `weights_only=True`; a file that does not load is
    recomputed (and overwritten).
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, Features] = {}

    @staticmethod
    def key(description: Mapping[str, Any]) -> str:
        text = json.dumps({"format": FEATURE_FORMAT, **description}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, key: str, compute: Callable[[], Features], description: Mapping[str, Any] | None = None) -> tuple[Features, str]:
        if key in self._memory:
            return self._memory[key], "memory"
        path = self.folder / f"{key}.pt" if self.folder is not None else None
        if path is not None and path.is_file():
            try:
                stored = safe_torch_load(path, mmap=True)  # read as used: features may exceed memory
                if stored.get("format") == FEATURE_FORMAT:
                    features = Features(stored["tokens"], stored["token_types"])
                    self._memory[key] = features
                    return features, "disk"
            except (CheckpointError, AttributeError, KeyError) as err:
                _log(f"feature cache {path} is unusable ({err}); recomputing")
        features = compute()
        self._memory[key] = features
        if path is not None:
            atomic_torch_save({"format": FEATURE_FORMAT, "tokens": features.tokens, "token_types": features.token_types}, path)
            text = json.dumps({"format": FEATURE_FORMAT, **(description or {})}, indent=1, default=str) + "\n"
            atomic_write_bytes(text.encode(), path.with_suffix(".json"))
        return features, "computed"


class FeatureSource:
    """The features of one ClipSet: for evaluation (computed once, cached) and per training epoch
    (the same cached tensor, or freshly encoded augmented clips when the set has a train_dataset)."""

    def __init__(
        self,
        clips: ClipSet,
        world_model,
        cache: FeatureCache,
        model_key: Mapping[str, Any],
        cfg: ProbeConfig,
        horizon: int | None,
        encoder: str | None = None,
        anchor: ForecastAnchor | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        self.clips = clips
        self.store = store or FeatureStore()
        self.world_model = world_model
        self.encoder = encoder
        self.cache = cache
        self.cfg = cfg
        self.horizon = horizon
        self.anchor = anchor if horizon is not None else None
        forecast = {"horizon": horizon, "keep": cfg.forecast_tokens} if horizon is not None else None
        if forecast is not None and self.anchor is not None:
            forecast["anchor"] = {"weights": self.anchor.weights, "model_sha256": self.anchor.model_sha256}
        self.description = {"model": dict(model_key), "data": clips.fingerprint, "forecast": forecast}
        if cfg.feature_dtype != "float32":  # (float32 keys stay those of the caches written before the option)
            self.description["dtype"] = cfg.feature_dtype
        self.key = FeatureCache.key(self.description)
        self.extract_s = 0.0  # time spent encoding clips (0 when the cache had them)
        self.source: str | None = None  # where evaluation features came from
        self._threads = torch.get_num_threads()  # streamed encoding runs with these, also while heads train
        self._stream_types: Tensor | None = None

    @property
    def streaming(self) -> bool:
        """Features are not stored: every epoch and evaluation encodes its clips (`--feature-store stream`)."""
        return self.store.kind == "stream"

    def encode_chunks(self, dataset: Dataset, batches: Sequence[Sequence]) -> Iterator[Tensor]:
        """Tokens (len(batch), L, D) of each batch of `dataset` keys, encoded now, in order (streaming)."""
        threads = torch.get_num_threads()
        resumed = time.perf_counter()
        for batch in clip_batches(dataset, (), 0, self.cfg.num_workers, batches=batches):
            torch.set_num_threads(self._threads)  # the heads train with --head-threads; the encoder needs more
            try:
                out, types = encode_clips(self.world_model, batch["video"], self.horizon, self.cfg.forecast_tokens,
                                          self.encoder, self.anchor, self.cfg.token_dtype)
            finally:
                torch.set_num_threads(threads)
            self._stream_types = types
            self.extract_s += time.perf_counter() - resumed  # decoding waits and encoding, not the heads' time
            yield out
            resumed = time.perf_counter()

    def _streamed(self, dataset: Dataset, epoch: int | None = None) -> StreamedFeatures:
        if self._stream_types is None:  # the token layout, from one clip
            for _ in self.encode_chunks(self.clips.dataset, [[0]]):
                pass
        return StreamedFeatures(self, dataset, self._stream_types, epoch)

    def _extract(self, dataset: Dataset, keys: Sequence) -> Features:
        start = time.perf_counter()
        features = extract_features(
            self.world_model, dataset, keys, self.cfg.extract_batch_size, self.cfg.num_workers, self.horizon,
            self.cfg.forecast_tokens, encoder=self.encoder, anchor=self.anchor, store=self.store,
            dtype=self.cfg.token_dtype,
        )
        self.extract_s += time.perf_counter() - start
        return features

    def evaluation(self) -> Features:
        if self.streaming:
            self.source = self.source or "streamed"
            return self._streamed(self.clips.dataset)
        keys = list(range(len(self.clips)))
        features, source = self.cache.get(self.key, lambda: self._extract(self.clips.dataset, keys), self.description)
        if self.source is None:
            self.source = source
        return features

    @property
    def augmented(self) -> bool:
        return self.clips.train_dataset is not None

    def epoch(self, epoch: int, rows: np.ndarray) -> Features:
        """Training features for `epoch`; with augmentation only `rows` are filled (encoded now, or, streaming,
        when their batches are read)."""
        if not self.augmented:
            return self.evaluation()
        if self.streaming:
            return self._streamed(self.clips.train_dataset, epoch)
        fresh = self._extract(self.clips.train_dataset, [(epoch, int(i)) for i in rows])
        tokens = self.store.zeros((len(self.clips), *fresh.tokens.shape[1:]), dtype=fresh.tokens.dtype)
        tokens[torch.as_tensor(rows)] = fresh.tokens
        return Features(tokens, fresh.token_types)

    def token_types(self) -> Tensor:
        return self.evaluation().token_types


# ============================================================================================ training
def sigmoid_focal_loss(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss with one-hot targets, summed over classes, mean over samples (B, C), (B,) -> ()."""
    targets = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum(dim=-1).mean()


def probe_loss(logits: Mapping[str, Tensor], labels: Mapping[str, Tensor], kind: str = "ce") -> Tensor:
    """Sum over outputs of the mean loss over samples with a label (label -1: left out)."""
    total = None
    for name, out in logits.items():
        target = labels[name]
        valid = target >= 0
        if not bool(valid.any()):
            continue
        if kind == "focal":
            loss = sigmoid_focal_loss(out[valid], target[valid])
        else:
            loss = F.cross_entropy(out[valid], target[valid])
        total = loss if total is None else total + loss
    if total is None:
        total = sum(out.sum() * 0.0 for out in logits.values())
    return total


def scores_from_logits(logits: Tensor, kind: str) -> Tensor:
    """Class probabilities: softmax for cross-entropy, per-class sigmoid for the focal loss."""
    return torch.sigmoid(logits) if kind == "focal" else logits.softmax(dim=-1)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    probes: list[nn.Module]
    epoch_s: list[float]  # wall time of each epoch (features + all heads)
    features_s: list[float]  # of which getting the epoch's features
    diverged: list[bool]  # per probe: its loss became NaN / inf (left out of the selection)


def probe_num_heads(cfg: ProbeConfig, encoder_heads: int) -> int:
    """Attention heads of the attentive probe: --probe-heads, else the encoder's (V-JEPA 1's choice; for
    ViT-L that is V-JEPA 2's 16). On the built-in corpus 3 heads (ViT-tiny) scored as well as 16 at a
    third of the cost."""
    return cfg.probe_heads or encoder_heads


def _adamw(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where this build supports it (several times faster for many small heads)."""
    try:
        return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))


@contextmanager
def _head_compute(threads: int | None, device: torch.device) -> Iterator[None]:
    """CPU settings while training heads: `threads` intra-op threads (small ops slow down badly on busy
    shared CPUs with several) and denormals flushed to zero (peaked attention softmaxes otherwise
    produce denormal floats that made later epochs 3-4x slower than the first)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def train_heads(
    settings: Sequence[HeadSetting],
    source: FeatureSource,
    rows: np.ndarray,
    labels: Mapping[str, Tensor],
    outputs: Mapping[str, int],
    cfg: ProbeConfig,
    embed_dim: int,
    num_heads: int,
    phase: str = "train",
) -> TrainResult:
    """Train one probe per setting, all at once on the same batches of `rows`; returns them (eval mode).

    Every probe of a kind starts from the same weights (seeded with cfg.seed), so heads differ only by
    their learning rate and weight decay.
    """
    device = torch.device(cfg.device)
    setup_start = time.perf_counter()
    features = source.evaluation()  # the first call encodes every clip: part of epoch 1
    setup_s = time.perf_counter() - setup_start
    token_types, num_types = features.token_types.to(device), features.num_token_types
    probes = []
    for setting in settings:
        torch.manual_seed(cfg.seed)
        probe = build_probe(setting.kind, embed_dim, outputs, num_heads=num_heads, depth=cfg.probe_depth, num_token_types=num_types)
        probes.append(probe.to(device).train())
    groups = []
    for setting, probe in zip(settings, probes):
        decay = [p for n, p in probe.named_parameters() if not no_weight_decay(n, p)]
        plain = [p for n, p in probe.named_parameters() if no_weight_decay(n, p)]
        groups.append({"params": decay, "base_lr": setting.lr, "weight_decay": setting.weight_decay})
        groups.append({"params": plain, "base_lr": setting.lr, "weight_decay": 0.0})
    optimizer = _adamw(groups, device)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(cfg.seed)
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    step, epoch_s, features_s = 0, [], []
    diverged = [False] * len(probes)
    for epoch in range(cfg.epochs):
        start = time.perf_counter() - (setup_s if epoch == 0 else 0.0)
        epoch_features = source.epoch(epoch, rows)  # stored (N, L, D), or encoded batch by batch (streaming)
        got_features, streamed_before = time.perf_counter(), source.extract_s
        order = rows_t[torch.randperm(len(rows_t), generator=generator)]
        chunks = [order[first : first + cfg.batch_size] for first in range(0, len(order), cfg.batch_size)]
        with _head_compute(cfg.head_threads, device):
            for idx, tokens in zip(chunks, epoch_features.batches(chunks)):
                batch = tokens.to(device, torch.float32)  # (B, L, D); stored features may be half precision
                batch_labels = {name: labels[name][idx].to(device) for name in outputs}
                factor = _lr_factor(step, total_steps, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                losses = torch.stack([probe_loss(probe(batch, token_types), batch_labels, cfg.loss) for probe in probes])
                finite = torch.isfinite(losses).tolist()
                for i, ok in enumerate(finite):
                    if not ok and not diverged[i]:
                        diverged[i] = True
                        _log(f"  {phase}: head {settings[i].name} diverged (loss {float(losses[i])}) in epoch {epoch + 1}; "
                             "it is dropped (learning rate too high)")  # fmt: skip
                # heads are independent: the gradient of the sum is each head's own gradient
                loss = sum(losses[i] for i in range(len(probes)) if not diverged[i])
                optimizer.zero_grad(set_to_none=True)
                if isinstance(loss, Tensor):
                    loss.backward()
                    optimizer.step()
                step += 1
        epoch_s.append(time.perf_counter() - start)
        features_s.append(got_features - start + source.extract_s - streamed_before)
    return TrainResult([p.eval() for p in probes], epoch_s, features_s, diverged)


@torch.no_grad()
def predict_scores(
    probes: Sequence[nn.Module] | nn.Module, features: Features, rows: np.ndarray, cfg: ProbeConfig,
    batch_size: int = 256,
) -> list[dict[str, Tensor]] | dict[str, Tensor]:
    """Class probabilities {name: (len(rows), C)} of each probe on the items `rows`, in one pass over their
    features (streamed features are encoded once for all the probes, `cfg.extract_batch_size` at a time).
    Given one probe (not a list), its dict alone."""
    if isinstance(probes, nn.Module):
        return predict_scores([probes], features, rows, cfg, batch_size)[0]
    device = torch.device(cfg.device)
    token_types = features.token_types.to(device)
    out: list[dict[str, list[Tensor]]] = [{} for _ in probes]
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    size = features.batch_size or batch_size
    chunks = [rows_t[first : first + size] for first in range(0, len(rows_t), size)]
    with _head_compute(cfg.head_threads, device):
        for tokens in features.batches(chunks):
            batch = tokens.to(device, torch.float32)
            for probe, scores in zip(probes, out):
                for name, value in probe(batch, token_types).items():
                    scores.setdefault(name, []).append(scores_from_logits(value.float(), cfg.loss).cpu())
    return [{name: torch.cat(values) for name, values in scores.items()} for scores in out]


def average_views(scores: Mapping[str, Tensor], labels: Mapping[str, Tensor], sample_ids: np.ndarray) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Average the scores of items that are views of one sample (same id); one label per sample."""
    unique, inverse = np.unique(sample_ids, return_inverse=True)
    if len(unique) == len(sample_ids):
        return dict(scores), dict(labels)
    inverse_t = torch.as_tensor(inverse, dtype=torch.long)
    counts = torch.bincount(inverse_t, minlength=len(unique)).float()[:, None]
    first = torch.as_tensor(np.unique(inverse, return_index=True)[1], dtype=torch.long)
    averaged = {}
    for name, value in scores.items():
        summed = torch.zeros(len(unique), value.shape[1]).index_add_(0, inverse_t, value.float())
        averaged[name] = summed / counts
    return averaged, {name: value[first] for name, value in labels.items()}


def evaluate_heads(
    probes: Sequence[nn.Module] | nn.Module,
    features: Features,
    rows: np.ndarray,
    labels: Mapping[str, Tensor],
    sample_ids: np.ndarray,
    cfg: ProbeConfig,
    class_names: Mapping[str, Any] | None = None,
) -> list[dict] | dict:
    """`classification_metrics` of each probe on the items `rows` (views of a sample averaged); given one
    probe (not a list), its metrics alone."""
    if isinstance(probes, nn.Module):
        return evaluate_heads([probes], features, rows, labels, sample_ids, cfg, class_names)[0]
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    results = []
    for scores in predict_scores(probes, features, rows, cfg):
        row_labels = {name: value[rows_t] for name, value in labels.items() if name.removesuffix(UNSEEN) in scores}
        averaged, row_labels = average_views(scores, row_labels, sample_ids[rows])
        results.append(classification_metrics(averaged, row_labels, class_names=class_names))
    return results


def prior_baseline(train_labels: Mapping[str, Tensor], val_labels: Mapping[str, Tensor], outputs: Mapping[str, int], sample_ids: np.ndarray, class_names=None) -> dict:
    """Metrics of ranking classes by their training frequency, the same for every sample."""
    scores = {}
    for name, n in outputs.items():
        labels = train_labels[name]
        prior = torch.bincount(labels[labels >= 0], minlength=n).float()[:n]
        scores[name] = prior.expand(len(val_labels[name]), n)
    scores, labels = average_views(scores, dict(val_labels), sample_ids)
    return classification_metrics(scores, labels, class_names=class_names)


def _selection_key(metrics: Mapping[str, Any], outputs: Sequence[str]) -> tuple[float, float, float]:
    def mean(metric: str) -> float:
        values = [metrics[f"{name}_{metric}"] for name in outputs]
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else -1.0

    return (mean("recall@5"), mean("recall@1"), mean("top1"))


def _flat(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "per_class"}


# ============================================================================================ protocol
def run_protocol(
    train: ClipSet,
    val: ClipSet,
    sources: Mapping[str, tuple[FeatureSource, FeatureSource]],
    cfg: ProbeConfig,
    embed_dim: int,
    num_heads: int,
) -> dict[str, Any]:
    """Choose hyper-parameters on held-out training videos, retrain the choice on all training data,
    evaluate once on validation. Returns the metrics dict (without paths) and the trained probes.

    sources: {encoder name: (training features, validation features)}. With several encoders (`--encoder
    auto`) the grid is searched on each, and the encoder whose best head of the first probe kind scores
    highest on the held-out training videos is the one retrained and evaluated; the others' validation
    features are never computed.
    """
    timing: dict[str, Any] = {}
    settings = head_grid(cfg)
    all_rows = np.arange(len(train))
    fit, holdout = split_by_video(train.video_ids, cfg.holdout_fraction, cfg.seed)
    if train.eval_rows is not None:  # several anticipation gaps: all train, the validation gap scores
        holdout = holdout[np.isin(holdout, train.eval_rows)]
    _log(
        f"hyper-parameters: {len(settings)} heads ({', '.join(cfg.probes)}; lr {list(cfg.lrs)} x wd "
        f"{list(cfg.weight_decays)}) on {len(fit)} items of {len(np.unique(train.video_ids[fit]))} training videos, "
        f"scored on {len(holdout)} items of {len(np.unique(train.video_ids[holdout]))} held-out training videos"
        + (f", for each of the {' and '.join(sources)} encoders" if len(sources) > 1 else "")
    )
    fit_outputs, fit_labels = train.label_space(fit)
    search_start = time.perf_counter()
    searches = {
        name: train_heads(settings, train_source, fit, fit_labels, fit_outputs, cfg, embed_dim, num_heads, "search")
        for name, (train_source, _) in sources.items()
    }
    timing["hp_search_s"] = time.perf_counter() - search_start
    grid_rows = []
    for name, search in searches.items():
        train_eval = sources[name][0].evaluation()
        held_out = evaluate_heads(search.probes, train_eval, holdout, fit_labels, train.sample_ids, cfg)
        for setting, metrics, diverged in zip(settings, held_out, search.diverged):
            key = [-1.0, -1.0, -1.0] if diverged else list(_selection_key(metrics, list(fit_outputs)))
            grid_rows.append({"encoder": name, "head": setting.name, "kind": setting.kind, "lr": setting.lr,
                              "weight_decay": setting.weight_decay, "diverged": diverged, "selection_key": key,
                              **_flat(metrics)})  # fmt: skip
    primary = cfg.probes[0]
    best_key = {
        name: max(tuple(r["selection_key"]) for r in grid_rows if r["encoder"] == name and r["kind"] == primary)
        for name in sources
    }
    encoder = max(sources, key=lambda name: best_key[name])  # first of equals wins
    if len(sources) > 1:
        _log("encoder chosen on held-out training videos: " + encoder + " ("
             + ", ".join(f"{name} {list(key)}" for name, key in best_key.items()) + ")")
    train_source, val_source = sources[encoder]
    search = searches[encoder]
    timing["train_features_s"] = train_source.extract_s
    timing["train_features_from"] = train_source.source
    timing["first_epoch_s"] = search.epoch_s[0]
    timing["first_epoch_features_s"] = search.features_s[0]
    timing["later_epoch_s"] = float(np.mean(search.epoch_s[1:])) if len(search.epoch_s) > 1 else None
    timing["epoch_s"] = search.epoch_s
    timing["heads_trained_at_once"] = len(settings)
    if timing["later_epoch_s"] and train_source.streaming:
        _log(f"epoch 1: {timing['first_epoch_s']:.1f} s, later epochs {timing['later_epoch_s']:.1f} s each: every epoch "
             "encodes its clips (--feature-store stream)")
    elif timing["later_epoch_s"]:
        timing["first_over_later"] = timing["first_epoch_s"] / max(timing["later_epoch_s"], 1e-9)
        _log(
            f"epoch 1: {timing['first_epoch_s']:.1f} s (of which features {timing['first_epoch_features_s']:.1f} s, "
            f"{train_source.source}); later epochs: {timing['later_epoch_s']:.2f} s each "
            f"({timing['first_over_later']:.0f}x faster)"
        )

    chosen: dict[str, HeadSetting] = {}
    encoder_rows = [r for r in grid_rows if r["encoder"] == encoder]
    for kind in cfg.probes:
        rows = [(r, s) for r, s in zip(encoder_rows, settings) if s.kind == kind]
        best_row, best = max(rows, key=lambda rs: tuple(rs[0]["selection_key"]))  # first of equals wins
        chosen[kind] = best
        best_row["chosen"] = True
        _log(f"chosen {kind}: lr {best.lr:g}, weight decay {best.weight_decay:g} (held-out key {best_row['selection_key']})")

    outputs, labels = train.label_space(all_rows)
    final_start = time.perf_counter()
    final = train_heads(list(chosen.values()), train_source, all_rows, labels, outputs, cfg, embed_dim, num_heads, "final")
    timing["final_train_s"] = time.perf_counter() - final_start

    eval_start = time.perf_counter()
    val_features = val_source.evaluation()
    val_rows = np.arange(len(val))
    _, val_labels = val.label_space(all_rows)
    per_kind = {}
    evaluated = evaluate_heads(final.probes, val_features, val_rows, val_labels, val.sample_ids, cfg, val.class_names)
    for (kind, setting), metrics in zip(chosen.items(), evaluated):
        per_kind[kind] = {"lr": setting.lr, "weight_decay": setting.weight_decay, **metrics}
    timing["val_features_s"] = val_source.extract_s  # (streamed: encoded during the evaluation above)
    timing["val_features_from"] = val_source.source
    timing["evaluation_s"] = time.perf_counter() - eval_start
    baseline = prior_baseline(labels, val_labels, outputs, val.sample_ids)
    return {
        "encoder": encoder,
        "encoder_selection": {name: list(key) for name, key in best_key.items()},
        "outputs": outputs,
        "per_kind": per_kind,
        "hp_search": grid_rows,
        "chosen": {kind: {"lr": s.lr, "weight_decay": s.weight_decay} for kind, s in chosen.items()},
        "baseline": _flat(baseline),
        "timing": timing,
        "probes": dict(zip(chosen, final.probes)),
        "num_fit": len(fit),
        "num_holdout": len(holdout),
        "num_train": len(np.unique(train.sample_ids)),
        "num_val": len(np.unique(val.sample_ids)),
    }


# ============================================================================================ outputs
def repeat_summary(per_kind_runs: Sequence[Mapping[str, Mapping[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    """{kind: {metric: {"mean", "std", "values"}}} over repeats of the protocol (scalar metrics only;
    std is the sample standard deviation), plus "seeds"."""
    out: dict[str, Any] = {"seeds": list(seeds)}
    for kind in per_kind_runs[0]:
        scalars = [k for k, v in per_kind_runs[0][kind].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out[kind] = {}
        for key in scalars:
            values = [float(run[kind][key]) for run in per_kind_runs]
            out[kind][key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": values}
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def plot_per_class_recall(per_class: Mapping[str, list[dict]], path: str | os.PathLike, k: int = 5, max_classes: int = 60) -> Path:
    """Bar chart of each output's per-class recall@k on validation (the `max_classes` most frequent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = [h for h, rows in per_class.items() if rows]
    if not heads:  # every validation sample is labelled -1 (a class never seen in training)
        fig, ax = plt.subplots(figsize=(10, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no validation sample has a class seen in training: no per-class recall",
                ha="center", va="center", fontsize=10)  # fmt: skip
    else:
        fig, axes = plt.subplots(len(heads), 1, figsize=(10, 3.2 * len(heads)), squeeze=False)
        for ax, head in zip(axes[:, 0], heads):
            rows = sorted(per_class[head], key=lambda r: -r["support"])[:max_classes]
            rows = sorted(rows, key=lambda r: r["class"])
            labels = [r.get("name", str(r["class"])) for r in rows]
            values = [r[f"recall@{k}"] for r in rows]
            ax.bar(range(len(rows)), values, color="tab:blue")
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(f"recall@{k}")
            mean = float(np.mean(values)) if values else float("nan")
            shown = "" if len(per_class[head]) <= max_classes else f", {max_classes} most frequent of {len(per_class[head])}"
            ax.set_title(f"{head}: per-class recall@{k} (mean {mean:.3f}{shown})", fontsize=9)
            ax.axhline(mean, color="tab:red", lw=0.8, ls="--")
    fig.tight_layout()
    buffer = io.BytesIO()  # rendered in memory, then written atomically: never a half-written PNG
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(buffer.getvalue(), path)


def _encoder_note(metrics: Mapping[str, Any]) -> str:
    """Which encoder was probed, and how it was chosen (`--encoder auto`)."""
    if metrics.get("encoder_requested", metrics["encoder"]) != "auto":
        return str(metrics["encoder"])
    selections = metrics.get("encoder_selection") or []
    compared = sorted({name for sel in selections for name in sel["held_out_key"]})
    if len(compared) < 2:
        if len(metrics.get("encoders_in_checkpoint") or ENCODER_ROLES) < 2:
            return f"{metrics['encoder']}; auto, but the checkpoint holds only the {metrics['encoder']} encoder"
        return f"{metrics['encoder']}; auto, but target and context weights are identical"
    chosen = [sel["chosen"] for sel in selections]
    by_seed = "" if len(set(chosen)) == 1 else " (per probe seed: " + ", ".join(
        f"{sel['seed']}: {sel['chosen']}" for sel in selections) + "; each seed is scored with the encoder it chose)"
    return f"{metrics['encoder']}, chosen by auto over {' and '.join(compared)} on held-out training videos{by_seed}"


def write_report(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """A markdown summary of a probe run."""
    outputs = list(metrics["outputs"])
    lines = [
        f"# Probe report: {metrics['task']}",
        "",
        f"- checkpoint: `{metrics['checkpoint']}` (encoder: {_encoder_note(metrics)})"
        + (f"; tokens after its first {metrics['encoder_blocks']} blocks" if metrics["config"].get("encoder_blocks") is not None else ""),
        f"- data: {metrics['num_train']} training / {metrics['num_val']} validation samples ("
        + ", ".join(f"{k}: `{v}`" for k, v in metrics["data"].items()) + ")",
        f"- clips: {metrics['config']['num_frames']} frames at {metrics['config']['fps']:g} fps, "
        f"{metrics['img_size']} px" + (f", ending {metrics['config']['anticipation_s']:g} s before the action start"
                                       + (f" (training clips: {metrics['config']['train_anticipation_s']} s)"
                                          if metrics["config"].get("train_anticipation_s") else "")
                                       if metrics["task"] == "anticipation" else f", {metrics['config']['num_clips']} clips per video"),
        f"- forecast tokens appended: {metrics['forecast']}",
        f"- loss: {metrics['config']['loss']}, {metrics['config']['epochs']} epochs, batch {metrics['config']['batch_size']}",
        "",
        "## Validation (hyper-parameters chosen on held-out training videos)",
        "",
        "| probe | lr | wd | " + " | ".join(f"{o} R@5 | {o} R@1 | {o} top1" for o in outputs) + " |",
        "|---" * (3 + 3 * len(outputs)) + "|",
    ]
    for kind, m in metrics["probes"].items():
        cells = [kind, f"{m['lr']:g}", f"{m['weight_decay']:g}"]
        cells += [_fmt(m[f"{o}_{s}"]) for o in outputs for s in ("recall@5", "recall@1", "top1")]
        lines.append("| " + " | ".join(cells) + " |")
    repeats = metrics.get("repeats")
    if repeats:
        lines += [
            "",
            f"Rows above: the first probe seed ({repeats['seeds'][0]}). Over the {len(repeats['seeds'])} probe seeds "
            f"{repeats['seeds']} (mean ± sample std; the headline keys of metrics.json hold these means):",
            "",
            "| probe | " + " | ".join(f"{o} R@5 | {o} R@1" for o in outputs) + " |",
            "|---" * (1 + 2 * len(outputs)) + "|",
        ]
        for kind in metrics["probes"]:
            cells = [kind] + [
                f"{repeats[kind][f'{o}_{s}']['mean']:.3f} ± {repeats[kind][f'{o}_{s}']['std']:.3f}"
                for o in outputs for s in ("recall@5", "recall@1")
            ]
            lines.append("| " + " | ".join(cells) + " |")
    b = metrics["baseline_train_prior"]
    lines.append("| class prior | - | - | " + " | ".join(_fmt(b[f"{o}_{s}"]) for o in outputs for s in ("recall@5", "recall@1", "top1")) + " |")
    lines += [
        "",
        "Mean-class recall@k averages over the classes present in validation; top1 counts every sample. "
        + (f"{int(metrics.get('action_num_unlabelled') or 0)} validation actions have a verb+noun pair never seen in "
           f"training ({int(metrics.get('action_num_unseen_classes') or 0)} such pairs): misses for top1, and "
           "classes with recall 0 in the class average." if metrics["task"] == "anticipation" else
           f"{int(metrics.get('label_num_unlabelled') or 0)} validation videos have a label no training video has "
           f"({int(metrics.get('label_num_unseen_classes') or 0)} such labels): misses for top1, and classes with "
           "recall 0 in the class average."),
        "",
        "## Hyper-parameter grid (held-out training videos)",
        "",
        "| encoder | head | key (mean R@5, mean R@1, mean top1) | chosen |",
        "|---|---|---|---|",
    ]
    for row in metrics["hp_search"]:
        key = ", ".join(f"{v:.3f}" for v in row["selection_key"])
        lines.append(f"| {row.get('encoder', metrics['encoder'])} | {row['head']} | {key} | {'yes' if row.get('chosen') else ''} |")
    t = metrics["timing"]
    lines += [
        "",
        "## Timing",
        "",
        f"- features: training {t['train_features_s']:.1f} s ({t['train_features_from']}), validation "
        f"{t['val_features_s']:.1f} s ({t['val_features_from']})",
        f"- first epoch {t['first_epoch_s']:.1f} s (features included), later epochs "
        f"{_fmt(t['later_epoch_s'])} s each, {t['heads_trained_at_once']} heads at once",
        f"- hyper-parameter search {t['hp_search_s']:.1f} s, final training {t['final_train_s']:.1f} s, total {t['total_s']:.1f} s",
        "",
        "![per-class recall](per_class_recall.png)",
        "",
    ]
    return atomic_write_bytes("\n".join(lines).encode(), path)


# ============================================================================================ CLI
def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `worldmodel probe`."""
    d = ProbeConfig()
    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", required=True,
                   help="pretraining checkpoint (.ckpt) or its run folder, an exported or imported model folder, a "
                        "V-JEPA 2 checkpoint, or 'random' for seeded random weights")
    g.add_argument("--config-from", default=None, metavar="CKPT",
                   help="with --checkpoint random: take the architecture from this model (anything --checkpoint "
                        "accepts; default: JEPAPretrainer() defaults)")
    g.add_argument("--encoder", choices=("auto", "target", "context"), default="auto",
                   help="which encoder to probe: the EMA target, the context encoder, or (default) auto: the one whose "
                        "probe scores best on held-out TRAINING videos, chosen like the learning rate")
    g.add_argument("--blocks", type=int, default=None, metavar="K",
                   help="probe the tokens after the encoder's first K blocks (then its final LayerNorm); "
                        "default: all blocks")
    g = parser.add_argument_group("data (no data options: the built-in corpus)")
    g.add_argument("--train-annotations", default=None, metavar="CSV", help="EPIC-KITCHENS-100 style training annotations")
    g.add_argument("--val-annotations", default=None, metavar="CSV", help="EPIC-KITCHENS-100 style validation annotations")
    g.add_argument("--videos", default=None, metavar="DIR", help="videos: DIR/<video_id>.<ext> or DIR/<participant>/videos/<video_id>.<ext>")
    g.add_argument("--train-manifest", default=None, help="classification instead: 'path label' manifest of training videos")
    g.add_argument("--val-manifest", default=None, help="classification: 'path label' manifest of validation videos")
    g.add_argument("--corpus", default=None, metavar="DIR",
                   help="a built-in corpus written by `worldmodel corpus --out DIR` (default: data/corpus, "
                        "written first when missing)")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder: metrics.json, report.md, per_class_recall.png")
    g = parser.add_argument_group("clips")
    g.add_argument("--num-frames", type=int, default=d.num_frames, help=f"context frames (default {d.num_frames})")
    g.add_argument("--fps", type=float, default=d.fps, help=f"context frame rate (default {d.fps:g})")
    g.add_argument("--anticipation-s", type=float, default=d.anticipation_s, help="gap between the context end and the action start")
    g.add_argument("--train-anticipation-s", type=float, nargs="+", default=None, metavar="S",
                   help="gaps of the training clips, one clip per gap and action (V-JEPA 2 jitters it in "
                        "[0.25, 1.75] s); must include --anticipation-s, which held-out scoring and validation use")
    g.add_argument("--img-size", type=int, default=None, help="crop size (default: the checkpoint's img_size)")
    g.add_argument("--resize", type=int, default=None, help="shorter side before the centre crop (default: just cover the crop)")
    g.add_argument("--num-clips", type=int, default=d.num_clips, help="classification: clips per video (averaged at evaluation)")
    g.add_argument("--forecast", action="store_true", help="append the forecast latents of the anticipation gap to the probe's tokens")
    g.add_argument("--forecast-tokens", choices=("all", "last"), default=d.forecast_tokens,
                   help="all forecast tubelets, or only the last one (the anticipated time, V-JEPA 2)")
    g.add_argument("--forecast-anchor", default=None, metavar="JSON",
                   help="with --forecast: append the anchored forecast, with this anchor "
                        "(`worldmodel forecast --fit-anchor`, fit for the same checkpoint)")
    g.add_argument("--augment", action="store_true", help="random resized crops of training clips (re-encoded every epoch: slow)")
    g = parser.add_argument_group("probe training")
    g.add_argument("--probe", nargs="+", choices=PROBE_KINDS, default=list(d.probes), help="probe kinds; the first gives the contract keys")
    g.add_argument("--probe-depth", type=int, default=d.probe_depth, help="attentive probe blocks incl. the cross-attention one (V-JEPA 2: 4)")
    g.add_argument("--probe-heads", type=int, default=None, help="attention heads of the attentive probe (default: the encoder's; V-JEPA 2: 16)")
    g.add_argument("--loss", choices=("ce", "focal"), default=d.loss, help="cross-entropy or sigmoid focal loss")
    g.add_argument("--lr", type=float, nargs="+", default=list(d.lrs), help="learning rates of the grid")
    g.add_argument("--wd", type=float, nargs="+", default=list(d.weight_decays), help="weight decays of the grid")
    g.add_argument("--epochs", type=int, default=d.epochs, help="training epochs of every head")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per step of the heads' training")
    g.add_argument("--holdout", type=float, default=d.holdout_fraction, help="share of training videos held out to choose the grid's head")
    g.add_argument("--seed", type=int, default=d.seed, help="probe seed (and the weights of --checkpoint random)")
    g.add_argument("--repeats", type=int, default=1,
                   help="run the protocol N times with probe seeds SEED..SEED+N-1 on the same features; "
                        "metrics.json's headline keys become the means, 'repeats' holds mean, std and values")
    g = parser.add_argument_group("compute")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, ... (default auto: cuda when available)")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (feature extraction)")
    g.add_argument("--head-threads", type=int, default=1, help="torch threads while training the probe heads (default 1)")
    g.add_argument("--workers", type=int, default=d.num_workers, help="decoding processes")
    g.add_argument("--extract-batch-size", type=int, default=d.extract_batch_size, help="clips per encoder batch")
    g.add_argument("--disk-cache", action="store_true", help="also keep features in OUT/feature_cache (reused by later runs)")
    g.add_argument("--feature-dtype", choices=tuple(FEATURE_DTYPES), default=d.feature_dtype,
                   help="how the frozen features are kept: float32 (default), or bfloat16 / float16, half the "
                        "memory or disk (the encoder's output rounded; heads still train in float32)")
    g.add_argument("--feature-store", choices=FEATURE_STORES, default=d.feature_store,
                   help="where the frozen features live while the heads train: memory, disk (memory-mapped files "
                        "in OUT, for features larger than memory), stream (nowhere: every epoch encodes its clips "
                        "again, as V-JEPA 2 does; for features larger than the disk) or auto (default: memory when "
                        "they need at most half of the memory available, else disk, else stream); their size is "
                        "checked before any encoding")


def _data_description(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """("anticipation" | "classification", paths); the built-in corpus when no data option is given."""
    anticipation = [args.train_annotations, args.val_annotations, args.videos]
    classification = [args.train_manifest, args.val_manifest]
    if any(anticipation) and any(classification):
        raise ValueError("give either --train-annotations/--val-annotations/--videos or --train-manifest/--val-manifest, not both")
    if any(classification):
        if not all(classification):
            raise ValueError("classification needs both --train-manifest and --val-manifest")
        return "classification", {"train_manifest": args.train_manifest, "val_manifest": args.val_manifest}
    if any(anticipation):
        if not all(anticipation):
            raise ValueError("anticipation needs --train-annotations, --val-annotations and --videos")
        return "anticipation", {"train_annotations": args.train_annotations, "val_annotations": args.val_annotations, "videos": args.videos}
    from worldmodel.data.corpus import ensure_corpus, is_complete_corpus

    if args.corpus is not None and not is_complete_corpus(args.corpus):
        # a folder named on purpose: writing the default corpus there would probe another corpus than meant
        raise ValueError(f"--corpus {args.corpus}: no complete corpus there; write one first with "
                         f"`worldmodel corpus --out {args.corpus}` (with the --seed / --videos you mean)")
    root = ensure_corpus(args.corpus or "data/corpus").parent
    return "anticipation", {
        "train_annotations": str(root / "annotations" / "train.csv"),
        "val_annotations": str(root / "annotations" / "val.csv"),
        "videos": str(root / "videos"),
    }


def _config_from_args(args: argparse.Namespace) -> ProbeConfig:
    device = str(resolve_device(args.device))  # checked before any work: a one-line error, not a traceback
    return ProbeConfig(
        num_frames=args.num_frames, fps=args.fps, anticipation_s=args.anticipation_s,
        train_anticipation_s=tuple(args.train_anticipation_s) if args.train_anticipation_s else None, img_size=args.img_size,
        resize=args.resize, num_clips=args.num_clips, probes=tuple(args.probe), probe_depth=args.probe_depth,
        probe_heads=args.probe_heads, loss=args.loss, lrs=tuple(args.lr), weight_decays=tuple(args.wd),
        epochs=args.epochs, batch_size=args.batch_size, holdout_fraction=args.holdout, seed=args.seed,
        forecast=args.forecast, forecast_tokens=args.forecast_tokens, forecast_anchor=args.forecast_anchor,
        encoder_blocks=args.blocks, augment=args.augment,
        extract_batch_size=args.extract_batch_size, num_workers=args.workers, device=device,
        head_threads=args.head_threads, feature_store=args.feature_store, feature_dtype=args.feature_dtype,
    )  # fmt: skip


class ProbeInputError(SystemExit):
    """`worldmodel probe` stopped by an unusable input: exit status 2 (as the other commands), with the
    one-line message (already printed to stderr) as its text."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_probe(args: argparse.Namespace) -> int:
    """`worldmodel probe`: see the module docstring. Returns 0; an unusable input (a file, an option, a
    device) prints one line to stderr and exits with status 2 (`ProbeInputError`)."""
    try:
        return _run_probe(args)
    except (OSError, ValueError, CheckpointError, VideoError, ForecastError) as err:
        message = f"worldmodel probe: error: {err}"
        print(message, file=sys.stderr, flush=True)
        raise ProbeInputError(message) from err


def _run_probe(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    problem = output_problem(args.out, "dir")
    if problem:  # found now, not after the features and the heads
        raise ValueError(f"--out: {problem}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _config_from_args(args)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.config_from is not None and args.checkpoint != "random":
        raise ValueError("--config-from only applies to --checkpoint random (a checkpoint brings its own config)")
    held = checkpoint_encoders(args.checkpoint)  # an exported folder may hold one encoder only
    if args.encoder != "auto" and args.encoder not in held:
        raise ValueError(
            f"--encoder {args.encoder}: {args.checkpoint} holds only the {held[0]} encoder (its config.json lists "
            f"\"encoders\": {json.dumps(list(held))}), so there is no {args.encoder} encoder to probe; probe the "
            f"{held[0]} one (--encoder {held[0]}, or auto), or export both encoders from the checkpoint it came from: "
            "`worldmodel export CKPT DIR --encoder both` (V-JEPA 2 weights: `worldmodel import-vjepa2 CKPT DIR --encoder both`)"
        )
    task, paths = _data_description(args)
    if cfg.forecast and task != "anticipation":
        raise ValueError("--forecast applies to action anticipation only")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    candidates = held if args.encoder == "auto" else (args.encoder,)
    if args.encoder == "auto" and len(held) == 1:
        _log(f"note: {args.checkpoint} holds only the {held[0]} encoder (it was written without --encoder both); "
             "auto probes that one")  # fmt: skip
    first = candidates[0]
    world_model = build_world_model(args.checkpoint, first, args.config_from, cfg.seed, cfg.img_size).to(cfg.device)
    modules = {"target": world_model.target_encoder, "context": world_model.context_encoder}
    enc_cfg = modules[first].cfg
    if cfg.encoder_blocks is not None:
        cut_encoder_blocks(modules.values(), cfg.encoder_blocks)
    img_size = cfg.img_size or world_model.config.get("img_size") or enc_cfg.img_size
    if not isinstance(img_size, int):
        img_size = int(img_size[0])
    if cfg.num_frames % enc_cfg.tubelet_size:
        raise ValueError(f"--num-frames {cfg.num_frames} is not a multiple of the checkpoint's tubelet size {enc_cfg.tubelet_size}")
    if img_size % enc_cfg.patch_size:
        raise ValueError(f"--img-size {img_size} is not a multiple of the checkpoint's patch size {enc_cfg.patch_size}")
    horizon = forecast_horizon(cfg.anticipation_s, cfg.fps, enc_cfg.tubelet_size) if cfg.forecast else None
    extra = [world_model.context_encoder, world_model.predictor] if cfg.forecast else []
    anchor = None
    if cfg.forecast_anchor is not None:
        anchor = ForecastAnchor.load(cfg.forecast_anchor)
        anchor.check(world_model, world_model.rollout_settings())  # the probe forecasts with the default rollout
        note = anchor.past_fit_note(horizon)
        if note:
            _log(f"note: {note}")
    model_keys = {name: {"weights": weights_hash([modules[name]] + extra), "encoder": name} for name in candidates}
    # the same extra modules follow each encoder in its hash, so equal hashes mean equal encoder weights
    if len(model_keys) == 2 and model_keys["target"]["weights"] == model_keys["context"]["weights"]:
        del model_keys["context"]  # one encoder (random weights, SIGReg, or a target that never moved): nothing to choose
    depth = f"depth {enc_cfg.depth}" + (f", probed after block {cfg.encoder_blocks}" if cfg.encoder_blocks is not None else "")
    _log(f"model: {world_model.source} ({' or '.join(model_keys)} encoder, width {enc_cfg.embed_dim}, {depth}); "
         f"clips {cfg.num_frames} frames at {cfg.fps:g} fps, {img_size} px" + (f"; forecast horizon {horizon} tubelets" if horizon else ""))  # fmt: skip

    vocab = None
    if task == "anticipation":
        train, val, vocab = anticipation_clip_sets(paths["train_annotations"], paths["val_annotations"], paths["videos"], cfg, img_size)
    else:
        train, val = classification_clip_sets(paths["train_manifest"], paths["val_manifest"], cfg, img_size)
    for clip_set in (train, val):  # every video opened (and every action placed in it) before any work
        clip_set.dataset.check()
    _log(f"{task}: {len(train)} training items, {len(val)} validation items")
    grid = modules[first].grid((1, 3, cfg.num_frames, img_size, img_size))
    need, what = feature_bytes(cfg, grid, enc_cfg.embed_dim, horizon, len(train), len(val), len(model_keys), args.repeats)
    # --disk-cache writes every feature set once more, to OUT/feature_cache on the same disk
    store, where = plan_feature_store(cfg.feature_store, need, out_dir, what, disk_copies=2 if args.disk_cache else 1)
    if store.kind == "stream" and args.disk_cache:
        raise ValueError(f"--disk-cache keeps the features on disk, and they do not fit there ({where}): drop --disk-cache"
                         if cfg.feature_store == "auto" else "--disk-cache keeps features; --feature-store stream keeps none")
    _log(where)
    cache = FeatureCache(out_dir / "feature_cache" if args.disk_cache else None)
    sources = {
        name: tuple(FeatureSource(clips, world_model, cache, key, cfg, horizon, name, anchor, store) for clips in (train, val))
        for name, key in model_keys.items()
    }
    num_heads = probe_num_heads(cfg, enc_cfg.num_heads)
    # repeats: the same frozen features, the protocol (held-out split, head init, batch order) reseeded
    seeds = [cfg.seed + i for i in range(args.repeats)]
    results = []
    for seed in seeds:
        if len(seeds) > 1:
            _log(f"repeat with probe seed {seed} ({len(results) + 1} of {len(seeds)})")
        results.append(run_protocol(train, val, sources, replace(cfg, seed=seed), enc_cfg.embed_dim, num_heads))
    result = results[0]
    train_source = sources[result["encoder"]][0]

    primary = cfg.probes[0]
    headline = result["per_kind"][primary]
    timing = result["timing"]
    timing["total_s"] = time.perf_counter() - started
    metrics: dict[str, Any] = {k: v for k, v in headline.items() if k not in ("per_class", "lr", "weight_decay")}
    if len(results) > 1:
        spread = repeat_summary([r["per_kind"] for r in results], seeds)
        metrics.update({k: v["mean"] for k, v in spread[primary].items()})  # headline: the mean over repeats
        metrics["repeats"] = spread
    metrics.update({
        "num_train": result["num_train"],
        "num_val": result["num_val"],
        "num_hp_fit": result["num_fit"],
        "num_hp_holdout": result["num_holdout"],
        "task": task,
        "probe": primary,
        "checkpoint": str(world_model.source),
        "encoder": result["encoder"],
        "encoder_requested": args.encoder,
        "encoders_in_checkpoint": list(held),
        "encoder_selection": [{"seed": seed, "chosen": r["encoder"], "held_out_key": r["encoder_selection"]}
                              for seed, r in zip(seeds, results)],
        "weights_sha256": model_keys[result["encoder"]]["weights"],
        "data": paths,
        "img_size": img_size,
        "probe_heads": num_heads,
        "probe_depth": cfg.probe_depth,
        "encoder_blocks": cfg.encoder_blocks if cfg.encoder_blocks is not None else enc_cfg.depth,
        "feature_store": {"kind": store.kind, "bytes_planned": 0 if store.kind == "stream" else need,
                          "dtype": cfg.feature_dtype},
        "forecast": {"horizon_tubelets": horizon, "tokens": cfg.forecast_tokens,
                     "anchor": None if anchor is None else {"file": cfg.forecast_anchor, "weights": anchor.weights,
                                                           "steps_past_fit": anchor.steps_past_fit(horizon)}}
        if horizon else False,
        "outputs": result["outputs"],
        "chosen": result["chosen"],
        "hyper_parameters": {"lr": result["chosen"][primary]["lr"], "weight_decay": result["chosen"][primary]["weight_decay"],
                             "selection": "held-out training videos: mean recall@5, then mean recall@1, then mean top1"},
        "probes": {kind: {k: v for k, v in m.items() if k != "per_class"} for kind, m in result["per_kind"].items()},
        "per_class_recall": headline["per_class"],
        "baseline_train_prior": result["baseline"],
        "hp_search": result["hp_search"],
        "timing": timing,
        "config": asdict(cfg),
    })  # fmt: skip
    atomic_write_bytes((json_text(metrics, indent=1) + "\n").encode(), out_dir / "metrics.json")
    write_report(metrics, out_dir / "report.md")
    plot_per_class_recall(headline["per_class"], out_dir / "per_class_recall.png")
    for kind, probe in result["probes"].items():
        atomic_torch_save(
            {"state_dict": probe.state_dict(), "kind": kind, "encoder": result["encoder"], "outputs": result["outputs"], "config": asdict(cfg),
             "chosen": result["chosen"][kind], "token_types": train_source.token_types()},
            out_dir / f"probe_{kind}.pt",
        )  # fmt: skip
    if vocab is not None:
        vocab.save(out_dir / "vocabulary.json")

    summary = ", ".join(  # mean-class recall (the EPIC-KITCHENS-100 metric), then plain accuracy
        f"{o} R@1 {_fmt(metrics[f'{o}_recall@1'])} R@5 {_fmt(metrics[f'{o}_recall@5'])} top1 {_fmt(metrics[f'{o}_top1'])}"
        for o in result["outputs"]
    )
    _log(f"{primary} probe on validation: {summary}")
    _log(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'report.md'}, {out_dir / 'per_class_recall.png'} ({timing['total_s']:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from worldmodel.cliutil import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="worldmodel probe", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    add_probe_arguments(parser)
    return run_probe(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
