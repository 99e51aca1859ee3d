"""Video decoding, clip sampling, datasets, transforms and the built-in corpus (names loaded on first use)."""

from worldmodel._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        ("ClipSampler", "Clip", "VideoInfo", "VideoError", "read_clips", "read_frames", "read_video_info",
         "frame_start_times"),
        "worldmodel.data.video",
    ),
    **dict.fromkeys(
        ("ClipDataset", "AnticipationDataset", "EpochSampler", "ManifestEntry", "DataFailureError", "DataConfigError",
         "collate_samples", "read_manifest"),
        "worldmodel.data.datasets",
    ),
    **dict.fromkeys(("VideoDataModule", "DataErrorCallback"), "worldmodel.data.datamodule"),
    **dict.fromkeys(("ActionSegment", "ActionVocabulary", "read_annotations", "find_video"), "worldmodel.data.annotations"),
    **dict.fromkeys(("RandomResizedCropVideo", "ResizeCenterCropVideo", "normalize_video"), "worldmodel.data.transforms"),
    **dict.fromkeys(("generate_corpus", "ensure_corpus"), "worldmodel.data.corpus"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
