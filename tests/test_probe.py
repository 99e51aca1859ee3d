"""The probe: anticipation window timing through its data path, the feature cache, the heads, the protocol
and `worldmodel probe` end to end on a tiny built-in corpus."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from conftest import frame_index
from worldmodel.checkpoints import atomic_torch_save
from worldmodel.featurestore import FeatureStore
from worldmodel.models.probe import AttentiveProbe, LinearProbe, PoolingCrossAttention
from worldmodel.probe import (
    FeatureCache,
    FeatureSource,
    ProbeConfig,
    add_probe_arguments,
    anticipation_clip_sets,
    build_world_model,
    cut_encoder_blocks,
    extract_features,
    feature_bytes,
    forecast_horizon,
    run_probe,
    sigmoid_focal_loss,
    split_by_video,
    weights_hash,
)

CONTRACT = [f"{head}_{m}" for head in ("verb", "noun", "action") for m in ("recall@5", "recall@1", "top1")]
HEADER = "video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"


# ---------------------------------------------------------------------------------------------- fixtures
def _tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    from worldmodel.pretrain import JEPAPretrainer

    torch.manual_seed(seed)
    model = JEPAPretrainer(
        img_size=32, num_frames=8, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
        pred_depth=1, pred_dim=32, pred_heads=2,
        masks=[{"type": "multiblock", "num_blocks": 2, "spatial_scale": [0.3, 0.3]}, {"type": "future"}],
    )  # fmt: skip
    atomic_torch_save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny built-in corpus: 8 videos (6 train / 2 val), 64 px, 8 fps (~70 train / ~25 val actions)."""
    from worldmodel.data.corpus import generate_corpus

    root = tmp_path_factory.mktemp("corpus") / "corpus"
    generate_corpus(root, num_videos=8, seed=0, size=64, fps=8.0, workers=1)
    return root


