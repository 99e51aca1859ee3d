"""worldmodel: self-supervised video world models (latent JEPA) with Lightning.

The main entry points, importable from here (loaded on first use):

    from worldmodel import WorldModel          # load a checkpoint / export: encode, forecast
    from worldmodel import JEPAPretrainer, VideoDataModule   # pretraining in one's own Lightning Trainer
    from worldmodel import ClipDataset, AnticipationDataset, ClipSampler, read_clips

Subpackages: `worldmodel.data` (decoding, datasets, transforms, corpus), `worldmodel.models` (encoder,
predictor, probe heads); modules `masks`, `objectives`, `schedules`, `metrics`, `checkpoints`,
`forecast`, `probe`, `pretrain`.
"""

from worldmodel._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "WorldModel": "worldmodel.forecast",
    "ForecastError": "worldmodel.forecast",
    "JEPAPretrainer": "worldmodel.pretrain",
    "VideoDataModule": "worldmodel.data.datamodule",
    "ClipDataset": "worldmodel.data.datasets",
    "AnticipationDataset": "worldmodel.data.datasets",
    "ClipSampler": "worldmodel.data.video",
    "VideoError": "worldmodel.data.video",
    "read_clips": "worldmodel.data.video",
    "read_frames": "worldmodel.data.video",
    "read_video_info": "worldmodel.data.video",
    "VideoViT": "worldmodel.models.vit",
    "build_vit": "worldmodel.models.vit",
    "Predictor": "worldmodel.models.predictor",
    "MaskCollator": "worldmodel.masks",
    "export_model": "worldmodel.checkpoints",
    "load_model_parts": "worldmodel.checkpoints",
    "CheckpointError": "worldmodel.checkpoints",
    "mean_class_recall": "worldmodel.metrics",
}
__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
