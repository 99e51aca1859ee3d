"""worldmodel used as a library, from one's own Python code and one's own Lightning Trainer (not the CLI)."""

from __future__ import annotations

import csv
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import moving_squares, write_video
from worldmodel.data.datamodule import DataErrorCallback, VideoDataModule
from worldmodel.data.datasets import ClipDataset, collate_samples
from worldmodel.data.loader import DataProgressCallback
from worldmodel.data.transforms import ResizeCenterCropVideo
from worldmodel.data.video import ClipSampler
from worldmodel.checkpoints import safe_torch_load
from worldmodel.forecast import ForecastError, WorldModel
from worldmodel.pretrain import JEPAPretrainer

TINY = dict(
    img_size=32, num_frames=4, encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3},
    pred_depth=1, pred_dim=32, pred_heads=2, collapse_every=0,
)
TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False)


def tiny_model() -> JEPAPretrainer:
    L.seed_everything(0, verbose=False)
    return JEPAPretrainer(**TINY)


def test_an_own_trainer_gets_the_data_callbacks_and_counts_bad_files(video_folder, tmp_path):
    folder = video_folder(n=3, num_frames=16)
    (folder / "broken.mp4").write_bytes(b"\x00" * 2048)  # not a video
    write_video(folder / "short.mp4", moving_squares(4, (40, 40), seed=9))  # 4 frames: a clip spans 7
    manifest = tmp_path / "manifest.csv"
    names = ("v000.mp4", "broken.mp4", "v001.mp4", "v002.mp4", "short.mp4")
    manifest.write_text("".join(f"{folder / name}\n" for name in names))
    data = VideoDataModule(train_manifests=str(manifest), num_frames=4, frame_step=2, crop_size=32, batch_size=2,
                           num_workers=0, samples_per_epoch=8)
    trainer = L.Trainer(max_steps=4, default_root_dir=str(tmp_path / "run"), **TRAINER)
    trainer.fit(tiny_model(), datamodule=data)
    kinds = [type(c) for c in trainer.callbacks]
    assert DataErrorCallback in kinds and DataProgressCallback in kinds
    errors = [c for c in trainer.callbacks if isinstance(c, DataErrorCallback)][0].tracker
    assert errors.num_failures >= 1  # the broken file was drawn and replaced, and it was counted
    with open(errors.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert rows and all(row["path"].endswith("broken.mp4") and row["reason"] == "not_video" for row in rows)
    # the short video is usable (its last frame repeats) but not silent: counted and named in the summary
    assert errors.num_padded >= 1 and errors.padded_examples == [str(folder / "short.mp4")]
    assert f"clip(s) from videos shorter than a clip, their last frame repeated (data.short_policy; e.g. {folder / 'short.mp4'})" \
        in errors.summary()
    assert errors.state_dict()["num_padded"] == errors.num_padded  # kept across a resume

    # callbacks of one's own are kept, not doubled
    mine = DataErrorCallback(out_dir=str(tmp_path / "mine"))
    trainer = L.Trainer(max_steps=1, callbacks=[mine], default_root_dir=str(tmp_path / "run2"), **TRAINER)
    trainer.fit(tiny_model(), datamodule=data)
    assert [c for c in trainer.callbacks if isinstance(c, DataErrorCallback)] == [mine]


def test_the_progress_bar_shows_each_steps_own_throughput(video_folder, tmp_path):
    """train/clips_per_s is logged inside the step, so the progress bar (a callback, whose batch-end hook runs
    before the module's) shows the value the logger records for that step, not the previous step's."""
    from lightning.pytorch.loggers import CSVLogger

    folder = video_folder(n=2, num_frames=16)
    shown = {}

    class Bar(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            shown[trainer.global_step] = float(trainer.progress_bar_metrics.get("train/clips_per_s", float("nan")))

    data = VideoDataModule(train_manifests=str(folder / "manifest.csv"), num_frames=4, frame_step=2, crop_size=32,
                           batch_size=2, num_workers=0, samples_per_epoch=8)
    logger = CSVLogger(str(tmp_path), name="log", version=0)
    trainer = L.Trainer(max_steps=5, callbacks=[Bar()], **{**TRAINER, "logger": logger}, log_every_n_steps=1)
    trainer.fit(tiny_model(), datamodule=data)
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        logged = {int(r["step"]) + 1: float(r["train/clips_per_s"]) for r in csv.DictReader(f) if r.get("train/clips_per_s")}
    assert sorted(logged) == [2, 3, 4, 5]  # from the second step on (the first has no previous step to time from)
    assert all(shown[step] == pytest.approx(value) for step, value in logged.items())
    assert len(set(logged.values())) == 4  # each step its own measurement


class _Batches(L.Callback):
    """Per optimiser step: the sampler's epoch, the batch's dataset indices and the loss."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[trainer.global_step] = (int(batch["epoch"][0]), batch["index"].tolist(), float(outputs["loss"]))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_own_trainer_resumes_exactly_from_any_checkpoint_lightning_writes(video_folder, tmp_path, num_workers):
    """Lightning counts an epoch stopped by max_steps as finished in a checkpoint saved after fit() returns
    or by a callback's epoch-end hook, and a batch-end checkpoint at an epoch's last batch restarts at the
    next epoch; each of these used to skip the rest of the stopped epoch (or a whole epoch). Resumed from
    any of them, the run sees the uninterrupted run's batches and losses."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = video_folder(n=3, num_frames=16)

    def fit(max_steps: int, ckpt_path=None, callbacks=(), **trainer_kwargs):
        data = VideoDataModule(train_manifests=str(folder / "manifest.csv"), num_frames=4, frame_step=2, crop_size=32,
                               batch_size=2, num_workers=num_workers, samples_per_epoch=8)  # 4 batches an epoch
        seen = _Batches()
        trainer = L.Trainer(max_steps=max_steps, default_root_dir=str(tmp_path / "run"), callbacks=[seen, *callbacks],
                            **{**TRAINER, "enable_checkpointing": bool(callbacks)}, **trainer_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's notes about checkpoint callbacks on resume
            trainer.fit(tiny_model(), datamodule=data, ckpt_path=ckpt_path)
        return trainer, seen.steps

    _, full = fit(11)
    assert [full[s][0] for s in sorted(full)] == [0] * 4 + [1] * 4 + [2] * 3
    checkpoints = {}
    for stop in (5, 8):  # mid-epoch and at an epoch's end, saved after fit() returned
        trainer, _ = fit(stop)
        trainer.save_checkpoint(tmp_path / f"after_fit_{stop}.ckpt")
        checkpoints[f"after fit, step {stop}"] = tmp_path / f"after_fit_{stop}.ckpt"
    every = ModelCheckpoint(dirpath=tmp_path / "every4", every_n_train_steps=4, save_top_k=-1)
    epoch_end = ModelCheckpoint(dirpath=tmp_path / "epoch_end", save_top_k=-1)  # Lightning's default: each epoch's end
    fit(5, callbacks=[every, epoch_end])
    checkpoints["batch end, epoch's last batch"] = tmp_path / "every4" / "epoch=0-step=4.ckpt"
    checkpoints["epoch end hook, after max_steps"] = tmp_path / "epoch_end" / "epoch=1-step=5.ckpt"
    for name, path in checkpoints.items():
        assert path.is_file(), name
        start = safe_torch_load(path)["global_step"]
        _, resumed = fit(11, ckpt_path=str(path))
        assert sorted(resumed) == list(range(start + 1, 12)), name
        for step in resumed:
            assert resumed[step][:2] == full[step][:2], (name, step, resumed[step], full[step])
            assert resumed[step][2] == pytest.approx(full[step][2], rel=1e-5), (name, step)
    # a resumed run (its epochs numbered one ahead of the data's) stopped and resumed again
    trainer, _ = fit(7, ckpt_path=str(checkpoints["after fit, step 5"]))
    trainer.save_checkpoint(tmp_path / "twice.ckpt")  # stopped mid-epoch again, in the shifted count
    _, twice = fit(11, ckpt_path=str(tmp_path / "twice.ckpt"))
    assert sorted(twice) == [8, 9, 10, 11] and all(twice[s][:2] == full[s][:2] for s in twice)

    # runs bounded by epochs: from a checkpoint at an epoch's last batch the next epoch is whole (it was
    # lost: the trainer's epoch got the empty rest of the stopped one)
    _, by_epochs = fit(-1, max_epochs=3)
    assert [by_epochs[s][:2] for s in sorted(by_epochs)] == [full[s][:2] for s in range(1, 12)] + [by_epochs[12][:2]]
    fit(-1, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "e2", every_n_train_steps=4, save_top_k=-1)])
    _, third = fit(-1, ckpt_path=str(tmp_path / "e2" / "epoch=1-step=8.ckpt"), max_epochs=3)
    assert sorted(third) == [9, 10, 11, 12] and all(third[s][:2] == by_epochs[s][:2] for s in third)
    # a checkpoint Lightning does not hand the loader's state back for (epochs bound the run and it counts
    # the stopped epoch as finished): the position comes from the callback's own state, the rest of the
    # stopped epoch is not skipped (it is trained as the trainer's next epoch)
    _, rest = fit(-1, ckpt_path=str(checkpoints["after fit, step 5"]), max_epochs=3)
    assert [rest[s][:2] for s in (6, 7, 8)] == [full[s][:2] for s in (6, 7, 8)]

    # loaders rebuilt at every epoch keep the resumed run's epoch numbering
    _, reloaded = fit(11, ckpt_path=str(checkpoints["after fit, step 5"]), reload_dataloaders_every_n_epochs=1)
    assert sorted(reloaded) == list(range(6, 12)) and all(reloaded[s][:2] == full[s][:2] for s in reloaded)

    # the trainer's epoch shorter than the sampler's (limit_train_batches): the next epoch starts at its start
    _, limited = fit(9, limit_train_batches=3)
    fit(3, limit_train_batches=3, callbacks=[ModelCheckpoint(dirpath=tmp_path / "lim", every_n_train_steps=3)])
    _, resumed = fit(9, ckpt_path=str(tmp_path / "lim" / "epoch=0-step=3.ckpt"), limit_train_batches=3)
    assert sorted(resumed) == list(range(4, 10)) and all(resumed[s][:2] == limited[s][:2] for s in resumed)


def test_a_dataloader_without_the_mask_collator_gets_the_same_masks(video_folder):
    folder = video_folder(n=4, num_frames=16)
    dataset = ClipDataset([str(folder / "manifest.csv")], ClipSampler(num_frames=4, frame_step=2), seed=0)
    samples = [dataset[(0, i)] for i in range(2)]
    model = tiny_model()
    crop = ResizeCenterCropVideo(32)
    samples = [{**s, "video": crop(s["video"].permute(1, 2, 3, 0))} for s in samples]  # (C, T, 32, 32)
    plain = collate_samples(samples)  # what a DataLoader with collate_samples (or one's own collate) gives
    assert "masks" not in plain
    masked = model.mask_collator()(samples)
    with torch.no_grad():
        assert torch.equal(model.compute_loss(plain).loss, model.compute_loss(masked).loss)
    with pytest.raises(ValueError, match=r"collate_fn=model.mask_collator\(\)"):
        model.compute_loss({"video": plain["video"]})

    # and a Trainer over a plain DataLoader trains, collapse monitors included (they read the step's masks;
    # they used to look for the batch's and fail at step 0)
    loader = DataLoader(
        ClipDataset([str(folder / "manifest.csv")], ClipSampler(num_frames=4, frame_step=2), transform=crop, seed=0),
        batch_size=2, collate_fn=collate_samples,
    )
    trainer = L.Trainer(max_steps=2, **TRAINER)
    trainer.fit(JEPAPretrainer(**{**TINY, "collapse_every": 1}), train_dataloaders=loader)
    assert trainer.global_step == 2


def test_a_checkpoint_resumes_only_into_as_many_mask_kinds():
    """One learned mask token per kind: a run with another number of kinds is refused by name (it was a
    state_dict size mismatch, after the run's config.yaml had been overwritten)."""
    from worldmodel.pretrain import ConfigError

    checkpoint = {"hyper_parameters": dict(tiny_model().hparams), "global_step": 3}
    one_kind = JEPAPretrainer(**{**TINY, "masks": [{"type": "future", "context_fraction": [0.25, 0.75]}]})
    with pytest.raises(ConfigError, match="model.masks: checkpoint 2 mask kinds, this run 1"):
        one_kind.on_load_checkpoint(checkpoint)
    tiny_model().on_load_checkpoint(checkpoint)  # the same kinds: fine


def test_odd_attention_head_sizes_are_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"attention head size 9 \(width / heads\) is odd"):
        JEPAPretrainer(**{**TINY, "encoder_kwargs": {"depth": 1, "embed_dim": 54, "num_heads": 6}})
    with pytest.raises(ValueError, match="attention head size 9"):
        JEPAPretrainer(**{**TINY, "pred_dim": 36, "pred_heads": 4})