def _args(out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_probe_arguments(parser)
    return parser.parse_args(["--out", str(out), *extra])


class RecordingModel:
    """Stands in for the encoder only: records the uint8 clips the probe's data path delivers."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.videos: list[torch.Tensor] = []
        self.target_encoder = SimpleNamespace(grid=lambda shape: (shape[2] // 2, shape[3] // 16, shape[4] // 16))

    def encode(self, video: torch.Tensor, encoder: str | None = None) -> torch.Tensor:
        self.videos.append(video.clone())
        return video.float().mean(dim=(1, 3, 4))[:, :, None]  # (B, T, 1): one "token" per frame


# ---------------------------------------------------------------------------------------------- timing
def _one_video_clip_sets(tmp_path, make_video, starts, num_frames, video_fps, cfg):
    """One video P01_01 and train = val annotations with actions at `starts` (s): anticipation ClipSets."""
    make_video(tmp_path / "videos" / "P01_01.mp4", num_frames=num_frames, fps=video_fps, size=(64, 64))
    rows = "".join(f"P01_01,{s:.2f},{s + 0.5:.2f},{i % 3},{i % 2}\n" for i, s in enumerate(starts))
    (tmp_path / "train.csv").write_text(HEADER + rows)
    (tmp_path / "val.csv").write_text(HEADER + rows)
    return anticipation_clip_sets(str(tmp_path / "train.csv"), str(tmp_path / "val.csv"), str(tmp_path / "videos"), cfg, 32)


def test_context_frames_end_anticipation_s_before_the_action_start(tmp_path, make_video):
    """End to end through the probe's data path (annotations -> AnticipationDataset -> transform ->
    batches -> encoder input): the last context frame is the last one at or before start - anticipation_s."""
    video_fps = 10.0
    starts = [2.0, 3.05, 0.3, 5.5, 6.95]
    cfg = ProbeConfig(num_frames=4, fps=5.0, anticipation_s=1.0, num_workers=1, extract_batch_size=2)
    train, _, _ = _one_video_clip_sets(tmp_path, make_video, starts, 70, video_fps, cfg)

    model = RecordingModel()
    features = extract_features(model, train.dataset, list(range(len(starts))), batch_size=2, num_workers=1)
    videos = torch.cat(model.videos)  # (N, C, T, H, W) uint8, what the encoder was given
    assert videos.shape == (len(starts), 3, 4, 32, 32) and videos.dtype == torch.uint8
    assert features.tokens.shape == (len(starts), 4, 1)
    step = round(video_fps / cfg.fps)  # 2 source frames per context frame
    for i, start in enumerate(starts):
        seen = [frame_index(rearrange(videos[i, :, t], "c h w -> h w c")) for t in range(4)]
        last = max(0, math.floor((start - cfg.anticipation_s) * video_fps + 1e-9))
        assert seen[-1] == last, f"action at {start} s: context ends at frame {seen[-1]}, expected {last}"
        # the last frame is at or before start - anticipation_s, and the next frame would be after it
        assert seen[-1] / video_fps <= max(0.0, start - cfg.anticipation_s) + 1e-9
        assert (seen[-1] + 1) / video_fps > start - cfg.anticipation_s
        assert seen == [max(0, last - step * (3 - t)) for t in range(4)]  # 5 fps, first frame repeated before 0


def test_training_gaps_give_one_clip_per_gap_and_score_at_the_validation_gap(tmp_path, make_video):
    video_fps = 10.0
    starts = [2.0, 3.05, 4.5, 5.5, 6.95]
    gaps = (0.5, 1.0, 1.5)
    cfg = ProbeConfig(num_frames=4, fps=5.0, anticipation_s=1.0, train_anticipation_s=gaps, num_workers=0, extract_batch_size=4)
    train, val, _ = _one_video_clip_sets(tmp_path, make_video, starts, 80, video_fps, cfg)
    n = len(starts)
    assert (len(train), len(val)) == (3 * n, n)
    assert train.sample_ids.tolist() == list(range(n)) * 3  # the gaps of one action are one sample
    assert train.eval_rows.tolist() == list(range(n, 2 * n)) and val.eval_rows is None  # gap 1.0 scores
    model = RecordingModel()
    extract_features(model, train.dataset, list(range(3 * n)), batch_size=4, num_workers=0)
    videos = torch.cat(model.videos)
    for g, gap in enumerate(gaps):
        for i, start in enumerate(starts):
            last = frame_index(rearrange(videos[g * n + i, :, -1], "c h w -> h w c"))
            assert last == max(0, math.floor((start - gap) * video_fps + 1e-9)), (gap, start)
    _, labels = train.label_space(np.arange(3 * n))
    assert labels["verb"].tolist() == [i % 3 for i in range(n)] * 3
    with pytest.raises(ValueError, match="must include anticipation_s"):
        ProbeConfig(anticipation_s=1.0, train_anticipation_s=(0.5, 1.5))
    with pytest.raises(ValueError, match="a single training gap"):
        ProbeConfig(train_anticipation_s=(0.5, 1.0), forecast=True)


def test_forecast_horizon_covers_the_anticipation_gap():
    assert forecast_horizon(1.0, fps=4.0, tubelet_size=2) == 2  # 4 frames = 2 tubelets
    assert forecast_horizon(1.0, fps=8.0, tubelet_size=2) == 4  # V-JEPA 2: 1 s at 8 fps
    assert forecast_horizon(0.75, fps=4.0, tubelet_size=2) == 2  # 3 frames need 2 tubelets
    assert forecast_horizon(0.0, fps=4.0, tubelet_size=2) == 1


# ---------------------------------------------------------------------------------------------- labels
def test_unseen_pairs_are_minus_one_and_holdout_labels_follow_the_fitted_vocabulary(tmp_path, make_video):
    for vid in ("P01_01", "P02_01", "P03_01"):
        make_video(tmp_path / "videos" / f"{vid}.mp4", num_frames=40, fps=8.0, size=(32, 32))
    train_rows = "P01_01,1.0,1.5,0,0\nP01_01,2.0,2.5,1,1\nP02_01,1.0,1.5,0,1\nP02_01,2.0,2.5,2,2\n"
    (tmp_path / "train.csv").write_text(HEADER + train_rows)
    (tmp_path / "val.csv").write_text(HEADER + "P03_01,1.0,1.5,0,0\nP03_01,2.0,2.5,1,0\n")  # (1, 0) unseen
    cfg = ProbeConfig(num_frames=2, fps=4.0)
    train, val, vocab = anticipation_clip_sets(str(tmp_path / "train.csv"), str(tmp_path / "val.csv"), str(tmp_path / "videos"), cfg, 32)
    assert vocab.actions == [(0, 0), (0, 1), (1, 1), (2, 2)]
    outputs, labels = val.label_space(np.arange(2))
    assert outputs == {"verb": 3, "noun": 3, "action": 4}
    assert labels["action"].tolist() == [0, -1]
    assert labels["verb"].tolist() == [0, 1] and labels["noun"].tolist() == [0, 0]
    # the unseen row's pair (1, 0) goes along, as verb * num_nouns + noun, for the class average
    assert labels["action:unseen"].tolist() == [-1, 1 * 3 + 0]
    # fitting on P01_01 only: P02_01's pairs are unseen there, exactly as validation pairs are
    outputs, labels = train.label_space(np.array([0, 1]))
    assert outputs["action"] == 2 and outputs["verb"] == 3
    assert labels["action"].tolist() == [0, 1, -1, -1]


def test_split_by_video_keeps_each_video_on_one_side():
    video_ids = np.array(["a", "a", "b", "c", "c", "c", "d", "e", "e", "f"])
    fit, held = split_by_video(video_ids, 0.34, seed=3)
    assert len(set(video_ids[fit]) & set(video_ids[held])) == 0
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(video_ids)))
    assert len(set(video_ids[held])) == 2  # 34% of 6 videos
    assert np.array_equal(split_by_video(video_ids, 0.34, seed=3)[1], held)
    with pytest.raises(ValueError, match="at least two"):
        split_by_video(np.array(["a", "a"]), 0.2)


# ---------------------------------------------------------------------------------------------- heads
def test_pooling_cross_attention_equals_standard_attention():
    torch.manual_seed(0)
    attn = PoolingCrossAttention(48, num_heads=4)
    torch.nn.init.normal_(attn.q.bias)
    torch.nn.init.normal_(attn.kv.bias)
    queries, tokens = torch.randn(3, 48), torch.randn(5, 7, 48)
    valid = torch.rand(5, 7) > 0.3
    valid[0] = False  # a sample with only padding attends to everything, as the encoder does
    q = rearrange(attn.q(queries), "q (h e) -> 1 h q e", h=4).expand(5, -1, -1, -1)
    k, v = (rearrange(t, "b n (h e) -> b h n e", h=4) for t in attn.kv(tokens).chunk(2, dim=-1))
    mask = (valid | ~valid.any(dim=1, keepdim=True))[:, None, None, :]
    expected = rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "b h q e -> b q (h e)")
    assert torch.allclose(attn(queries, tokens, valid), expected, atol=1e-5)


def test_probes_give_one_logit_vector_per_output_and_use_token_types():
    outputs = {"verb": 5, "noun": 7, "action": 11}
    tokens, types = torch.randn(4, 10, 48), torch.tensor([0] * 8 + [1] * 2)
    for probe in (AttentiveProbe(48, outputs, num_heads=4, depth=2, num_token_types=2), LinearProbe(48, outputs, num_token_types=2)):
        logits = probe(tokens, types)
        assert {k: tuple(v.shape) for k, v in logits.items()} == {"verb": (4, 5), "noun": (4, 7), "action": (4, 11)}
    linear = LinearProbe(48, outputs, num_token_types=2)
    changed = tokens.clone()
    changed[:, 8:] += 1.0  # forecast tokens are pooled apart from the observed ones
    assert not torch.allclose(linear(tokens, types)["verb"], linear(changed, types)["verb"])


def test_sigmoid_focal_loss_matches_its_definition():
    logits, labels = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([0])
    p = torch.sigmoid(logits[0])
    expected = 0.25 * (1 - p[0]) ** 2 * -torch.log(p[0])  # the true class
    expected += sum(0.75 * p[c] ** 2 * -torch.log(1 - p[c]) for c in (1, 2))  # the others
    assert float(sigmoid_focal_loss(logits, labels)) == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------------------------------------- features
def test_feature_cache_returns_exactly_the_uncached_features(tmp_path, corpus, tiny_ckpt):
    cfg = ProbeConfig(num_frames=4, fps=4.0, anticipation_s=1.0, num_workers=0, extract_batch_size=8)
    train, _, _ = anticipation_clip_sets(
        str(corpus / "annotations" / "train.csv"), str(corpus / "annotations" / "val.csv"), str(corpus / "videos"), cfg, 32
    )
    model = build_world_model(str(tiny_ckpt))
    key = {"weights": weights_hash([model.target_encoder]), "encoder": "target"}
    horizon = forecast_horizon(cfg.anticipation_s, cfg.fps, 2)
    uncached = extract_features(model, train.dataset, list(range(len(train))), 8, 0, horizon=horizon)
    n_tokens = 2 * 2 * 2  # (t, h, w) = (2, 2, 2) observed, then 2 forecast tubelets of 2 x 2
    assert uncached.tokens.shape == (len(train), n_tokens + horizon * 4, 48)
    # the size planned before any encoding is the size the features take
    assert feature_bytes(cfg, (2, 2, 2), 48, horizon, len(train), 0, 1)[0] == uncached.tokens.numel() * 4
    # --encoder auto with --repeats: each repeat may choose another encoder, whose validation features stay too
    one, _ = feature_bytes(cfg, (2, 2, 2), 48, horizon, 0, len(train), 2, repeats=1)
    assert feature_bytes(cfg, (2, 2, 2), 48, horizon, 0, len(train), 2, repeats=3)[0] == 2 * one
    mapped = extract_features(model, train.dataset, list(range(len(train))), 8, 0, horizon=horizon,
                              store=FeatureStore(tmp_path / "mapped"))
    assert torch.equal(mapped.tokens, uncached.tokens)
    assert uncached.token_types.tolist() == [0] * n_tokens + [1] * horizon * 4
    # half-precision storage: the float32 features rounded, in half the planned bytes, under another cache key
    for name in ("bfloat16", "float16"):
        half_cfg = dataclasses.replace(cfg, feature_dtype=name)
        half = extract_features(model, train.dataset, list(range(len(train))), 8, 0, horizon=horizon,
                                store=FeatureStore(tmp_path / "mapped"), dtype=half_cfg.token_dtype)
        assert half.tokens.dtype == half_cfg.token_dtype and torch.equal(half.tokens, uncached.tokens.to(half.tokens.dtype))
        assert feature_bytes(half_cfg, (2, 2, 2), 48, horizon, len(train), 0, 1)[0] == uncached.tokens.numel() * 2
        assert FeatureSource(train, model, FeatureCache(), key, half_cfg, horizon).key != \
            FeatureSource(train, model, FeatureCache(), key, cfg, horizon).key
    with pytest.raises(ValueError, match="feature_dtype must be one of"):
        ProbeConfig(feature_dtype="int8")

    first = FeatureSource(train, model, FeatureCache(tmp_path / "cache"), key, cfg, horizon)
    computed = first.evaluation()
    assert first.source == "computed" and first.extract_s > 0
    assert first.evaluation() is computed  # the memory cache: no second extraction
    assert torch.equal(computed.tokens, uncached.tokens)

    again = FeatureSource(train, model, FeatureCache(tmp_path / "cache"), key, cfg, horizon)
    loaded = again.evaluation()
    assert again.source == "disk" and again.extract_s == 0.0
    assert torch.equal(loaded.tokens, uncached.tokens) and torch.equal(loaded.token_types, uncached.token_types)
    assert torch.equal(again.epoch(3, np.arange(5)).tokens, uncached.tokens)  # not augmented: every epoch the same
    # streamed (--feature-store stream): nothing stored, each chunk encoded when read, the same tokens
    streamed = FeatureSource(train, model, FeatureCache(), key, cfg, horizon, store=FeatureStore(stream=True))
    features = streamed.epoch(0, np.arange(len(train)))
    assert features.tokens is None and torch.equal(features.token_types, uncached.token_types)
    chunks = [torch.tensor([5, 0, 3]), torch.tensor([len(train) - 1]), torch.tensor([2, 2]),
              torch.arange(min(len(train), 19))]  # more than --extract-batch-size (8): encoded 8 at a time
    for chunk, tokens in zip(chunks, features.batches(chunks), strict=True):
        torch.testing.assert_close(tokens, uncached.tokens[chunk], rtol=1e-5, atol=1e-5)
    assert streamed.extract_s > 0
    # anything the features depend on changes the key
    other_model = FeatureSource(train, model, FeatureCache(), {**key, "weights": "0" * 64}, cfg, horizon)
    no_forecast = FeatureSource(train, model, FeatureCache(), key, cfg, None)
    anchored = FeatureSource(train, model, FeatureCache(), key, cfg, horizon, anchor=_anchor_for(model))
    assert len({first.key, other_model.key, no_forecast.key, anchored.key}) == 4


def _anchor_for(model, weights=((0.5, 0.25, 0.25), (0.2, 0.3, 0.5)), sha=None):
    from worldmodel.forecast import ForecastAnchor

    return ForecastAnchor(weights=[list(w) for w in weights], model_sha256=sha or model.weights_sha256(),
                          rollout=model.rollout_settings(), fit={"checkpoint": "by hand"})


def test_anchored_forecast_tokens_are_the_anchor_mix_of_the_context(corpus, tiny_ckpt):
    from worldmodel.forecast import anchor_mix

    cfg = ProbeConfig(num_frames=4, fps=4.0, anticipation_s=1.0, num_workers=0, extract_batch_size=8)
    train, _, _ = anticipation_clip_sets(
        str(corpus / "annotations" / "train.csv"), str(corpus / "annotations" / "val.csv"), str(corpus / "videos"), cfg, 32
    )
    model = build_world_model(str(tiny_ckpt))
    anchor = _anchor_for(model)
    horizon, keys = forecast_horizon(cfg.anticipation_s, cfg.fps, 2), list(range(6))
    plain = extract_features(model, train.dataset, keys, 8, 0, horizon=horizon)
    anchored = extract_features(model, train.dataset, keys, 8, 0, horizon=horizon, anchor=anchor)
    n_tokens = 2 * 2 * 2
    assert torch.equal(anchored.tokens[:, :n_tokens], plain.tokens[:, :n_tokens])  # observed tokens unchanged
    video = torch.stack([train.dataset[k]["video"] for k in keys])
    context = model.target_steps(model._as_input(video))  # (B, 2, 4, D): the context frames' own targets
    pred = rearrange(plain.tokens[:, n_tokens:], "b (t s) d -> b t s d", s=4)
    expected = anchor_mix(torch.tensor(anchor.weights), pred, context)
    torch.testing.assert_close(rearrange(anchored.tokens[:, n_tokens:], "b (t s) d -> b t s d", s=4), expected)
    assert not torch.allclose(expected, pred)


def test_augmented_training_clips_are_reencoded_every_epoch(corpus, tiny_ckpt):
    cfg = ProbeConfig(num_frames=4, fps=4.0, augment=True, num_workers=0, extract_batch_size=8)
    train, _, _ = anticipation_clip_sets(
        str(corpus / "annotations" / "train.csv"), str(corpus / "annotations" / "val.csv"), str(corpus / "videos"), cfg, 32
    )
    model = build_world_model(str(tiny_ckpt))
    source = FeatureSource(train, model, FeatureCache(), {"weights": "x"}, cfg, None)
    rows = np.array([0, 3, 5])
    first, second = source.epoch(0, rows).tokens, source.epoch(1, rows).tokens
    assert not torch.equal(first[rows], second[rows])  # new crops, new features
    assert torch.equal(first[rows], source.epoch(0, rows).tokens[rows])  # a pure function of (seed, epoch, item)
    assert not torch.equal(first[rows], source.evaluation().tokens[rows])  # evaluation: centre crops
    assert float(first[1].abs().sum()) == 0.0  # rows not asked for are not encoded
    # streamed: the same augmented clips of each epoch, encoded when their batch is read
    streamed = FeatureSource(train, model, FeatureCache(), {"weights": "x"}, cfg, None, store=FeatureStore(stream=True))
    chunk = torch.as_tensor(rows)
    for epoch, stored in ((0, first), (1, second)):
        (tokens,) = streamed.epoch(epoch, rows).batches([chunk])
        torch.testing.assert_close(tokens, stored[chunk], rtol=1e-5, atol=1e-5)


def test_random_weights_are_seeded_and_default_to_the_tiny_architecture(tiny_ckpt):
    from worldmodel.pretrain import JEPAPretrainer

    default = build_world_model("random", seed=0)
    reference = JEPAPretrainer()
    assert default.target_encoder.cfg.embed_dim == reference.encoder.cfg.embed_dim
    assert default.target_encoder.cfg.depth == reference.encoder.cfg.depth
    assert default.config["img_size"] == reference.hparams.img_size
    same = build_world_model("random", config_from=str(tiny_ckpt), seed=1)
    assert same.target_encoder.cfg.embed_dim == 48 and same.target_encoder.cfg.depth == 1
    again = build_world_model("random", config_from=str(tiny_ckpt), seed=1)
    other = build_world_model("random", config_from=str(tiny_ckpt), seed=2)
    trained = build_world_model(str(tiny_ckpt))
    hashes = [weights_hash([m.target_encoder]) for m in (same, again, other, trained)]
    assert hashes[0] == hashes[1] and len(set(hashes)) == 3


# ---------------------------------------------------------------------------------------------- end to end
def _kitchen_manifests(corpus: Path) -> tuple[Path, Path]:
    """'path label' manifests of the corpus videos labelled with their kitchen (participant P01..P08 -> 0..7):
    for every kitchen with several videos, its last video goes to validation, the others to training."""
    videos = [line.split(",")[0] for line in (corpus / "manifest.csv").read_text().split()]
    by_kitchen: dict[str, list[str]] = {}
    for video in videos:
        by_kitchen.setdefault(Path(video).stem.split("_")[0], []).append(video)
    train, val = [], []
    for kitchen, paths in sorted(by_kitchen.items()):
        label = int(kitchen[1:]) - 1
        train += [f"{p} {label}" for p in (paths[:-1] or paths)]
        val += [f"{paths[-1]} {label}"] if len(paths) > 1 else []
    (corpus / "kitchen_train.txt").write_text("\n".join(train) + "\n")
    (corpus / "kitchen_val.txt").write_text("\n".join(val) + "\n")
    return corpus / "kitchen_train.txt", corpus / "kitchen_val.txt"


def test_probe_learns_better_than_chance_on_the_built_in_corpus(tmp_path, corpus, tiny_ckpt):
    """A random-weight encoder cannot anticipate actions from ~70 training actions (measured: at chance),
    so the probe learns what random features do show: which of the 8 kitchens a video comes from, on
    videos it has never seen (several clips per video, their scores averaged)."""
    train_manifest, val_manifest = _kitchen_manifests(corpus)
    num_val = len(val_manifest.read_text().split("\n")) - 1
    assert num_val >= 2
    out = tmp_path / "kitchen"
    args = _args(
        out, "--checkpoint", str(tiny_ckpt), "--train-manifest", str(train_manifest), "--val-manifest",
        str(val_manifest), "--num-clips", "4", "--num-frames", "4", "--epochs", "10", "--workers", "0",
    )  # fmt: skip
    assert run_probe(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_val"] == num_val and metrics["outputs"] == {"label": 8}
    # chance is 1/8; the class prior of the training videos gets at most one kitchen right
    assert metrics["label_top1"] >= 0.6 > metrics["baseline_train_prior"]["label_top1"]
    assert metrics["label_recall@1"] >= 0.6
    # the hyper-parameters were chosen on held-out TRAINING videos only
    assert metrics["num_hp_fit"] + metrics["num_hp_holdout"] == 4 * (len(train_manifest.read_text().split()) // 2)
    assert sum(row.get("chosen", False) for row in metrics["hp_search"] if row["kind"] == "attentive") == 1


def _only_atomic_writes(monkeypatch, out: Path) -> list[str]:
    """Refuse plain writes (`Path.write_text`, `savefig` to a file) into `out`, and record the names of the
    files written through `atomic_write_bytes` (the list returned)."""
    import worldmodel.checkpoints
    import worldmodel.probe
    from matplotlib.figure import Figure

    written: list[str] = []
    atomic, write_text, savefig = worldmodel.checkpoints.atomic_write_bytes, Path.write_text, Figure.savefig

    def recording(data: bytes, path):
        written.append(Path(path).name)
        return atomic(data, path)

    def write_text_outside(self, *args, **kwargs):
        assert out not in Path(self).parents, f"{self}: written in place, not atomically"
        return write_text(self, *args, **kwargs)

    def savefig_to_memory(self, target, *args, **kwargs):
        assert not isinstance(target, (str, Path)), f"{target}: a figure saved in place, not atomically"
        return savefig(self, target, *args, **kwargs)

    monkeypatch.setattr(worldmodel.checkpoints, "atomic_write_bytes", recording)
    monkeypatch.setattr(worldmodel.probe, "atomic_write_bytes", recording)
    monkeypatch.setattr(Path, "write_text", write_text_outside)
    monkeypatch.setattr(Figure, "savefig", savefig_to_memory)
    return written


def test_random_checkpoint_end_to_end_writes_the_contract(tmp_path, corpus, tiny_ckpt, monkeypatch):
    out = tmp_path / "random"
    written = _only_atomic_writes(monkeypatch, out)
    args = _args(
        out, "--checkpoint", "random", "--config-from", str(tiny_ckpt), "--train-annotations",
        str(corpus / "annotations" / "train.csv"), "--val-annotations", str(corpus / "annotations" / "val.csv"),
        "--videos", str(corpus / "videos"), "--num-frames", "4", "--lr", "1e-3", "--wd", "0.01", "--epochs", "3",
        "--workers", "0", "--forecast", "--disk-cache",
    )  # fmt: skip
    assert run_probe(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in CONTRACT:
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    num_train = len((corpus / "annotations" / "train.csv").read_text().strip().splitlines()) - 1
    num_val = len((corpus / "annotations" / "val.csv").read_text().strip().splitlines()) - 1
    assert (metrics["num_train"], metrics["num_val"]) == (num_train, num_val)
    assert metrics["checkpoint"].startswith("random(seed=0")
    # random weights: target and context encoders are one set of weights, so auto has nothing to choose
    assert metrics["encoder"] == "target" and metrics["encoder_requested"] == "auto"
    assert list(metrics["encoder_selection"][0]["held_out_key"]) == ["target"]
    assert metrics["probe"] == "attentive" and set(metrics["probes"]) == {"attentive", "linear"}
    assert metrics["forecast"] == {"horizon_tubelets": 2, "tokens": "all", "anchor": None}
    timing = metrics["timing"]
    assert timing["first_epoch_s"] >= timing["train_features_s"] > 0
    assert timing["later_epoch_s"] < timing["first_epoch_s"]
    assert (out / "report.md").read_text().startswith("# Probe report")
    assert (out / "per_class_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "vocabulary.json").is_file() and (out / "probe_attentive.pt").is_file()
    # every output is written atomically (readers see the old file or the whole new one)
    outputs = {"metrics.json", "report.md", "per_class_recall.png", "vocabulary.json", "probe_attentive.pt", "probe_linear.pt"}
    assert outputs <= set(written)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    # a second run reads the features back from the disk cache
    assert run_probe(args) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["timing"]["train_features_from"] == "disk" and again["timing"]["train_features_s"] == 0.0
    assert again["action_recall@5"] == metrics["action_recall@5"]


def test_probe_with_a_forecast_anchor_records_it_and_refuses_another_models(tmp_path, corpus, tiny_ckpt):
    model = build_world_model(str(tiny_ckpt))
    good, wrong = tmp_path / "anchor.json", tmp_path / "wrong.json"
    _anchor_for(model).save(good)
    _anchor_for(model, sha="0" * 64).save(wrong)
    data = ["--train-annotations", str(corpus / "annotations" / "train.csv"), "--val-annotations",
            str(corpus / "annotations" / "val.csv"), "--videos", str(corpus / "videos"), "--num-frames", "4",
            "--lr", "1e-3", "--wd", "0.01", "--epochs", "2", "--workers", "0", "--encoder", "target",
            "--probe", "linear"]  # fmt: skip
    out = tmp_path / "anchored"
    assert run_probe(_args(out, "--checkpoint", str(tiny_ckpt), *data, "--forecast", "--forecast-anchor", str(good))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forecast"]["anchor"] == {"file": str(good), "weights": [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]],
                                             "steps_past_fit": []}
    with pytest.raises(SystemExit, match="fit for another model"):
        run_probe(_args(tmp_path / "w", "--checkpoint", str(tiny_ckpt), *data, "--forecast", "--forecast-anchor", str(wrong)))
    with pytest.raises(SystemExit, match="use it with forecast"):
        run_probe(_args(tmp_path / "n", "--checkpoint", str(tiny_ckpt), *data, "--forecast-anchor", str(good)))


def test_classification_probe_averages_clips_per_video(tmp_path, corpus, tiny_ckpt, capsys):
    out = tmp_path / "cls"
    args_list = [
        str(out), "--checkpoint", str(tiny_ckpt), "--train-manifest", str(corpus / "manifest_train.csv"),
        "--val-manifest", str(corpus / "manifest_val.csv"), "--num-clips", "3", "--num-frames", "4",
        "--probe", "linear", "--lr", "1e-3", "--wd", "0.01", "--epochs", "2", "--workers", "0",
    ]  # fmt: skip
    args = _args(*args_list)
    assert run_probe(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "classification"
    assert (metrics["num_train"], metrics["num_val"]) == (6, 2)  # videos, not clips
    assert "shorter than one clip" not in capsys.readouterr().out
    # a clip longer than some videos: their last frame repeats, and the probe says so
    assert run_probe(_args(out, *args_list[1:], "--num-frames", "140", "--fps", "4")) == 0  # 35 s; the videos: 33
    assert "note: 2 of 2 videos are shorter than one clip (140 frames)" in capsys.readouterr().out
    assert {"label_recall@5", "label_recall@1", "label_top1"} <= set(metrics)


def test_an_unusable_validation_video_or_action_stops_the_probe_before_any_feature_work(tmp_path, corpus, tiny_ckpt, capsys):
    """Found up front with a one-line error naming the file: not after the training features and the
    whole hyper-parameter search, as a DataLoader worker's traceback."""
    common = list(_quick_linear_probe_args(tiny_ckpt, corpus))
    val_manifest = Path(common[common.index("--val-manifest") + 1])
    (tmp_path / "cut.mp4").write_bytes(b"")
    bad_val = corpus / "bad_val.txt"  # beside the other manifests: their paths are relative to it
    bad_val.write_text(val_manifest.read_text() + f"{tmp_path / 'cut.mp4'} {val_manifest.read_text().split()[1]}\n")
    common[common.index("--val-manifest") + 1] = str(bad_val)
    with pytest.raises(SystemExit, match=r"cut\.mp4: empty: the file has zero bytes"):
        run_probe(_args(tmp_path / "cls", *common))
    said = capsys.readouterr()
    assert "training items" not in said.out + said.err and not (tmp_path / "cls" / "metrics.json").exists()
    bad_val.write_text(val_manifest.read_text() + f"{tmp_path / 'gone.mp4'} {val_manifest.read_text().split()[1]}\n")
    with pytest.raises(SystemExit, match=r"gone\.mp4: missing: no such file"):  # the reason code, not an OSError's text
        run_probe(_args(tmp_path / "cls", *common))
    capsys.readouterr()
    # anticipation: an action after its video's end names the annotation line
    ann = corpus / "annotations"
    late = tmp_path / "late.csv"
    lines = (ann / "val.csv").read_text().splitlines()
    video_id = lines[1].split(",")[2]
    late.write_text("\n".join(lines[:2]) + f"\nlate_0,{video_id[:3]},{video_id},00:10:00.00,00:10:00.00,00:10:01.00,"
                    + ",".join(lines[1].split(",")[6:]) + "\n")  # fmt: skip
    with pytest.raises(SystemExit, match=r"late\.csv:3: action late_0 starts at 600\.000 s, after the end of video"):
        run_probe(_args(tmp_path / "ant", "--checkpoint", str(tiny_ckpt), "--train-annotations", str(ann / "train.csv"),
                        "--val-annotations", str(late), "--videos", str(corpus / "videos"), "--workers", "0"))  # fmt: skip
    said = capsys.readouterr()
    assert "training items" not in said.out + said.err


