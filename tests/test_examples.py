"""The example manifests and annotations in data/examples/ parse, and name what the built-in corpus holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from worldmodel.data.annotations import read_annotations
from worldmodel.data.corpus import DEFAULT_VIDEOS, plan_corpus
from worldmodel.data.datasets import read_manifest

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "examples"
CORPUS_VIDEOS = EXAMPLES.parent / "corpus" / "videos"  # where `worldmodel corpus --out data/corpus` writes


@pytest.fixture(scope="module")
def plan():
    return plan_corpus(DEFAULT_VIDEOS, seed=0)  # the built-in corpus, planned without rendering it


def test_example_manifests_list_videos_of_the_built_in_corpus(plan):
    recipes = {v.video_id: v.recipe_id for v in plan.videos}
    paths = read_manifest(EXAMPLES / "manifest.txt")
    labelled = read_manifest(EXAMPLES / "manifest_labels.csv")
    assert len(paths) == len(labelled) == 3
    assert all(e.label is None for e in paths)
    for plain, entry in zip(paths, labelled):
        assert plain.path == entry.path
        video = Path(entry.path)
        assert video.parent == CORPUS_VIDEOS  # resolved against the manifest's folder
        assert entry.label == recipes[video.stem]  # the label is the video's recipe, as in manifest.csv


def test_example_annotations_are_rows_of_the_built_in_corpus(plan):
    rows = {(r["video_id"], r["start_frame"]): r for split in ("train", "val") for r in plan.annotation_rows(split)}
    timed = read_annotations(EXAMPLES / "annotations_timestamps.csv")
    framed = read_annotations(EXAMPLES / "annotations_frames.csv", fps=plan.fps)  # or videos_dir=CORPUS_VIDEOS
    assert len(timed) == len(framed) == 4
    for segment in timed + framed:
        start_frame = segment.start_frame if segment.start_frame is not None else round(segment.start_s * plan.fps)
        row = rows[(segment.video_id, start_frame)]
        assert (segment.verb, segment.noun) == (row["verb_class"], row["noun_class"])
        assert segment.start_s == pytest.approx(row["start_frame"] / plan.fps, abs=0.005)
        assert segment.stop_s == pytest.approx(row["stop_frame"] / plan.fps, abs=0.005)
    assert {s.video_id for s in timed}.isdisjoint({s.video_id for s in framed})
