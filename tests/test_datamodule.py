"""VideoDataModule (batches, resume state, config parsing) and DataErrorCallback inside a real Trainer."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from worldmodel.data.datamodule import DataErrorCallback, VideoDataModule
from worldmodel.data.datasets import DataFailureError, collate_samples


@pytest.fixture
def manifest(tmp_path, make_video) -> Path:
    """Three short index-coded videos of different lengths and sizes, listed with relative paths."""
    for i, (frames, size) in enumerate([(20, (32, 40)), (24, (40, 40)), (16, (40, 32))]):
        make_video(tmp_path / "videos" / f"v{i}.mp4", num_frames=frames, size=size)
    path = tmp_path / "train.csv"
    path.write_text("path,label\n" + "".join(f"videos/v{i}.mp4,{i}\n" for i in range(3)))
    return path


def _small(manifest, **overrides) -> VideoDataModule:
    args = dict(
        train_manifests=str(manifest), num_frames=4, frame_step=2, crop_size=24, batch_size=2, num_workers=0, seed=3
    )
    args.update(overrides)
    return VideoDataModule(**args)


def test_datamodule_builds_and_yields_a_batch(manifest):
    dm = _small(manifest)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 1  # 3 videos, full batches of 2 only
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 4, 24, 24) and batch["video"].dtype == torch.uint8
    assert batch["errors"] == [] and set(batch["label"].tolist()) <= {0, 1, 2}

    # fps takes precedence over the default frame_step; decode_size resizes the short side first
    by_fps = _small(manifest, fps=8.0, decode_size=32, samples_per_epoch=6)
    assert by_fps.clip_sampler.frame_step is None and by_fps.clip_sampler.fps == 8.0
    by_fps.collate_fn = lambda samples: {**collate_samples(samples), "masks": "from the collator"}
    loader = by_fps.train_dataloader()  # builds the dataset itself when setup was not called
    batches = list(loader)
    assert len(batches) == 3 and batches[0]["masks"] == "from the collator"
    assert batches[0]["video"].shape == (2, 3, 4, 24, 24)


def test_loader_resume_state_skips_consumed_batches(manifest):
    dm = _small(manifest, samples_per_epoch=8)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    full = list(loader)
    assert len(full) == 4
    loader.batches_consumed = 2  # what DataProgressCallback records during training
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_consumed": 2, "seed": 3, "batch_size": 2, "world_size": 1,
                     "samples_per_epoch": 8}

    resumed = _small(manifest, samples_per_epoch=8).train_dataloader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 2
    for a, b in zip(full[2:], rest):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
    # the skip is one-shot: the next pass over the loader is the whole epoch again
    assert [batch["index"].tolist() for batch in resumed] == [batch["index"].tolist() for batch in full]

    with pytest.raises(ValueError, match="seed 3 in the checkpoint, 4 now"):
        _small(manifest, samples_per_epoch=8, seed=4).train_dataloader().load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size 2 in the checkpoint, 4 now"):
        _small(manifest, samples_per_epoch=8, batch_size=4).train_dataloader().load_state_dict(state)


def test_missing_builtin_corpus_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = VideoDataModule(num_workers=0)
    with pytest.raises(FileNotFoundError, match="worldmodel corpus --out data/corpus"):
        dm.setup("fit")


def test_clip_timing_given_two_ways_is_refused():
    with pytest.raises(ValueError, match=r"data.fps \(4\) or data.duration_s \(2.0\), not both"):
        VideoDataModule(fps=4, duration_s=2.0)
    assert VideoDataModule(duration_s=2.0).clip_sampler.duration_s == 2.0  # over the default frame_step


def test_datamodule_arguments_parse_with_jsonargparse():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(VideoDataModule, "data")
    cfg = parser.parse_args(
        ["--data.train_manifests=[a.csv,b.csv]", "--data.manifest_weights=[0.7,0.3]", "--data.crop_scale=[0.2,1.0]",
         "--data.fps=4", "--data.frame_step=null"]
    )
    assert cfg.data.train_manifests == ["a.csv", "b.csv"] and cfg.data.manifest_weights == [0.7, 0.3]
    assert tuple(cfg.data.crop_scale) == (0.2, 1.0) and cfg.data.fps == 4.0 and cfg.data.frame_step is None
    assert cfg.data.samples_per_epoch is None and cfg.data.max_failure_ratio == 0.1


class _MeanModel(pl.LightningModule):
    """The smallest trainable thing that consumes video batches."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        return (batch["video"].float().mean() / 255 * self.scale - 0.5) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, callback: DataErrorCallback, max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(tmp_path / "run"),
        logger=CSVLogger(str(tmp_path / "run"), name="logs", version=""),
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        use_distributed_sampler=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def _with_bad_files(tmp_path: Path, manifest: Path) -> Path:
    (tmp_path / "videos" / "empty.mp4").write_bytes(b"")
    path = tmp_path / "mixed.csv"
    path.write_text(manifest.read_text() + "videos/empty.mp4,0\nvideos/gone.mp4,1\n")
    return path


def test_error_callback_counts_logs_and_writes_csv(tmp_path, manifest):
    dm = _small(_with_bad_files(tmp_path, manifest), samples_per_epoch=10, max_failure_ratio=0.9)
    callback = DataErrorCallback(min_samples=1)
    trainer = _trainer(tmp_path, callback, max_steps=5)
    trainer.fit(_MeanModel(), datamodule=dm)
    tracker = callback.tracker
    assert tracker.max_failure_ratio == 0.9  # from the datamodule
    assert set(tracker.counts) == {"empty", "missing"} and tracker.num_ok == 10
    assert trainer.callback_metrics["data/skipped"].item() == tracker.num_failures
    with open(Path(trainer.log_dir) / "data_errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == tracker.num_failures and {r["reason"] for r in rows} == {"empty", "missing"}
    assert callback.state_dict()["counts"] == dict(tracker.counts)


def test_error_callback_stops_a_run_over_the_threshold(tmp_path, manifest):
    dm = _small(_with_bad_files(tmp_path, manifest), samples_per_epoch=10, max_failure_ratio=0.05)
    trainer = _trainer(tmp_path, DataErrorCallback(min_samples=2), max_steps=5)
    with pytest.raises(DataFailureError, match="too many unusable videos"):
        trainer.fit(_MeanModel(), datamodule=dm)