def test_bad_inputs_exit_with_a_message(tmp_path, tiny_ckpt):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match="--out: .*afile is a file, not a folder"):
        run_probe(_args(tmp_path / "afile", "--checkpoint", str(tiny_ckpt), "--corpus", str(tmp_path / "none")))
    for option in ("--threads", "--head-threads", "--probe-heads"):
        with pytest.raises(SystemExit, match=f"{option} must be >= 1, got 0"):
            run_probe(_args(tmp_path / "o", "--checkpoint", str(tiny_ckpt), option, "0", "--corpus", str(tmp_path / "none")))
    with pytest.raises(SystemExit, match="--train-annotations, --val-annotations and --videos"):
        run_probe(_args(tmp_path, "--checkpoint", str(tiny_ckpt), "--videos", str(tmp_path)))
    with pytest.raises(SystemExit, match="config-from only applies"):
        run_probe(_args(tmp_path, "--checkpoint", str(tiny_ckpt), "--config-from", str(tiny_ckpt), "--corpus", str(tmp_path / "none")))
    # a --corpus folder named on purpose is not filled with the default corpus (another draw than meant)
    with pytest.raises(SystemExit, match=r"--corpus .*none: no complete corpus there; write one first with `worldmodel corpus --out"):
        run_probe(_args(tmp_path / "o2", "--checkpoint", str(tiny_ckpt), "--corpus", str(tmp_path / "none")))
    assert not (tmp_path / "none").exists()


