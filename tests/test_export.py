"""Exported model folders (model.safetensors + config.json): round trips, no pickle, damaged files, CLI.

Sources: a tiny `worldmodel pretrain` checkpoint (JEPAPretrainer, depth 1, 48 dims, 32 px, 8 frames)
and a tiny V-JEPA 2 checkpoint in the reference layout (from test_import_vjepa2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import pickle
import stat

import pytest
import torch
from safetensors import safe_open

from test_import_vjepa2 import write_reference_checkpoint
from worldmodel.forecast import WorldModel
from worldmodel.checkpoints import (
    CheckpointError,
    SquareGridPredictor,
    add_export_arguments,
    add_import_arguments,
    atomic_torch_save,
    export_model,
    load_model_parts,
    load_vjepa2,
    run_export,
    run_import,
)
from worldmodel.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from worldmodel.pretrain import JEPAPretrainer

DATA = {"num_frames": 8, "fps": None, "frame_step": 2, "duration_s": None}
MASKS = [{"type": "multiblock", "num_blocks": 2, "spatial_scale": [0.3, 0.3]}, {"type": "future"}]


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    module = JEPAPretrainer(
        img_size=32, num_frames=8, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
        pred_depth=1, pred_dim=32, pred_heads=2, masks=MASKS,
    )
    with torch.no_grad():  # distinct mask tokens, context encoder != EMA target encoder
        module.predictor.mask_tokens.normal_()
        for param in module.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    atomic_torch_save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "datamodule_hyper_parameters": DATA},
        path,
    )
    return path


@pytest.fixture(scope="module")
def vjepa2_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("vjepa2") / "vitt.pt"
    write_reference_checkpoint(path)
    return path


def outputs(parts, video, grid, kind=1):
    """Encoder tokens and predictor predictions for fixed context / target positions."""
    num_tokens = grid[0] * grid[1] * grid[2]
    gen = torch.Generator().manual_seed(5)
    perm = torch.stack([torch.randperm(num_tokens, generator=gen) for _ in range(video.shape[0])])
    context_idx, target_idx = perm[:, : num_tokens // 2], perm[:, num_tokens // 2 :]
    with torch.no_grad():
        tokens = parts.encoder(video)
        context = parts.encoder(video, token_idx=context_idx)
        pred = parts.predictor(context, context_idx, None, target_idx, None, grid=grid, mask_kind=kind)
    return tokens, pred


def assert_same_model(a, b, video, grid, kind=1):
    for x, y in zip(outputs(a, video, grid, kind), outputs(b, video, grid, kind)):
        assert torch.equal(x, y)  # bit-identical


def tensor_names(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return set(f.keys()), f.metadata()


# ---------------------------------------------------------------------------------------------- round trips
def test_pretrain_checkpoint_round_trip_is_bit_identical(tmp_path, pretrain_ckpt):
    out = export_model(pretrain_ckpt, tmp_path / "export", encoder="both")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temporary files left
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "vit_tiny" and config["rope_layout"] == "standard"
    assert (config["img_size"], config["num_frames"], config["patch_size"], config["tubelet_size"]) == (32, 8, 16, 2)
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (48, 1, 3)
    assert config["predictor"] == {"dim": 32, "depth": 1, "num_heads": 2, "positions": "clip"}
    assert config["num_mask_tokens"] == 2 and config["mask_kinds"] == MASKS
    assert config["normalization"]["mean"] == list(IMAGENET_MEAN) and config["normalization"]["std"] == list(IMAGENET_STD)
    assert config["encoders"] == {"target": "encoder", "context": "context_encoder"}
    assert config["source"] == {"format": "worldmodel-pretrain", "path": str(pretrain_ckpt)}
    assert config["data"] == DATA
    names, metadata = tensor_names(out)
    assert {n.split(".")[0] for n in names} == {"encoder", "context_encoder", "predictor"}
    assert metadata["export_id"] == config["export_id"]

    video = torch.randn(2, 3, 8, 32, 32)
    for role in ("target", "context"):
        original, exported = load_model_parts(pretrain_ckpt, role), load_model_parts(out, role)
        assert exported.encoder_role == role
        assert exported.config == json.loads(json.dumps(original.config))  # the hyper-parameters, as JSON
        assert exported.data_config == DATA == original.data_config
        assert_same_model(original, exported, video, grid=(4, 2, 2))
    target, context = load_model_parts(out, "target"), load_model_parts(out, "context")
    assert not torch.equal(target.encoder.patch_embed.proj.weight, context.encoder.patch_embed.proj.weight)
    # a run folder stands for its last checkpoint
    assert_same_model(load_model_parts(pretrain_ckpt.parent), target, video, grid=(4, 2, 2))


def test_default_export_keeps_the_target_encoder_only(tmp_path, pretrain_ckpt):
    out = export_model(pretrain_ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["encoders"] == {"target": "encoder"}
    names, _ = tensor_names(out)
    assert {n.split(".")[0] for n in names} == {"encoder", "predictor"}
    video = torch.randn(1, 3, 8, 32, 32)
    target = load_model_parts(pretrain_ckpt, "target")
    asked_context = load_model_parts(out, "context")  # the one encoder serves both roles, and says so
    assert asked_context.encoder_role == "target"
    assert_same_model(target, asked_context, video, grid=(4, 2, 2))
    assert_same_model(target, load_model_parts(out / "model.safetensors"), video, grid=(4, 2, 2))


def test_a_shared_sigreg_encoder_is_stored_once(tmp_path):
    torch.manual_seed(1)
    module = JEPAPretrainer(
        img_size=32, num_frames=8, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
        pred_depth=1, pred_dim=32, pred_heads=2, target="sigreg",
    )
    path = tmp_path / "sigreg.ckpt"
    atomic_torch_save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    out = export_model(path, tmp_path / "export", encoder="both")
    assert json.loads((out / "config.json").read_text())["encoders"] == {"target": "encoder", "context": "encoder"}
    assert {n.split(".")[0] for n in tensor_names(out)[0]} == {"encoder", "predictor"}
    parts = load_model_parts(out, "context")
    assert parts.encoder_role == "shared" and parts.data_config is None
    assert_same_model(load_model_parts(path), parts, torch.randn(1, 3, 8, 32, 32), grid=(4, 2, 2))


def test_the_forecast_facade_loads_an_exported_folder(tmp_path, pretrain_ckpt):
    from worldmodel.forecast import WorldModel

    out = export_model(pretrain_ckpt, tmp_path / "export", encoder="both")
    original, exported = WorldModel.load(pretrain_ckpt), WorldModel.from_pretrained(out)
    assert exported.clip_timing == original.clip_timing and exported.mask_kind == original.mask_kind == 1
    video = torch.randint(0, 256, (3, 8, 32, 32), dtype=torch.uint8)
    assert torch.equal(exported.encode(video), original.encode(video))
    assert torch.equal(exported.forecast(video[:, :4], horizon=2), original.forecast(video[:, :4], horizon=2))


def test_loading_an_exported_folder_unpickles_nothing(tmp_path, pretrain_ckpt, monkeypatch):
    out = export_model(pretrain_ckpt, tmp_path / "export")
    expected = load_model_parts(out)

    def refuse(*args, **kwargs):
        raise AssertionError("an exported folder must load without pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    parts = load_model_parts(out)
    assert_same_model(expected, parts, torch.randn(1, 3, 8, 32, 32), grid=(4, 2, 2))


def test_vjepa2_import_round_trip_is_bit_identical(tmp_path, vjepa2_ckpt, capsys):
    parser = argparse.ArgumentParser()
    add_import_arguments(parser)
    out = tmp_path / "vitt"
    args = parser.parse_args(
        [str(vjepa2_ckpt), str(out), "--encoder", "both", "--img-size", "32x48", "--num-frames", "16",
         "--predictor-positions", "reference"]
    )
    assert run_import(args) == 0
    assert "vit_tiny" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "vit_tiny" and config["rope_layout"] == "vjepa2"
    assert (config["img_size"], config["num_frames"], config["patch_size"], config["tubelet_size"]) == ([32, 48], 16, 16, 2)
    assert config["num_mask_tokens"] == 10 and config["mask_kinds"] is None
    assert config["predictor"] == {"dim": 96, "depth": 2, "num_heads": 3, "positions": "reference"}
    assert config["source"] == {"format": "vjepa2", "path": str(vjepa2_ckpt)}
    assert config["data"] == {"fps": 4.0, "num_frames": 16}

    video = torch.randn(2, 3, 16, 32, 48)  # non-square: the reference-grid predictor survives the export
    for role in ("target", "context"):
        imported = load_vjepa2(vjepa2_ckpt, role, img_size=(32, 48), num_frames=16, predictor_positions="reference")
        exported = load_model_parts(out, role)
        assert isinstance(exported.predictor, SquareGridPredictor) and exported.predictor.square_grid == 2
        assert exported.encoder.rope.layout == "vjepa2" and exported.predictor.rope.layout == "vjepa2"
        assert exported.config == imported.config and exported.encoder_role == role
        assert_same_model(imported, exported, video, grid=(8, 2, 3), kind=7)

    # `worldmodel export` of the V-JEPA 2 file directly gives the same weights (default: clip positions)
    again = export_model(vjepa2_ckpt, tmp_path / "again", img_size=(32, 48), num_frames=16)
    plain = load_model_parts(again)
    assert type(plain.predictor) is not SquareGridPredictor
    assert_same_model(load_vjepa2(vjepa2_ckpt, img_size=(32, 48), num_frames=16), plain, video, grid=(8, 2, 3))


def test_a_vjepa2_file_read_directly_warns_of_its_resolution_and_takes_it(vjepa2_ckpt):
    """V-JEPA 2 files do not record the resolution they were trained at: read directly they are taken as
    256 px, with a warning saying how to give another (vitg-384), which WorldModel.load accepts."""
    with pytest.warns(UserWarning, match=r"holds no resolution; read as trained at 256 px.*img_size=384"):
        default = WorldModel.load(vjepa2_ckpt)
    assert default.img_size == 256
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given the size: nothing to warn about
        sized = WorldModel.load(vjepa2_ckpt, img_size=(32, 48), num_frames=16)
    assert tuple(sized.img_size) == (32, 48)


def test_forecast_cli_takes_the_size_of_a_vjepa2_file_and_refuses_it_for_others(
    tmp_path, vjepa2_ckpt, pretrain_ckpt, video_folder, capsys
):
    """`worldmodel forecast --img-size` gives a V-JEPA 2 file the size it does not record (no warning; clips are
    cropped to it); a checkpoint that records its own size refuses the option before any work."""
    import warnings

    from worldmodel.forecast import add_forecast_arguments, load_latents, run_forecast

    def forecast(checkpoint, *extra):
        parser = argparse.ArgumentParser()
        add_forecast_arguments(parser)
        argv = ["--checkpoint", checkpoint, "--video", video_folder(n=1, num_frames=32) / "v000.mp4",
                "--out", tmp_path / "f.safetensors", "--horizon", 1, "--context-frames", 4, "--frame-step", 1,
                "--device", "cpu", *extra]
        return run_forecast(parser.parse_args([str(a) for a in argv]))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the size is given: nothing to warn about
        assert forecast(vjepa2_ckpt, "--img-size", 32) == 0
    latents, meta = load_latents(tmp_path / "f.safetensors")
    assert latents.shape[-2] == (32 // 16) ** 2  # tokens of one tubelet: a 2 x 2 grid of 16 px patches
    assert forecast(pretrain_ckpt, "--img-size", 32) == 2
    assert "--img-size applies to a V-JEPA 2 checkpoint" in capsys.readouterr().err
    assert forecast(vjepa2_ckpt, "--img-size", 0) == 2
    assert "--img-size must be >= 1" in capsys.readouterr().err

    # the probe's --img-size (its crop, for any source) reaches a V-JEPA 2 file's loader the same way
    from worldmodel.probe import build_world_model

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_world_model(str(vjepa2_ckpt), img_size=32).img_size == 32
        random = build_world_model("random", config_from=str(vjepa2_ckpt), img_size=32)
        assert build_world_model(str(pretrain_ckpt), img_size=64).img_size == 32  # records its own size
    assert random.img_size == 32


def test_re_export_replaces_both_files(tmp_path, pretrain_ckpt, vjepa2_ckpt):
    out = tmp_path / "export"
    export_model(pretrain_ckpt, out)
    first = json.loads((out / "config.json").read_text())["export_id"]
    export_model(vjepa2_ckpt, out, img_size=32, num_frames=16)
    config = json.loads((out / "config.json").read_text())
    assert config["export_id"] != first and config["variant"] == "vit_tiny" and config["rope_layout"] == "vjepa2"
    assert tensor_names(out)[1]["export_id"] == config["export_id"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    # re-exporting an exported folder keeps the model and says where it came from
    copy = export_model(out, tmp_path / "copy")
    copied = json.loads((copy / "config.json").read_text())
    assert copied["source"]["format"] == "vjepa2" and copied["source"]["exported_from"] == str(out)
    assert_same_model(load_model_parts(out), load_model_parts(copy), torch.randn(1, 3, 16, 32, 32), grid=(8, 2, 2))


# ---------------------------------------------------------------------------------------------- bad folders
def test_damaged_exports_are_named_and_explained(tmp_path, pretrain_ckpt):
    out = export_model(pretrain_ckpt, tmp_path / "export")
    weights, config_path = out / "model.safetensors", out / "config.json"
    good_weights, good_config = weights.read_bytes(), config_path.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        load_model_parts(out)
    weights.write_bytes(good_weights)

    config = json.loads(good_config)
    config["export_id"] = "0" * 32  # weights and config from different exports (an interrupted re-export)
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.safetensors.*does not belong to the config.json"):
        load_model_parts(out)

    # damaged values: named in one line, not a TypeError / ValueError from deep inside
    for key, value, said in (("format_version", None, "format_version"), ("format_version", "1.0", "format_version"),
                             ("encoders", {"target": 5}, "bad \"encoders\""), ("data", "oops", "'data' entry is str"),
                             ("hyper_parameters", [], "'hyper_parameters' entry is list")):
        config = {**json.loads(good_config), key: value}
        config_path.write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=f"config.json: .*{re.escape(said)}"):
            load_model_parts(out)
    config = json.loads(good_config)
    config["hyper_parameters"]["masks"] = [{"kind": "nope"}]
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="masks.* hyper-parameters do not build masks"):
        WorldModel.load(out)

    config_path.write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json.*not valid JSON"):
        load_model_parts(out)

    config_path.unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_model_parts(out)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty: a folder with neither an exported model"):
        load_model_parts(empty)


def test_cli_reports_unusable_inputs(tmp_path, pretrain_ckpt, capsys):
    export_parser, import_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_export_arguments(export_parser)
    add_import_arguments(import_parser)

    assert run_export(export_parser.parse_args([str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])) == 2
    assert "missing.ckpt: no such checkpoint file" in capsys.readouterr().err

    assert run_import(import_parser.parse_args([str(pretrain_ckpt), str(tmp_path / "out")])) == 2
    assert "a worldmodel pretraining checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert run_export(export_parser.parse_args([str(pretrain_ckpt), str(tmp_path / "out"), "--encoder", "context"])) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["encoders"] == {"context": "encoder"}
    # a folder holding one encoder cannot give the other: refused, not written under the other's name
    for asked in ("target", "both"):
        assert run_export(export_parser.parse_args([str(tmp_path / "out"), str(tmp_path / "re"), "--encoder", asked])) == 2
        assert "holds only the context encoder, so there is no target encoder to export" in capsys.readouterr().err
    assert not (tmp_path / "re").exists()
    assert run_export(export_parser.parse_args([str(tmp_path / "out"), str(tmp_path / "re"), "--encoder", "context"])) == 0


def test_exported_files_get_the_mode_of_a_plain_open(tmp_path, pretrain_ckpt):
    old = os.umask(0o022)
    try:
        for umask, expected in ((0o022, 0o644), (0o027, 0o640)):
            os.umask(umask)
            out = export_model(pretrain_ckpt, tmp_path / f"export{umask:03o}")
            for name in ("model.safetensors", "config.json"):
                assert stat.S_IMODE((out / name).stat().st_mode) == expected, (name, oct(umask))
    finally:
        os.umask(old)


def test_import_names_a_downloaded_error_page(tmp_path, capsys):
    """A failed download saves the server's error page under the checkpoint's name: say so, not "malicious"."""
    parser = argparse.ArgumentParser()
    add_import_arguments(parser)
    page = tmp_path / "vitl.pt"
    page.write_bytes(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
    )
    assert run_import(parser.parse_args([str(page), str(tmp_path / "out")])) == 2
    err = capsys.readouterr().err
    assert f"{page}: not a PyTorch checkpoint (it starts with b'<?xml" in err and "download" in err
    assert "run code" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="vitl.pt: not a PyTorch checkpoint"):
        load_model_parts(page)