def test_world_model_inputs_are_checked_with_the_layout_it_expects():
    module = tiny_model()
    target = module.target_encoder
    world = WorldModel(module.encoder, target, module.predictor, dict(module.hparams))
    frames = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)  # (T, H, W, C), as read_frames gives
    with pytest.raises(ForecastError, match=r"C = 3 channels, got shape \(1, 4, 32, 32, 3\).*\(T, H, W, C\)"):
        world.encode(frames)
    clip = frames.permute(3, 0, 1, 2)  # (C, T, H, W)
    assert torch.equal(world.encode(clip.numpy()), world.encode(clip))  # numpy arrays are taken too
    with pytest.raises(ForecastError, match=r"the video has 1 frames; the model needs at least one tubelet \(2 frames\)"):
        world.encode(clip[:, :1])
    with pytest.raises(ForecastError, match="horizon must be a whole number of time steps"):
        world.forecast(clip, 2.0)
    assert world.forecast(clip, np.int64(1)).shape == world.forecast(clip, 1).shape


def test_plausible_mistakes_get_errors_that_name_them(tmp_path):
    from worldmodel.data.annotations import ActionVocabulary, read_annotations
    from worldmodel.data.video import read_clips
    from worldmodel.metrics import TopKAccuracy, mean_class_recall
    from worldmodel.models.vit import vit_tiny

    csv_path = tmp_path / "train.csv"
    csv_path.write_text("video_id,start_timestamp,stop_timestamp,verb_class,noun_class\nv,1.0,2.0,0,1\nv,3.0,4.0,2,1\n")
    assert ActionVocabulary.from_annotations(csv_path) == ActionVocabulary.from_annotations(read_annotations(csv_path))
    with pytest.raises(ValueError, match="whole number >= 1, got 4.5"):
        ClipSampler(num_frames=4.5, fps=2.0)
    with pytest.raises(TypeError, match="read_clips needs a ClipSampler"):
        read_clips(csv_path, 4)
    with pytest.raises(ValueError, match="labels must be integer class ids"):
        mean_class_recall(torch.rand(3, 4), torch.tensor([0.0, 1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        TopKAccuracy(top_k=0)
    encoder = vit_tiny(depth=1)
    with pytest.raises(TypeError, match="normalize_video"):
        encoder(torch.zeros(1, 3, 2, 32, 32, dtype=torch.uint8))
    video = torch.randn(1, 3, 2, 32, 32)
    idx = torch.tensor([[0, 3]])
    assert torch.equal(encoder(video, idx.int()), encoder(video, idx))


def test_the_package_exports_its_main_names():
    import importlib
    import subprocess
    import sys

    for package in ("worldmodel", "worldmodel.data", "worldmodel.models"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, (package, name)
    from worldmodel import JEPAPretrainer as exported
    from worldmodel.data import ClipDataset as exported_dataset

    assert exported is JEPAPretrainer and exported_dataset is ClipDataset
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        importlib.import_module("worldmodel").Nope
    # decoding alone stays light: no Lightning, no models
    code = "import sys, worldmodel.data.video; print('lightning' in sys.modules, 'worldmodel.models.vit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]


def test_world_model_refuses_float_pixel_values_passed_as_a_normalised_clip():
    module = tiny_model()
    world = WorldModel(module.encoder, module.target_encoder, module.predictor, dict(module.hparams))
    pixels = torch.randint(0, 256, (3, 4, 32, 32), dtype=torch.uint8)
    with pytest.raises(ForecastError, match="looks like pixel values"):
        world.encode(pixels.float())
    from worldmodel.data.transforms import normalize_video

    assert torch.allclose(world.encode(normalize_video(pixels[None])), world.encode(pixels))
    # pixels scaled to 0-1 are a warning (a normalised clip is negative where pixels are dark), not an error
    with pytest.warns(UserWarning, match=r"within \[0, 1\]: it looks like pixel values scaled to 0-1"):
        world.encode(pixels.float() / 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        world.encode(normalize_video(pixels[None]))  # a real normalised clip: no warning


def test_resuming_into_a_longer_run_says_its_schedules_were_replanned(video_folder, tmp_path, capsys):
    """The schedules span the run's max_steps: resumed with another max_steps they follow a new plan (a
    cooldown that had begun starts over). That is said, with how to keep the old plan."""
    folder = video_folder(n=2, num_frames=16)
    lr = {"kind": "warmup_constant_cooldown", "base": 1e-3, "warmup_steps": 1, "cooldown_steps": 2}

    def fit(max_steps: int, ckpt_path=None, progress_bar=False):
        data = VideoDataModule(train_manifests=str(folder / "manifest.csv"), num_frames=4, frame_step=2, crop_size=32,
                               batch_size=2, num_workers=0)
        trainer = L.Trainer(max_steps=max_steps, default_root_dir=str(tmp_path),
                            **{**TRAINER, "enable_progress_bar": progress_bar})
        L.seed_everything(0, verbose=False)
        trainer.fit(JEPAPretrainer(**{**TINY, "lr": lr}), datamodule=data, ckpt_path=ckpt_path)
        return trainer

    fit(4).save_checkpoint(tmp_path / "four.ckpt")
    fit(4, ckpt_path=str(tmp_path / "four.ckpt"))
    assert "note: resumed" not in capsys.readouterr().out  # the same plan: nothing to say
    fit(6, ckpt_path=str(tmp_path / "four.ckpt"), progress_bar=True)  # the note was lost with a progress bar
    out = capsys.readouterr().out
    assert "resumed at step 4 into schedules of 6 steps (trainer.max_steps); the checkpoint's run planned 4" in out
    assert "model.lr now follow" in out and "set model.total_steps 4" in out