def _quick_linear_probe_args(checkpoint: Path, corpus: Path) -> tuple[str, ...]:
    """A fast classification probe on the tiny corpus (the kitchen labels: every validation label is also a
    training label): linear heads, a 2-learning-rate grid, 2 epochs."""
    train_manifest, val_manifest = _kitchen_manifests(corpus)
    return (
        "--checkpoint", str(checkpoint), "--train-manifest", str(train_manifest),
        "--val-manifest", str(val_manifest), "--num-clips", "2", "--num-frames", "4",
        "--probe", "linear", "--lr", "1e-3", "3e-3", "--wd", "0.01", "--epochs", "2", "--workers", "0",
    )  # fmt: skip


def test_repeats_report_the_mean_of_independent_probe_seeds(tmp_path, corpus, tiny_ckpt):
    common = _quick_linear_probe_args(tiny_ckpt, corpus)
    assert run_probe(_args(tmp_path / "rep", *common, "--repeats", "2")) == 0
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    spread = metrics["repeats"]
    assert spread["seeds"] == [0, 1]
    for key in ("label_recall@1", "label_recall@5", "label_top1"):
        values = spread["linear"][key]["values"]
        assert len(values) == 2 and metrics[key] == pytest.approx(sum(values) / 2)
    # each repeat is exactly the run a user gets with that probe seed alone
    assert run_probe(_args(tmp_path / "seed1", *common, "--seed", "1")) == 0
    alone = json.loads((tmp_path / "seed1" / "metrics.json").read_text())
    assert spread["linear"]["label_top1"]["values"][1] == alone["label_top1"]
    assert spread["linear"]["label_recall@5"]["values"][1] == alone["label_recall@5"]
    assert "probe seeds [0, 1]" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(SystemExit, match="--repeats"):
        run_probe(_args(tmp_path / "bad", *common, "--repeats", "0"))


