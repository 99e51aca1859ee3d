"""Forecasting future latents: predictor queried at the future positions, rollout, CLI and eval outputs.

Every test uses a tiny random-weight checkpoint written in the test (ViT depth 1, 48 dims, 32 px, 8
frames: a 4 x 2 x 2 token grid) and real H.264 files decoded with decord.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from einops import rearrange

from conftest import moving_squares, write_vfr_video, write_video
from worldmodel.checkpoints import atomic_torch_save, load_model_parts
from worldmodel.data.transforms import ResizeCenterCropVideo, normalize_video
from worldmodel.data.video import read_frames
from worldmodel.forecast import (
    ANCHOR_GRID,
    ClipTiming,
    ForecastAnchor,
    ForecastError,
    RolloutCall,
    WorldModel,
    add_forecast_arguments,
    anchor_candidates,
    evaluate_forecast,
    fit_forecast_anchor,
    load_latents,
    rollout_plan,
    run_forecast,
    summarize_quality,
    to_context_space,
)
from worldmodel.objectives import target_features
from worldmodel.pretrain import JEPAPretrainer

S = 4  # spatial tokens per time step (2 x 2)
D = 48
FUTURE_KIND = 1  # masks = [multiblock, future]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    module = JEPAPretrainer(
        img_size=32, num_frames=8,
        encoder_kwargs={"depth": 1, "embed_dim": D, "num_heads": 3},
        pred_depth=1, pred_dim=32, pred_heads=2,
        masks=[{"type": "multiblock", "num_blocks": 2, "spatial_scale": [0.3, 0.3]}, {"type": "future"}],
    )
    with torch.no_grad():  # make the parts distinguishable: distinct mask tokens, context != EMA encoder
        module.predictor.mask_tokens.normal_()
        for param in module.predictor.parameters():  # a predictor that depends visibly on its context
            param.add_(0.1 * torch.randn_like(param))
        for param in module.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    atomic_torch_save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            # what Lightning stores for the VideoDataModule: the model was trained on every 2nd frame
            "datamodule_hyper_parameters": {"num_frames": 8, "fps": None, "frame_step": 2, "duration_s": None},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return WorldModel.load(checkpoint)


class PredictorCalls:
    """Records the inputs of every predictor call (a forward pre-hook, the real predictor still runs)."""

    def __init__(self, predictor):
        self.calls = []
        self.handle = predictor.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        context, context_idx, _, target_idx, _ = args
        self.calls.append(
            {"context": context.clone(), "context_idx": context_idx.clone(), "target_idx": target_idx.clone(),
             "grid": kwargs["grid"], "mask_kind": kwargs["mask_kind"]}
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def cli(argv):
    parser = argparse.ArgumentParser()
    add_forecast_arguments(parser)
    return run_forecast(parser.parse_args([str(a) for a in argv]))


def steps(tokens):
    return rearrange(tokens, "b (t s) d -> b t s d", s=S)


# ---------------------------------------------------------------------------------------------- facade
def test_load_keeps_both_encoders_and_the_geometry(checkpoint, model):
    assert (model.tubelet_size, model.patch_size, model.img_size, model.num_frames) == (2, 16, 32, 8)
    assert model.nominal_steps == 4 and model.context_range == (1, 3) and model.max_context == 3
    assert model.mask_kind == FUTURE_KIND
    assert model.clip_timing == ClipTiming(frame_step=2)  # read from the checkpoint's data config
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    context = load_model_parts(checkpoint, "context").encoder.state_dict()
    target = load_model_parts(checkpoint, "target").encoder.state_dict()
    for name, value in model.context_encoder.state_dict().items():
        assert torch.equal(value, context[name])
        assert torch.equal(model.target_encoder.state_dict()[name], target[name])
    assert not torch.equal(context["blocks.0.attn.qkv.weight"], target["blocks.0.attn.qkv.weight"])
    again = WorldModel.from_pretrained(checkpoint, encoder="context")
    assert again.default_encoder == "context"
    video = torch.randint(0, 256, (3, 4, 32, 32), dtype=torch.uint8)
    assert torch.equal(again.encode(video), model.encode(video, encoder="context"))
    assert WorldModel.load(checkpoint, device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():  # a device this machine lacks: a DeviceError that says so, not an assert
        from worldmodel.cliutil import DeviceError

        with pytest.raises(DeviceError, match="device cuda: CUDA is not available on this machine"):
            WorldModel.load(checkpoint, device="cuda")


def test_encode_normalises_uint8_and_accepts_unbatched(model):
    video = torch.randint(0, 256, (3, 4, 32, 32), dtype=torch.uint8)
    tokens = model.encode(video)
    assert tokens.shape == (1, 2 * S, D)
    assert torch.allclose(tokens, model.encode(normalize_video(video[None])), atol=1e-6)
    assert torch.allclose(tokens, model.target_encoder(normalize_video(video[None])), atol=1e-6)
    assert not torch.allclose(tokens, model.encode(video, encoder="context"), atol=1e-3)


# ---------------------------------------------------------------------------------------------- forecast
def test_forecast_queries_the_future_positions_with_the_future_mask_token(model):
    torch.manual_seed(1)
    context = torch.randn(2, 3, 4, 32, 32)  # 2 time steps, already normalised
    with PredictorCalls(model.predictor) as rec:
        pred = model.forecast(context, horizon=2, max_context=2)
    assert pred.shape == (2, 2 * S, D)
    (call,) = rec.calls  # 2 context + 2 future steps fill the nominal grid in one call
    assert torch.equal(call["context_idx"][0], torch.arange(0, 2 * S))
    assert torch.equal(call["target_idx"][0], torch.arange(2 * S, 4 * S))
    assert call["grid"] == (4, 2, 2) and call["mask_kind"] == FUTURE_KIND

    tokens = model.context_encoder(context)  # the predictor was trained on context-encoder outputs
    ctx_idx, tgt_idx = torch.arange(2 * S).expand(2, -1), torch.arange(2 * S, 4 * S).expand(2, -1)
    direct = model.predictor(tokens, ctx_idx, None, tgt_idx, None, grid=(4, 2, 2), mask_kind=FUTURE_KIND)
    assert torch.allclose(pred, direct, atol=1e-6)
    other_kind = model.predictor(tokens, ctx_idx, None, tgt_idx, None, grid=(4, 2, 2), mask_kind=0)
    assert not torch.allclose(pred, other_kind, atol=1e-3)
    from_target = model.forecast(context, horizon=2, encoder="target")
    assert not torch.allclose(pred, from_target, atol=1e-3)


def test_short_horizon_is_a_prefix_of_a_long_rollout(model):
    torch.manual_seed(2)
    context = torch.randn(1, 3, 4, 32, 32)
    long = model.forecast(context, horizon=6)  # 6 steps: beyond the default 4-step window, 2 predictor calls
    assert long.shape == (1, 6 * S, D) and torch.isfinite(long).all()
    assert torch.allclose(model.forecast(context, horizon=1), long[:, :S], atol=1e-6)
    assert torch.allclose(model.forecast(context, horizon=3), long[:, : 3 * S], atol=1e-6)


def test_rollout_slides_the_window_and_reindexes_the_context(model):
    assert rollout_plan(2, 5, nominal_steps=4, max_context=3) == [
        RolloutCall(2, 2, 2), RolloutCall(3, 1, 1), RolloutCall(3, 1, 1), RolloutCall(3, 1, 1)
    ]
    torch.manual_seed(3)
    context = torch.randn(1, 3, 4, 32, 32)
    tokens = steps(model.context_encoder(context))  # (1, 2, S, D) real steps r0, r1
    with PredictorCalls(model.predictor) as rec:
        pred = steps(model.forecast(context, horizon=5, max_context=3))  # p0..p4
    assert len(rec.calls) == 4
    for call in rec.calls:  # always the nominal 4-step grid: context at 0..C-1, targets at C..3
        num_context = call["context_idx"].shape[1] // S
        assert torch.equal(call["context_idx"][0], torch.arange(num_context * S))
        assert torch.equal(call["target_idx"][0], torch.arange(num_context * S, 4 * S))
        assert call["grid"] == (4, 2, 2)
    fed = to_context_space(pred, tokens[:, -1])  # predictions brought to the encoder's scale
    # call 2: the oldest real step r0 is dropped; r1, p0, p1 sit at times 0, 1, 2
    second = steps(rec.calls[1]["context"])
    assert torch.allclose(second[:, 0], tokens[:, 1], atol=1e-6)
    assert torch.allclose(second[:, 1:], fed[:, 0:2], atol=1e-5)
    # call 4: only predictions left: p1, p2, p3
    assert torch.allclose(steps(rec.calls[3]["context"]), fed[:, 1:4], atol=1e-5)
    # feedback="raw" feeds them back unchanged: same first call, different later steps
    raw = steps(model.forecast(context, horizon=5, max_context=3, feedback="raw"))
    assert torch.allclose(raw[:, :2], pred[:, :2], atol=1e-6)
    assert not torch.allclose(raw[:, 2:], pred[:, 2:], atol=1e-4)


def test_context_longer_than_trained_keeps_the_newest_steps(model):
    torch.manual_seed(4)
    context = torch.randn(1, 3, 8, 32, 32)  # 4 steps; the model was trained with at most 3
    tokens = model.context_encoder(context)
    with PredictorCalls(model.predictor) as rec:
        model.forecast(context, horizon=1, max_context=3)
    (call,) = rec.calls
    assert torch.allclose(call["context"], tokens[:, S:], atol=1e-6)  # steps 1..3, re-indexed to 0..2
    assert torch.equal(call["context_idx"][0], torch.arange(3 * S))
    assert torch.equal(call["target_idx"][0], torch.arange(3 * S, 4 * S))
    # an explicit window shortens the kept context so that the call still fits the nominal grid
    with PredictorCalls(model.predictor) as rec:
        out = model.forecast(context, horizon=5, window=2)
    assert out.shape == (1, 5 * S, D)
    assert [c["context_idx"].shape[1] // S for c in rec.calls] == [2, 2, 2]
    assert all(c["grid"] == (4, 2, 2) for c in rec.calls)


def test_default_rollout_keeps_the_longest_trained_context_and_queries_a_clip_length_ahead(model):
    """By default each call keeps the longest trained context (k_max = 3 here) and queries t_nominal = 4
    future steps, past the nominal grid: a 4-step horizon takes one call, a 5-step one two."""
    torch.manual_seed(5)
    context = torch.randn(1, 3, 6, 32, 32)  # 3 real steps
    tokens = model.context_encoder(context)
    assert model.rollout_context() == model.context_range[1] == 3 and model.rollout_window() == model.nominal_steps == 4
    with PredictorCalls(model.predictor) as rec:
        out = model.forecast(context, horizon=5)
    assert out.shape == (1, 5 * S, D)
    assert [(c["context_idx"].shape[1] // S, c["target_idx"].shape[1] // S) for c in rec.calls] == [(3, 4), (3, 4)]
    first = rec.calls[0]
    assert torch.allclose(first["context"], tokens, atol=1e-6)  # every real step, at times 0..2
    assert torch.equal(first["target_idx"][0], torch.arange(3 * S, 7 * S)) and first["grid"] == (7, 2, 2)
    # the second call's context: the newest three of the four predictions of the first, fed back
    fed = to_context_space(steps(out), steps(tokens)[:, -1])
    assert torch.allclose(steps(rec.calls[1]["context"]), fed[:, 1:4], atol=1e-5)
    assert torch.allclose(model.forecast(context, horizon=2), out[:, : 2 * S], atol=1e-6)
    # the previous default, the shortest trained context and the longest trained window, on request
    with PredictorCalls(model.predictor) as rec:
        model.forecast(context, horizon=5, max_context=1)
    assert [(c["context_idx"].shape[1] // S, c["target_idx"].shape[1] // S) for c in rec.calls] == [(1, 3), (1, 3)]


def test_rollout_rejects_bad_arguments(model):
    with pytest.raises(ForecastError, match="horizon"):
        model.forecast(torch.randn(1, 3, 4, 32, 32), horizon=0)
    with pytest.raises(ForecastError, match="3 frames is not a multiple of the tubelet size 2"):
        model.forecast(torch.randn(1, 3, 3, 32, 32), horizon=1)
    with pytest.raises(ForecastError, match="frame size 30x32 is not a multiple of the patch size 16"):
        model.encode(torch.randn(1, 3, 4, 30, 32))


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_writes_latents_with_metadata(checkpoint, model, video_folder, tmp_path):
    folder = video_folder(n=2, num_frames=24, size=(40, 40), fps=8.0)
    videos = [folder / "v000.mp4", folder / "v001.mp4"]
    out = tmp_path / "latents.safetensors"
    rc = cli(["--checkpoint", checkpoint, "--video", *videos, "--out", out,
              "--start", 0.5, "--context-frames", 4, "--horizon", 3, "--device", "cpu"])
    assert rc == 0
    latents, meta = load_latents(out)
    assert latents.shape == (2, 3 * S, D) and latents.dtype == torch.float32
    assert meta["checkpoint"] == str(checkpoint)
    assert meta["videos"] == [str(v) for v in videos]
    assert meta["horizon"] == 3 and meta["grid"] == [3, 2, 2] and meta["timing"] == {"frame_step": 2}
    assert meta["mask_kind"] == FUTURE_KIND and meta["predictor_input_encoder"] == "context"
    clip = meta["clips"][0]
    # start 0.5 s at 8 fps = frame 4; every 2nd frame (the checkpoint's training timing)
    assert clip["context_frame_indices"] == [4, 6, 8, 10]
    assert clip["context_timestamps"] == [0.5, 0.75, 1.0, 1.25]
    assert clip["future_frame_indices"] == [12, 14, 16, 18, 20, 22] and clip["future_available"]
    assert set(meta["quality"]) >= {"model", "copy_last", "context_mean", "model_beats_baselines"}
    frames = ResizeCenterCropVideo(32)(read_frames(videos[1], [4, 6, 8, 10]))
    assert torch.allclose(latents[1], model.forecast(frames, 3)[0], atol=1e-5)

    # context in seconds at an explicit rate: 1 s at 4 fps = 4 frames; no future frames past the end
    rc = cli(["--checkpoint", checkpoint, "--video", videos[0], "--out", out, "--fps", 4,
              "--context-s", 1.0, "--start", 1.5, "--horizon", 2, "--device", "cpu"])
    assert rc == 0
    latents, meta = load_latents(out)
    assert latents.shape == (1, 2 * S, D)
    assert meta["clips"][0]["context_frame_indices"] == [12, 14, 16, 18]
    assert meta["clips"][0]["future_frame_indices"] == [20, 22, 24, 26]
    assert not meta["clips"][0]["future_available"] and "quality" not in meta


def test_cli_says_when_an_export_without_the_context_encoder_changes_the_forecast(checkpoint, video_folder, tmp_path, capsys):
    from worldmodel.checkpoints import export_model

    video = video_folder(n=1, num_frames=24, size=(40, 40), fps=8.0) / "v000.mp4"
    args = ["--video", video, "--start", 0.5, "--context-frames", 4, "--horizon", 1, "--device", "cpu"]
    for encoders, noted in (("target", True), ("both", False)):
        folder = export_model(checkpoint, tmp_path / encoders, encoder=encoders)
        out = tmp_path / f"{encoders}.safetensors"
        assert cli(["--checkpoint", folder, *args, "--out", out]) == 0
        said = capsys.readouterr().err
        assert ("holds no context encoder" in said) is noted, said
        assert load_latents(out)[1]["predictor_input_encoder"] == ("target" if noted else "context")


def test_cli_places_frames_of_a_variable_frame_rate_video_by_their_times(checkpoint, tmp_path):
    video = write_vfr_video(tmp_path / "vfr.mp4")  # frames 0-20 at 0-0.4 s, then 100 ms apart
    out = tmp_path / "vfr.safetensors"
    assert cli(["--checkpoint", checkpoint, "--video", video, "--out", out, "--fps", 5, "--start", 0.0,
                "--context-frames", 4, "--horizon", 2, "--device", "cpu"]) == 0
    clip = load_latents(out)[1]["clips"][0]
    # 200 ms apart in time, so 10 frames apart in the fast part and 2 in the slow one
    assert clip["context_frame_indices"] == [0, 10, 20, 22]
    assert clip["future_frame_indices"] == [24, 26, 28, 30] and clip["future_available"]
    assert clip["context_timestamps"] + clip["future_timestamps"] == pytest.approx(
        [0.2 * i for i in range(8)], abs=1e-6
    )


def test_cli_refuses_a_context_past_the_end(checkpoint, video_folder, tmp_path, capsys):
    folder = video_folder(n=1, num_frames=24)
    rc = cli(["--checkpoint", checkpoint, "--video", folder / "v000.mp4", "--out", tmp_path / "x.safetensors",
              "--start", 2.5, "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "v000.mp4" in err and "too short" in err and "24 frames" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_refuses_an_unwritable_out_before_any_work(checkpoint, model, video_folder, tmp_path, capsys):
    """--out a file where a folder goes (--eval, --fit-anchor), a folder where a file goes (--video), or
    below a file: one line and status 2 at once, not a traceback after the whole evaluation or fit."""
    folder = video_folder(n=1, num_frames=24)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for mode, out, said in (("--eval", "afile", "afile is a file, not a folder"),
                            ("--fit-anchor", "afile/sub", "afile is a file, so"),
                            ("--video", "adir", "adir is a folder; name the file to write"),
                            ("--video", "afile/x.safetensors", "afile is a file, so")):
        source = folder / ("manifest.csv" if mode != "--video" else "v000.mp4")
        assert cli([mode, source, "--checkpoint", checkpoint, "--out", tmp_path / out, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"worldmodel forecast: error: --out: {tmp_path}/{said}" in err and "Traceback" not in err, err
    with pytest.raises(ForecastError, match="take a video tensor, not a path"):
        model.encode(str(folder / "v000.mp4"))


# ---------------------------------------------------------------------------------------------- eval
def test_eval_writes_json_and_plot_measured_honestly(checkpoint, model, video_folder, tmp_path):
    folder = video_folder(n=3, num_frames=24, size=(40, 40))
    out = tmp_path / "eval"
    rc = cli(["--eval", folder / "manifest.csv", "--checkpoint", checkpoint, "--out", out,
              "--clips", 4, "--horizon", 2, "--context-frames", 4, "--device", "cpu"])
    assert rc == 0
    report = json.loads((out / "forecast_eval.json").read_text())
    assert (out / "forecast_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["num_clips"] == 4 and report["steps"] == [1, 2] and report["skipped"] == []
    for method in ("model", "copy_last", "context_mean"):
        for metric in ("cosine", "l1", "cosine_sem", "l1_sem"):
            assert len(report[method][metric]) == 2
    beats = report["model_beats_baselines"]
    assert isinstance(beats["every_step"], bool) and len(beats["cosine"]) == len(beats["l1"]) == 2
    assert [c["path"] for c in report["clips"]].count(str(folder / "v000.mp4")) == 2  # round-robin
    assert report["paired"]["error_over"] == "3 videos" and isinstance(beats["every_step_clearly"], bool)

    # recompute one clip by hand: same frames, same target encoder, same normalisation for all three
    clip = report["clips"][1]
    indices = clip["context_frame_indices"] + clip["future_frame_indices"]
    assert np.all(np.diff(indices) == 2) and len(indices) == 8
    video = ResizeCenterCropVideo(32)(read_frames(clip["path"], indices))  # (3, 8, 32, 32)
    targets = steps(target_features(model.target_encoder(normalize_video(video[None]))))  # (1, 4, S, D)
    guesses = {
        "model": steps(model.forecast(video[:, :4], 2)),
        "copy_last": targets[:, 1:2].expand(-1, 2, -1, -1),
        "context_mean": targets[:, :2].mean(1, keepdim=True).expand(-1, 2, -1, -1),
    }
    for method, guess in guesses.items():
        cosine = torch.nn.functional.cosine_similarity(guess, targets[:, 2:], dim=-1).mean(-1)[0]
        l1 = (guess - targets[:, 2:]).abs().mean(-1).mean(-1)[0]
        assert np.allclose(clip["quality"][method]["cosine"], cosine.tolist(), atol=1e-5)
        assert np.allclose(clip["quality"][method]["l1"], l1.tolist(), atol=1e-5)
    means = np.mean([c["quality"]["model"]["l1"] for c in report["clips"]], axis=0)
    assert np.allclose(report["model"]["l1"], means, atol=1e-6)


def test_eval_names_a_video_too_short_for_context_and_horizon(checkpoint, video_folder, tmp_path, capsys):
    folder = video_folder(n=1, num_frames=24)
    write_video(folder / "short.mp4", moving_squares(8, (40, 40), seed=9))
    (folder / "manifest.csv").write_text("v000.mp4\nshort.mp4\n")
    args = ["--eval", folder / "manifest.csv", "--checkpoint", checkpoint, "--out", tmp_path / "eval",
            "--horizon", 2, "--context-frames", 4, "--device", "cpu", "--clips", 2]
    assert cli(args) == 2
    err = capsys.readouterr().err
    # 4 context + 4 future frames, every 2nd frame: 15 source frames, the video has 8
    assert "short.mp4" in err and "too short" in err and "15 source frames" in err and "has 8" in err
    assert not (tmp_path / "eval" / "forecast_eval.json").exists()

    assert cli(args + ["--skip-bad"]) == 0
    report = json.loads((tmp_path / "eval" / "forecast_eval.json").read_text())
    assert report["num_clips"] == 1 and len(report["skipped"]) == 1
    assert report["skipped"][0]["path"].endswith("short.mp4")


def test_paired_comparison_separates_a_consistent_lead_from_noise():
    # 4 clips x 2 steps. Clips differ a lot in difficulty (shared by all methods); the model is always
    # 0.01 better than copy_last in L1, and better than the mean on half the clips at step 2 only by luck.
    difficulty = torch.tensor([[0.1, 0.2], [0.5, 0.6], [0.3, 0.1], [0.9, 0.7]], dtype=torch.float64)
    model_l1 = difficulty
    per_clip = {
        "model": {"l1": model_l1, "cosine": 1 - model_l1},
        "copy_last": {"l1": model_l1 + 0.01, "cosine": 1 - model_l1 - 0.01},
        "context_mean": {"l1": model_l1 + torch.tensor([[0.02, 0.03], [0.02, -0.03], [0.02, 0.03], [0.02, -0.02]], dtype=torch.float64),
                         "cosine": 1 - model_l1 - 0.02},
    }
    report = summarize_quality(per_clip)
    copy_l1 = report["paired"]["copy_last"]["l1"]
    assert copy_l1["advantage"] == pytest.approx([0.01, 0.01]) and copy_l1["advantage_sem"] == pytest.approx([0, 0], abs=1e-12)
    assert copy_l1["model_better_share"] == [1.0, 1.0]
    mean_l1 = report["paired"]["context_mean"]["l1"]
    diffs = torch.tensor([0.03, -0.03, 0.03, -0.02], dtype=torch.float64)
    assert mean_l1["advantage"] == pytest.approx([0.02, diffs.mean().item()])
    assert mean_l1["advantage_sem"][1] == pytest.approx(diffs.std().item() / 2)
    assert mean_l1["model_better_share"] == [1.0, 0.5]
    # on the means the model "wins" everywhere, but step 2 against the mean is luck
    beats = report["model_beats_baselines"]
    assert beats["every_step"] and not beats["every_step_clearly"]
    # the per-method standard errors are dominated by the clips' difficulty, the paired ones are not
    assert report["model"]["l1_sem"][0] > 10 * report["paired"]["context_mean"]["l1"]["advantage_sem"][0]
    # clips cut from the same video are not independent: with their videos given, the paired errors
    # are taken over the videos' mean differences
    by_video = summarize_quality(per_clip, groups=["a.mp4", "a.mp4", "b.mp4", "b.mp4"])
    assert by_video["paired"]["error_over"] == "2 videos" and report["paired"]["error_over"] == "clips"
    video_means = torch.stack([diffs[:2].mean(), diffs[2:].mean()])
    assert by_video["paired"]["context_mean"]["l1"]["advantage"][1] == pytest.approx(diffs.mean().item())
    assert by_video["paired"]["context_mean"]["l1"]["advantage_sem"][1] == pytest.approx(video_means.std().item() / 2**0.5)
    # and so are each method's own errors
    model_means = torch.stack([model_l1[:2, 0].mean(), model_l1[2:, 0].mean()])
    assert by_video["model"]["l1_sem"][0] == pytest.approx(model_means.std().item() / 2**0.5)
    one = summarize_quality({m: {k: v[:1] for k, v in d.items()} for m, d in per_clip.items()})
    assert one["model"]["l1_sem"] == [math.inf, math.inf]  # one clip: no error estimate, not zero


def test_eval_default_spreads_enough_clips_for_paired_errors():
    from worldmodel.forecast import DEFAULT_EVAL_CLIPS, _clips_per_video

    few = _clips_per_video(18, None)  # the built-in corpus's validation videos
    assert sum(few) == DEFAULT_EVAL_CLIPS and max(few) - min(few) <= 1 and min(few) >= 3
    assert _clips_per_video(200, None) == [1] * 200  # never fewer than one per video
    assert _clips_per_video(3, 7) == [3, 2, 2]


# ---------------------------------------------------------------------------------------------- anchor
def test_anchored_forecast_mixes_the_predictor_with_the_context_frames_alone(model):
    video = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    anchor = ForecastAnchor(weights=[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]], model_sha256=model.weights_sha256(),
                            rollout=model.rollout_settings(), fit={})
    pred = steps(model.forecast(video, 3))  # (2, 3, S, D)
    alone = steps(target_features(model.target_encoder(normalize_video(video))))  # (2, 2, S, D): no future frames
    last, mean = alone[:, -1], alone.mean(dim=1)
    got = steps(model.forecast(video, 3, anchor=anchor))
    assert torch.allclose(got[:, 0], 0.5 * pred[:, 0] + 0.25 * last + 0.25 * mean, atol=1e-5)
    assert torch.allclose(got[:, 1], last, atol=1e-6)
    assert torch.allclose(got[:, 2], last, atol=1e-6)  # past the fitted steps: the last row
    assert not torch.allclose(got[:, 0], pred[:, 0], atol=1e-3)  # the mix is visible


def test_forecast_reuses_tokens_the_caller_already_encoded(model):
    video = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    anchor = ForecastAnchor(weights=[[0.5, 0.25, 0.25]], model_sha256=model.weights_sha256(),
                            rollout=model.rollout_settings(), fit={})
    encoded = {role: model.encode(video, encoder=role) for role in ("context", "target")}
    for anchored in (None, anchor):
        assert torch.equal(model.forecast(video, 3, anchor=anchored, encoded=encoded),
                           model.forecast(video, 3, anchor=anchored))
    # what is given is what is used: other context tokens give another forecast
    shifted = {**encoded, "context": encoded["context"] + 1.0}
    assert not torch.allclose(model.forecast(video, 3, encoded=shifted), model.forecast(video, 3), atol=1e-3)
    shifted = {**encoded, "target": encoded["target"].flip(1)}
    assert not torch.allclose(model.forecast(video, 3, anchor=anchor, encoded=shifted),
                              model.forecast(video, 3, anchor=anchor), atol=1e-3)


def test_fit_anchor_rejects_options_eval_does_not_have(model):
    with pytest.raises(TypeError, match=r"unknown options \['clip_count'\]"):
        fit_forecast_anchor(model, "unused.csv", clip_count=3)


def test_anchor_candidates_cover_the_simplex_predictor_first():
    candidates = anchor_candidates(4)
    assert candidates.shape == (15, 3) and torch.allclose(candidates.sum(1), torch.ones(15, dtype=torch.float64))
    assert candidates[0].tolist() == [1.0, 0.0, 0.0] and (candidates >= 0).all()
    assert len({tuple(row) for row in candidates.tolist()}) == 15


def test_fit_anchor_cli_then_eval_with_it(checkpoint, model, video_folder, tmp_path, capsys):
    folder = video_folder(n=4, num_frames=24, size=(40, 40))
    common = ["--checkpoint", checkpoint, "--horizon", 2, "--context-frames", 4, "--device", "cpu"]
    assert cli(["--fit-anchor", folder / "manifest.csv", "--clips", 8, "--out", tmp_path / "anchor", *common]) == 0
    path = tmp_path / "anchor" / "forecast_anchor.json"
    anchor = ForecastAnchor.load(path)
    assert len(anchor.weights) == 2 and anchor.fit["num_clips"] == 8 and anchor.fit["num_videos"] == 4
    for row in anchor.weights:
        assert abs(sum(row) - 1) < 1e-6 and all(abs(w * ANCHOR_GRID - round(w * ANCHOR_GRID)) < 1e-6 for w in row)
    fit = anchor.fit["l1"]
    for i in range(2):  # each source alone is a candidate: the fitted mix is never worse on the fit clips
        assert fit["anchored"][i] <= min(fit["predictor"][i], fit["copy_last"][i], fit["context_mean"][i]) + 1e-9

    plain, anchored = tmp_path / "plain", tmp_path / "anchored"
    assert cli(["--eval", folder / "manifest.csv", "--clips", 4, "--out", plain, *common]) == 0
    assert cli(["--eval", folder / "manifest.csv", "--clips", 4, "--out", anchored, "--anchor", path, *common]) == 0
    before = json.loads((plain / "forecast_eval.json").read_text())
    after = json.loads((anchored / "forecast_eval.json").read_text())
    assert before["methods"] == ["model", "copy_last", "context_mean"] and before["anchor"] is None
    assert after["methods"] == ["model", "predictor", "copy_last", "context_mean"]
    assert after["anchor"]["weights"] == anchor.weights
    # the predictor's own numbers are the un-anchored model's, and the baselines do not change
    assert np.allclose(after["predictor"]["l1"], before["model"]["l1"], atol=1e-6)
    assert np.allclose(after["context_mean"]["l1"], before["context_mean"]["l1"], atol=1e-6)
    assert "anchored forecast" in capsys.readouterr().out

    # --video with the anchor writes the anchored latents and says so
    latents_path = tmp_path / "anchored.safetensors"
    assert cli(["--video", folder / "v001.mp4", "--out", latents_path, "--anchor", path, *common]) == 0
    latents, meta = load_latents(latents_path)
    frames = ResizeCenterCropVideo(32)(read_frames(folder / "v001.mp4", [0, 2, 4, 6]))
    assert torch.allclose(latents[0], model.forecast(frames, 2, anchor=anchor)[0], atol=1e-5)
    assert meta["anchor"]["weights"] == anchor.weights and meta["quality"]["methods"][:2] == ["model", "predictor"]
    assert meta["anchor"]["steps_past_fit"] == [] and "reuse" not in capsys.readouterr().err

    # a longer horizon than the anchor was fit for: the extra steps reuse the last row, and it is said
    longer = tmp_path / "longer.safetensors"
    assert cli(["--video", folder / "v001.mp4", "--out", longer, "--anchor", path, *common, "--horizon", 3]) == 0
    assert "fit for 2 horizon steps; step 3 reuses the weights of step 2" in capsys.readouterr().err
    _, meta = load_latents(longer)
    assert meta["anchor"]["steps_past_fit"] == [3]
    assert meta["anchor"]["step_weights"] == [anchor.weights[0], anchor.weights[1], anchor.weights[1]]

    # an anchor belongs to one model and one rollout
    assert cli(["--eval", folder / "manifest.csv", "--clips", 4, "--out", anchored, "--anchor", path,
                "--window", 1, *common]) == 2
    assert "other rollout settings" in capsys.readouterr().err
    other = dict(json.loads(path.read_text()), model_sha256="0" * 64)
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert cli(["--eval", folder / "manifest.csv", "--out", anchored, "--anchor", tmp_path / "other.json", *common]) == 2
    err = capsys.readouterr().err
    assert "other.json was fit for another model" in err and "--fit-anchor" in err
    (tmp_path / "bad.json").write_text("{not json")
    assert cli(["--eval", folder / "manifest.csv", "--out", anchored, "--anchor", tmp_path / "bad.json", *common]) == 2
    assert "bad.json: not a forecast anchor" in capsys.readouterr().err
    for broken in ({"weights": [0.5, 0.5]}, {"weights": [[0.5, 0.6, -0.1]]}, {"model_sha256": None}):
        (tmp_path / "broken.json").write_text(json.dumps(dict(json.loads(path.read_text()), **broken)))
        assert cli(["--eval", folder / "manifest.csv", "--out", anchored, "--anchor", tmp_path / "broken.json",
                    *common]) == 2
        assert "broken.json: " in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- strict outputs, early errors
def strict_json(text):
    """json.loads that fails on NaN / Infinity / -Infinity, which are not JSON (Python's reader accepts them)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output: {text[:200]}"))


def test_one_clip_outputs_are_valid_json_with_null_errors(checkpoint, video_folder, tmp_path):
    """A standard error over one clip (or one video) is inf in memory; the files hold null, not Infinity."""
    folder = video_folder(n=2, num_frames=24, size=(40, 40), fps=8.0)
    out = tmp_path / "eval"
    assert cli(["--eval", folder / "manifest.csv", "--checkpoint", checkpoint, "--out", out, "--clips", 1,
                "--horizon", 2, "--context-frames", 4, "--device", "cpu"]) == 0
    text = (out / "forecast_eval.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    report = strict_json(text)
    assert report["num_clips"] == 1 and report["paired"]["error_over"] == "clips"
    for method in ("model", "copy_last", "context_mean"):
        assert report[method]["l1_sem"] == report[method]["cosine_sem"] == [None, None]
        assert all(isinstance(x, float) for x in report[method]["l1"])
    assert report["paired"]["copy_last"]["l1"]["advantage_sem"] == [None, None]
    assert (out / "forecast_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --video on one video that holds the forecast frames: its "quality" metadata is strict JSON too
    from safetensors import safe_open

    latents_path = tmp_path / "one.safetensors"
    assert cli(["--checkpoint", checkpoint, "--video", folder / "v000.mp4", "--out", latents_path,
                "--context-frames", 4, "--horizon", 2, "--device", "cpu"]) == 0
    with safe_open(str(latents_path), framework="pt") as f:
        raw = f.metadata()
    meta = {key: strict_json(value) for key, value in raw.items()}
    assert meta["quality"]["model"]["l1_sem"] == [None, None]
    assert meta["quality"]["paired"]["context_mean"]["cosine"]["advantage_sem"] == [None, None]
    assert load_latents(latents_path)[1] == meta


def test_cli_refuses_an_unusable_device_in_one_line_before_reading_anything(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    missing = tmp_path / "missing.ckpt"  # never read: the device is checked first
    base = ["--checkpoint", missing, "--video", tmp_path / "none.mp4", "--out", tmp_path / "x.safetensors"]
    for device, expected in (
        ("cuda", "--device cuda: CUDA is not available on this machine"),
        ("cuda:1", "--device cuda:1: CUDA is not available on this machine"),
        ("gpu", "--device gpu: not a device name torch knows"),
    ):
        assert cli([*base, "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"worldmodel forecast: error: {expected}") and err.count("\n") == 1, err
        assert "Traceback" not in err and "missing.ckpt" not in err
    assert cli([*base, "--device", "cpu"]) == 2  # cpu passes: now the checkpoint is read, and is missing
    assert "missing.ckpt: no such checkpoint file" in capsys.readouterr().err
    # with a real checkpoint (this used to end in a raw AssertionError traceback from torch)
    assert cli(["--checkpoint", checkpoint, "--video", tmp_path / "none.mp4", "--out", tmp_path / "x.safetensors",
                "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("worldmodel forecast: error: --device cuda: CUDA is not available")


def test_cli_refuses_out_of_range_options_before_reading_anything(checkpoint, model, video_folder, tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    base = ["--checkpoint", missing, "--eval", tmp_path / "none.csv", "--out", tmp_path / "eval", "--device", "cpu"]
    for option, value, expected in (
        ("--batch-size", 0, "--batch-size must be >= 1, got 0"),
        ("--batch-size", -2, "--batch-size must be >= 1, got -2"),
        ("--clips", 0, "--clips must be >= 1, got 0"),
        ("--horizon", 0, "--horizon must be >= 1, got 0"),
        ("--window", 0, "--window must be >= 1, got 0"),
        ("--max-context", 0, "--max-context must be >= 1, got 0"),
        ("--context-frames", 0, "--context-frames must be a positive multiple of the tubelet size, got 0"),
        ("--frame-step", 0, "--frame-step must be a positive integer, got 0"),
        ("--fps", 0, "--fps must be > 0, got 0.0"),
        ("--context-s", -1, "--context-s must be > 0, got -1.0"),
        ("--start", -1, "--start must be >= 0 seconds, got -1.0"),
    ):
        assert cli([*base, option, value]) == 2, option
        err = capsys.readouterr().err
        assert err == f"worldmodel forecast: error: {expected}\n", err

    # the real thing: --batch-size 0 on a real manifest used to crash in torch.stack
    folder = video_folder(n=1, num_frames=24)
    assert cli(["--eval", folder / "manifest.csv", "--checkpoint", checkpoint, "--out", tmp_path / "eval",
                "--batch-size", 0, "--device", "cpu"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ForecastError, match="--batch-size must be >= 1, got 0"):
        evaluate_forecast(model, folder / "manifest.csv", batch_size=0)
    with pytest.raises(ForecastError, match="--batch-size must be >= 1, got 0"):
        fit_forecast_anchor(model, folder / "manifest.csv", batch_size=0)