def test_features_that_would_not_fit_in_memory_go_to_mapped_files_with_the_same_results(tmp_path, corpus, tiny_ckpt, monkeypatch, capsys):
    """On a machine with (as far as the probe can tell) 1 kB of memory left, auto keeps the features in
    memory-mapped files under --out: the same numbers, no file left behind; --feature-store memory is
    refused before any clip is encoded, with the sizes in the message."""
    import worldmodel.featurestore as featurestore

    common = _quick_linear_probe_args(tiny_ckpt, corpus)
    assert run_probe(_args(tmp_path / "memory", *common)) == 0
    assert "kept in memory" in capsys.readouterr().out
    monkeypatch.setattr(featurestore, "available_memory_bytes", lambda: 1000)
    assert run_probe(_args(tmp_path / "auto", *common)) == 0
    assert "kept in memory-mapped files under" in capsys.readouterr().out
    in_memory, mapped = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("memory", "auto"))
    assert (in_memory["feature_store"]["kind"], mapped["feature_store"]["kind"]) == ("memory", "disk")
    assert in_memory["feature_store"]["bytes_planned"] == mapped["feature_store"]["bytes_planned"] > 1000
    for key in ("label_recall@1", "label_recall@5", "label_top1", "hp_search"):
        assert mapped[key] == in_memory[key], key
    assert [p.name for p in (tmp_path / "auto").iterdir() if p.name.startswith(".features")] == []
    # half-precision features: half the bytes, in the mapped files too, and a probe that still learns
    assert run_probe(_args(tmp_path / "half", *common, "--feature-dtype", "bfloat16")) == 0
    half = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert half["feature_store"] == {"kind": "disk", "dtype": "bfloat16",
                                     "bytes_planned": in_memory["feature_store"]["bytes_planned"] // 2}
    assert half["config"]["feature_dtype"] == "bfloat16"
    # rounding may move a borderline prediction, not the result (here: identical metrics on these few clips)
    assert half["label_top1"] > 0 and abs(half["label_recall@5"] - in_memory["label_recall@5"]) < 0.34
    with pytest.raises(SystemExit, match=r"need .* MiB .*more than the .* of memory available.*--feature-store disk"):
        run_probe(_args(tmp_path / "refused", *common, "--feature-store", "memory"))
    assert "encoded" not in capsys.readouterr().out and not (tmp_path / "refused" / "metrics.json").exists()

    # no room on the disk either: auto streams (nothing stored, every epoch encodes its clips), same results
    import collections

    monkeypatch.setattr(featurestore.shutil, "disk_usage", lambda path: collections.namedtuple("U", "total used free")(1, 1, 1000))
    assert run_probe(_args(tmp_path / "stream", *common)) == 0
    assert "features are not stored" in capsys.readouterr().out
    streamed = json.loads((tmp_path / "stream" / "metrics.json").read_text())
    assert streamed["feature_store"]["kind"] == "stream" and streamed["timing"]["val_features_s"] > 0
    for key in ("label_recall@1", "label_recall@5", "label_top1"):
        assert streamed[key] == pytest.approx(in_memory[key], abs=1e-9), key
    assert [k for r in streamed["hp_search"] for k in r["selection_key"]] == pytest.approx(
        [k for r in in_memory["hp_search"] for k in r["selection_key"]], abs=1e-6)
    with pytest.raises(SystemExit, match="--disk-cache"):
        run_probe(_args(tmp_path / "stream_cache", *common, "--feature-store", "stream", "--disk-cache"))


def _moved_checkpoint(tiny_ckpt: Path, path: Path) -> Path:
    """The tiny checkpoint with a target encoder that moved away from the context encoder."""
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for name, tensor in ckpt["state_dict"].items():
        if name.startswith("target_encoder.") and tensor.is_floating_point():
            tensor.add_(0.5 * torch.randn(tensor.shape, generator=generator))
    atomic_torch_save(ckpt, path)
    return path


def test_auto_encoder_is_chosen_on_held_out_training_videos(tmp_path, corpus, tiny_ckpt):
    """--encoder auto (the default) probes both encoders on the held-out TRAINING videos, keeps the better
    one and is then exactly the run with that encoder given explicitly; validation never decides."""
    moved = _moved_checkpoint(tiny_ckpt, tmp_path / "moved.ckpt")
    common = _quick_linear_probe_args(moved, corpus)
    assert run_probe(_args(tmp_path / "auto", *common, "--repeats", "2")) == 0
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert metrics["encoder_requested"] == "auto"
    for selection in metrics["encoder_selection"]:
        keys = selection["held_out_key"]
        assert set(keys) == {"target", "context"}
        assert selection["chosen"] == max(keys, key=lambda name: tuple(keys[name]))
    assert metrics["encoder"] == metrics["encoder_selection"][0]["chosen"]
    assert {row["encoder"] for row in metrics["hp_search"]} == {"target", "context"}
    assert "chosen by auto over context and target" in (tmp_path / "auto" / "report.md").read_text()
    assert torch.load(tmp_path / "auto" / "probe_linear.pt", weights_only=True)["encoder"] == metrics["encoder"]
    chosen = metrics["encoder"]
    assert run_probe(_args(tmp_path / "explicit", *common, "--encoder", chosen)) == 0
    explicit = json.loads((tmp_path / "explicit" / "metrics.json").read_text())
    assert explicit["encoder"] == chosen and explicit["encoder_requested"] == chosen
    assert metrics["repeats"]["linear"]["label_top1"]["values"][0] == explicit["label_top1"]
    assert metrics["repeats"]["linear"]["label_recall@5"]["values"][0] == explicit["label_recall@5"]


def test_blocks_probes_the_encoder_cut_after_k_blocks(tmp_path, corpus, tiny_ckpt):
    from worldmodel.models.vit import vit_tiny

    torch.manual_seed(0)
    full = vit_tiny(img_size=32, depth=3, embed_dim=48, num_heads=3).eval()
    two = vit_tiny(img_size=32, depth=2, embed_dim=48, num_heads=3).eval()
    two.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("blocks.2.")})
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        whole = full(video)
        cut_encoder_blocks([full], 2)
        assert len(full.blocks) == 2
        # the cut encoder is exactly an encoder built with 2 blocks and the first 2 blocks' weights
        assert torch.equal(full(video), two(video)) and not torch.allclose(full(video), whole, atol=1e-3)
    with pytest.raises(ValueError, match="the encoder has 2 blocks"):
        cut_encoder_blocks([full], 3)

    data = ["--train-annotations", str(corpus / "annotations" / "train.csv"), "--val-annotations",
            str(corpus / "annotations" / "val.csv"), "--videos", str(corpus / "videos"), "--num-frames", "4",
            "--lr", "1e-3", "--wd", "0.01", "--epochs", "2", "--workers", "0", "--encoder", "target",
            "--probe", "linear"]  # fmt: skip
    assert run_probe(_args(tmp_path / "all", "--checkpoint", str(tiny_ckpt), *data)) == 0
    assert run_probe(_args(tmp_path / "b0", "--checkpoint", str(tiny_ckpt), *data, "--blocks", "0")) == 0
    whole, cut = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("all", "b0"))
    assert (whole["encoder_blocks"], cut["encoder_blocks"]) == (1, 0)
    assert whole["weights_sha256"] != cut["weights_sha256"]  # other features, another cache key
    assert "tokens after its first 0 blocks" in (tmp_path / "b0" / "report.md").read_text()
    assert "tokens after its first" not in (tmp_path / "all" / "report.md").read_text()
    with pytest.raises(SystemExit, match="--blocks 2: the encoder has 1 blocks"):
        run_probe(_args(tmp_path / "b2", "--checkpoint", str(tiny_ckpt), *data, "--blocks", "2"))
    with pytest.raises(SystemExit, match="use one or the other"):
        run_probe(_args(tmp_path / "bf", "--checkpoint", str(tiny_ckpt), *data, "--blocks", "0", "--forecast"))


# ---------------------------------------------------------------------------------------------- model sources
def test_a_one_encoder_export_is_probed_with_the_encoder_it_holds(tmp_path, corpus, tiny_ckpt):
    """`worldmodel export` keeps only the target encoder unless told --encoder both. Asking such a folder for
    the other encoder is an error (it used to probe the one there is under the name asked for), and auto
    probes the one encoder there is, under its own name."""
    from worldmodel.checkpoints import export_model

    moved = _moved_checkpoint(tiny_ckpt, tmp_path / "moved.ckpt")
    trained = build_world_model(str(moved))
    folders = {"target": export_model(moved, tmp_path / "target_only"),  # the default: --encoder target
               "context": export_model(moved, tmp_path / "context_only", encoder="context")}  # fmt: skip
    for held, missing in (("target", "context"), ("context", "target")):
        out = tmp_path / f"no_{missing}"
        with pytest.raises(SystemExit, match=f"holds only the {held} encoder .* no {missing} encoder to probe") as info:
            run_probe(_args(out, *_quick_linear_probe_args(folders[held], corpus), "--encoder", missing))
        assert info.value.code == 2 and "\n" not in str(info.value)
        assert "worldmodel export CKPT DIR --encoder both" in str(info.value)
        assert not out.exists()  # refused before any work
    for held, folder in folders.items():
        out = tmp_path / f"auto_{held}"
        assert run_probe(_args(out, *_quick_linear_probe_args(folder, corpus))) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["encoder"] == held and metrics["encoders_in_checkpoint"] == [held]
        assert list(metrics["encoder_selection"][0]["held_out_key"]) == [held]
        probed = trained.target_encoder if held == "target" else trained.context_encoder
        assert metrics["weights_sha256"] == weights_hash([probed])  # the features are that encoder's
        assert f"auto, but the checkpoint holds only the {held} encoder" in (out / "report.md").read_text()


def test_config_from_takes_whatever_checkpoint_takes(tmp_path, corpus, tiny_ckpt):
    """--config-from reads a run folder, an exported folder, a V-JEPA 2 checkpoint or a folder imported from
    one, as --checkpoint does; the random weights are those of that architecture."""
    from test_import_vjepa2 import write_reference_checkpoint
    from worldmodel.checkpoints import export_model
    from worldmodel.forecast import WorldModel

    def weights(model) -> str:
        return weights_hash([model.context_encoder, model.target_encoder, model.predictor])

    run = tmp_path / "runs" / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(tiny_ckpt.read_bytes())
    exported = export_model(tiny_ckpt, tmp_path / "export")  # the target encoder only
    reference = build_world_model("random", config_from=str(tiny_ckpt), seed=1)
    for source in (run, exported):
        model = build_world_model("random", config_from=str(source), seed=1)
        assert weights(model) == weights(reference), source  # the same architecture, the same seeded weights

    pt = tmp_path / "vitt.pt"
    write_reference_checkpoint(pt)
    imported = export_model(pt, tmp_path / "imported")  # what `worldmodel import-vjepa2` writes
    trained = WorldModel.load(imported)
    shapes = {k: v.shape for k, v in trained.predictor.state_dict().items()}
    randoms = [build_world_model("random", config_from=str(source), seed=1) for source in (pt, imported)]
    for model in randoms:
        assert model.target_encoder.cfg == trained.target_encoder.cfg  # width, depth, rotary layout ...
        assert model.target_encoder.cfg.rope_layout == "vjepa2"
        assert {k: v.shape for k, v in model.predictor.state_dict().items()} == shapes
        assert weights_hash([model.target_encoder]) != weights_hash([trained.target_encoder])  # not its weights
        assert weights_hash([model.target_encoder]) == weights_hash([model.context_encoder])  # as at step 0
        assert model.config["format"] == "vjepa2"  # its normalisation, image size ...
    assert weights(randoms[0]) == weights(randoms[1])
    assert weights(build_world_model("random", config_from=str(pt), seed=2)) != weights(randoms[0])

    # through the command line: a random baseline of an exported model's architecture
    out = tmp_path / "random_export"
    assert run_probe(_args(out, *_quick_linear_probe_args(Path("random"), corpus), "--config-from", str(exported))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == f"random(seed=0, config_from={exported})"
    assert metrics["weights_sha256"] == weights_hash([build_world_model("random", config_from=str(tiny_ckpt)).target_encoder])


# ---------------------------------------------------------------------------------------------- classification labels
def _write_manifest(path: Path, lines: list[tuple[str, int]]) -> Path:
    path.write_text("".join(f"{video} {label}\n" for video, label in lines))
    return path


def test_classification_classes_are_the_training_labels(tmp_path, corpus):
    """The head is sized by the training labels; a validation label no training video has is -1 (like an
    unseen action pair), and the held-out part of the search is labelled by the videos it is fitted on."""
    from worldmodel.probe import classification_clip_sets

    videos = sorted(str(p) for p in (corpus / "videos").glob("*.mp4"))
    train_manifest = _write_manifest(tmp_path / "train.txt", list(zip(videos[:4], [0, 2, 3, 2])))
    val_manifest = _write_manifest(tmp_path / "val.txt", list(zip(videos[4:8], [0, 1, 2, 7])))
    cfg = ProbeConfig(num_frames=4, num_clips=2)
    train, val = classification_clip_sets(str(train_manifest), str(val_manifest), cfg, 32)
    outputs, labels = val.label_space(np.arange(len(train)))
    assert outputs == {"label": 4}  # 1 + the largest training label, not 8 for the validation label 7
    assert labels["label"].tolist() == [0, 0, -1, -1, 2, 2, -1, -1]  # 1 and 7: no training video has them
    assert labels["label:unseen"].tolist() == [-1, -1, 1, 1, -1, -1, 7, 7]  # their true labels
    outputs, labels = train.label_space(np.arange(len(train)))
    assert outputs == {"label": 4} and labels["label"].tolist() == [0, 0, 2, 2, 3, 3, 2, 2]
    outputs, labels = train.label_space(np.array([0, 1, 2, 3]))  # fitted on the first two videos (0 and 2)
    assert outputs == {"label": 3} and labels["label"].tolist() == [0, 0, 2, 2, -1, -1, 2, 2]


def test_validation_labels_unseen_in_training_are_misses(tmp_path, corpus, tiny_ckpt):
    """Validation videos whose label no training video has used to get head outputs of their own and be
    scored by chance; they are misses now, and each such label is a class with recall 0 in the mean-class
    recall (the contract: the average is over the classes present in the evaluated split)."""
    train_manifest, val_manifest = _kitchen_manifests(corpus)
    val = [(str(corpus / line.split()[0]), int(line.split()[1])) for line in val_manifest.read_text().split("\n") if line]
    common = [a for a in _quick_linear_probe_args(tiny_ckpt, corpus)]
    common[common.index("--val-manifest") + 1] = str(_write_manifest(tmp_path / "unseen.txt", [(v, 99) for v, _ in val]))
    out = tmp_path / "unseen"
    assert run_probe(_args(out, *common)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["outputs"] == {"label": 8}  # the 8 kitchens of training, not 100 outputs
    assert metrics["label_num_unlabelled"] == metrics["num_val"] == len(val)
    assert metrics["label_top1"] == metrics["label_top5"] == 0.0
    assert metrics["label_num_unseen_classes"] == 1  # all are label 99
    assert metrics["label_recall@1"] == metrics["label_recall@5"] == 0.0  # one class present, never ranked
    assert metrics["per_class_recall"]["label"] == []  # no class the head has an output for
    assert f"{len(val)} validation videos have a label no training video has (1 such labels)" in (out / "report.md").read_text()
    assert (out / "per_class_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mixed = [val[0]] + [(v, 99) for v, _ in val[1:]]  # one video keeps its kitchen
    common[common.index("--val-manifest") + 1] = str(_write_manifest(tmp_path / "mixed.txt", mixed))
    out = tmp_path / "mixed"
    assert run_probe(_args(out, *common)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_num_unlabelled"] == len(val) - 1
    rows = metrics["per_class_recall"]["label"]
    assert [(r["class"], r["support"]) for r in rows] == [(val[0][1], 1)]  # the head's only class present
    assert metrics["label_num_unseen_classes"] == 1
    assert metrics["label_recall@1"] == pytest.approx(rows[0]["recall@1"] / 2)  # and label 99, recall 0
    assert metrics["label_top1"] == pytest.approx(rows[0]["recall@1"] / len(val))  # the others are misses


# ---------------------------------------------------------------------------------------------- device
def test_a_device_this_machine_lacks_is_a_one_line_error(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, expected in (("cuda", "--device cuda: CUDA is not available on this machine"),
                             ("cuda:1", "--device cuda:1: CUDA is not available on this machine"),
                             ("gpu", "--device gpu: ")):  # fmt: skip
        out = tmp_path / device
        with pytest.raises(SystemExit, match=expected) as info:
            run_probe(_args(out, "--checkpoint", str(tiny_ckpt), "--device", device, "--corpus", str(tmp_path / "none")))
        assert info.value.code == 2 and "\n" not in str(info.value)
        assert not out.exists() and not (tmp_path / "none").exists()  # refused before any work


def test_a_video_that_fails_in_a_decoding_worker_is_one_line_naming_it():
    """A file damaged past its header passes the up-front check and fails while its clip is decoded in a
    DataLoader worker: the probe's error is then the file's line, not the worker's traceback."""
    from torch.utils.data import Dataset

    from worldmodel.data.video import VideoError
    from worldmodel.probe import clip_batches

    class Damaged(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise VideoError("/data/v7.mp4", "corrupt", "the decoder failed (Error reading frame 40)")

    with pytest.raises(VideoError) as err:
        list(clip_batches(Damaged(), [0, 1], batch_size=2, num_workers=1))
    assert str(err.value) == "/data/v7.mp4: corrupt: the decoder failed (Error reading frame 40)"
    assert (err.value.path, err.value.reason) == ("/data/v7.mp4", "corrupt")
