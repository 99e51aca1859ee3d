"""The built-in procedural corpus: plan, choreography, rendering, files, split, anticipation difficulty.

Rendering tests use a small corpus (4 short videos at 64 px, 8 fps) generated once per module; the
anticipation properties are checked on the plan of the default-size corpus (no rendering needed).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest

from worldmodel.data import corpus as corpus_mod
from worldmodel.data.corpus import (
    ANNOTATION_COLUMNS,
    DEFAULT_VIDEOS,
    NOUNS,
    RECIPES,
    VERBS,
    SceneTrack,
    ensure_corpus,
    format_timestamp,
    generate_corpus,
    is_complete_corpus,
    plan_corpus,
    render_video,
)

SMALL = dict(num_videos=4, size=64, fps=8.0, time_scale=0.5, workers=1)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _parse_ts(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "small"
    generate_corpus(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="module")
def default_plan():
    return plan_corpus(DEFAULT_VIDEOS, seed=0)


# ------------------------------------------------------------------------------------- plan
def test_plan_is_deterministic_and_seed_dependent():
    a, b, c = plan_corpus(12, seed=3), plan_corpus(12, seed=3), plan_corpus(12, seed=4)
    assert a == b
    assert [v.actions for v in a.videos] != [v.actions for v in c.videos]


def test_plan_timings_and_vocabulary(default_plan):
    plan = default_plan
    assert len(plan.videos) == DEFAULT_VIDEOS
    assert len({v.video_id for v in plan.videos}) == DEFAULT_VIDEOS
    for v in plan.videos:
        assert 20.0 <= v.duration_s <= 45.0, v.video_id
        assert v.actions[0].start_frame / v.fps >= 1.0  # room for context before the first action
        previous_stop = 0
        for step, a in enumerate(v.actions):
            assert a.step == step
            assert previous_stop <= a.start_frame < a.stop_frame <= v.num_frames
            assert 1.4 <= (a.stop_frame - a.start_frame) / v.fps <= 4.0, (v.video_id, a)
            previous_stop = a.stop_frame
    counts = plan.class_counts()
    assert set(counts["verb"]) == set(VERBS)
    assert set(counts["noun"]) == set(NOUNS)
    assert len(counts["action"]) >= 25
    # every recipe is used about equally
    per_recipe = Counter(v.recipe_id for v in plan.videos)
    assert set(per_recipe) == set(range(len(RECIPES)))
    assert max(per_recipe.values()) - min(per_recipe.values()) <= 1


def test_split_is_by_video_and_stratified(default_plan):
    train, val = default_plan.split("train"), default_plan.split("val")
    assert {v.video_id for v in train}.isdisjoint({v.video_id for v in val})
    assert len(train) + len(val) == DEFAULT_VIDEOS
    assert 0.2 <= len(val) / DEFAULT_VIDEOS <= 0.3
    assert {v.recipe_id for v in val} == set(range(len(RECIPES)))
    assert len(default_plan.actions("train")) >= 400  # several hundred training actions
    unseen = {a.key for _, a in default_plan.actions("val")} - {a.key for _, a in default_plan.actions("train")}
    assert not unseen


def test_anticipation_is_learnable_but_not_given_away(default_plan):
    """Computed here from the plan's ground truth, independently of `anticipation_baselines`."""
    train = [(v.recipe_id, a.step, (a.verb, a.noun)) for v, a in default_plan.actions("train")]
    val = [(v.recipe_id, a.step, (a.verb, a.noun)) for v, a in default_plan.actions("val")]
    most_frequent = Counter(action for _, _, action in train).most_common(1)[0][0]
    majority_top1 = sum(action == most_frequent for _, _, action in val) / len(val)
    by_step: dict = {}
    for recipe, step, action in train:
        by_step.setdefault((recipe, step), Counter())[action] += 1
    oracle_top1 = np.mean([by_step[(r, s)].most_common(1)[0][0] == action for r, s, action in val])
    assert majority_top1 <= 0.25
    assert oracle_top1 >= 0.80
    assert oracle_top1 < 1.0  # recipes are not perfectly deterministic
    assert corpus_mod.anticipation_baselines(default_plan) == pytest.approx(
        {"majority": majority_top1, "oracle": oracle_top1}
    )


def test_start_scene_does_not_reveal_the_recipe(default_plan):
    """Unused ingredients lie on the counter too: the first frame is consistent with several recipes."""

    def ingredient_sets(recipe):
        base = {s[1] for s in recipe.steps if s[0] == "add"}
        return [base] + [(base - {recipe.steps[at][1]}) | {alt} for at, alt, _ in recipe.substitutions]

    ambiguous = 0
    for v in default_plan.videos:
        on_counter = {name.split("_")[0] for name in v.layout.homes} & set(corpus_mod.INGREDIENTS)
        candidates = [r for r in RECIPES if any(s <= on_counter for s in ingredient_sets(r))]
        assert v.recipe in candidates
        ambiguous += len(candidates) >= 2
    assert ambiguous >= 0.75 * len(default_plan.videos)


def test_format_timestamp():
    assert format_timestamp(0) == "00:00:00.00"
    assert format_timestamp(62.5) == "00:01:02.50"
    assert format_timestamp(3723.456) == "01:02:03.46"


# ------------------------------------------------------------------------------------- choreography
def _frames_of(video, verb, noun=None):
    return [a for a in video.actions if a.verb == verb and (noun is None or a.noun == noun)]


def test_choreography_follows_the_verbs(default_plan):
    """On a soup-like video (pot, water, cupboard): each verb changes the scene the way its name says."""
    video = next(v for v in default_plan.videos if v.recipe.name == "mashed potatoes")
    track = SceneTrack(video)
    # take: the hand reaches the object, then the object is held and travels with the hand
    take = _frames_of(video, "take", "potato")[0]
    home = np.array(video.layout.homes["potato"])
    assert np.allclose(track.xy["potato"][take.start_frame], home)
    last = take.stop_frame - 1
    assert track.place["potato"][last] == corpus_mod.PLACE_HAND and track.grip[last]
    assert np.allclose(track.xy["potato"][last], track.hand[last] + corpus_mod.HOLD)
    assert np.linalg.norm(track.xy["potato"][last] - home) > 2.0  # lifted away
    # put: carried into the pot and released there; it stays inside afterwards
    put = _frames_of(video, "put", "potato")[0]
    after = put.stop_frame - 1
    assert track.place["potato"][after] == corpus_mod.PLACE_POT and not track.grip[after]
    assert np.linalg.norm(track.xy["potato"][-1] - track.xy["pot"][-1]) < corpus_mod.POT_INNER
    # move: the pot slides onto the burner, which heats up
    move = _frames_of(video, "move", "pot")[0]
    assert np.linalg.norm(track.xy["pot"][move.start_frame] - np.array(video.layout.burner)) > 20
    assert np.allclose(track.xy["pot"][move.stop_frame - 1], video.layout.burner)
    assert track.heat[move.stop_frame - 1] > 0.9 and track.heat[move.start_frame] == 0
    # open / close: the cupboard door
    open_, close = _frames_of(video, "open")[0], _frames_of(video, "close")[0]
    assert track.door[open_.start_frame] == 0 and track.door[open_.stop_frame - 1] == 1
    assert track.door[close.stop_frame - 1] == 0
    # pour: the carton tilts, liquid streams and the pot fills; milk is put back in the cupboard
    pour = _frames_of(video, "pour", "milk")[0]
    frames = slice(pour.start_frame, pour.stop_frame)
    assert track.stream[frames].any()
    assert np.abs(track.tilt["milk"][frames]).max() > math.radians(60)
    assert track.level["pot"][pour.stop_frame - 1] > track.level["pot"][pour.start_frame] + 0.3
    assert track.place["milk"][-1] == corpus_mod.PLACE_CUPBOARD
    # stir: the hand circles in the pot and the contents turn with it
    stir = _frames_of(video, "stir")[0]
    mid = range(stir.start_frame + (stir.stop_frame - stir.start_frame) // 4, stir.stop_frame - 3)
    distance = [np.linalg.norm(track.hand[f] - track.xy["pot"][f]) for f in mid]
    assert max(distance) < corpus_mod.POT_INNER and track.spoon[list(mid)].all()
    before, after = track.xy["potato"][stir.start_frame], track.xy["potato"][stir.stop_frame - 1]
    assert np.linalg.norm(before - after) > 0.5
    # wait: the hand idles and the pot starts bubbling
    wait = _frames_of(video, "wait")[0]
    assert track.bubbles[wait.start_frame - 1] == 0 and track.bubbles[wait.stop_frame - 1] == 1
    hand_travel = np.linalg.norm(np.diff(track.hand[wait.stop_frame - 8 : wait.stop_frame], axis=0), axis=1)
    assert hand_travel.max() < 1.0


def test_stream_only_while_pouring(default_plan):
    for video in default_plan.videos[:8]:
        track = SceneTrack(video)
        pouring = np.zeros(video.num_frames, bool)
        for a in _frames_of(video, "pour"):
            pouring[a.start_frame : a.stop_frame] = True
        assert track.stream.any()
        assert not (track.stream & ~pouring).any()


# ------------------------------------------------------------------------------------- rendered files
def test_files_and_manifest(small_corpus):
    root = small_corpus
    info = json.loads((root / "corpus.json").read_text())
    assert info["num_videos"] == 4 and info["size"] == 64
    lines = (root / "manifest.csv").read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        path, label = line.split(",")
        assert path.startswith("videos/") and path.endswith(".mp4") and (root / path).is_file()
        assert 0 <= int(label) < len(RECIPES)
    assert is_complete_corpus(root)
    for name, keys in (("verb_classes.csv", VERBS), ("noun_classes.csv", NOUNS)):
        with open(root / "annotations" / name) as fh:
            rows = list(csv.DictReader(fh))
        assert [(int(r["id"]), r["key"], r["instances"]) for r in rows] == [(i, k, f"['{k}']") for i, k in enumerate(keys)]
    with open(root / "annotations" / "train.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["all_nouns"] == f"['{r['noun']}']" and r["all_noun_classes"] == f"[{r['noun_class']}]" for r in rows)
    assert "## Recipes" in (root / "README.md").read_text()
    assert not list(root.parent.glob(".small.partial-*"))


def test_videos_decode_with_decord(small_corpus):
    gt = json.loads((small_corpus / "ground_truth.json").read_text())
    for video in gt["videos"]:
        reader = decord.VideoReader(str(small_corpus / "videos" / f"{video['video_id']}.mp4"))
        assert len(reader) == video["num_frames"]
        assert reader.get_avg_fps() == pytest.approx(8.0)
        frames = reader.get_batch([0, len(reader) // 2, len(reader) - 1]).asnumpy()
        assert frames.shape == (3, 64, 64, 3)
        assert frames.std() > 10  # a scene, not a blank frame


def test_decoded_frames_match_the_render(small_corpus):
    plan = plan_corpus(4, seed=0, fps=8.0, time_scale=0.5)
    video = plan.videos[1]
    rendered = [f for i, f in enumerate(render_video(video, size=64)) if i in (5, 60)]
    reader = decord.VideoReader(str(small_corpus / "videos" / f"{video.video_id}.mp4"))
    decoded = reader.get_batch([5, 60]).asnumpy().astype(np.float32)
    error = np.abs(decoded - np.stack(rendered).astype(np.float32)).mean()
    assert error < 6.0  # H.264 at crf 18: close to the drawn pixels, and the right frames


def test_annotations_parse_and_match_frames(small_corpus):
    root = small_corpus
    gt = json.loads((root / "ground_truth.json").read_text())
    num_frames = {v["video_id"]: v["num_frames"] for v in gt["videos"]}
    split_of = {v["video_id"]: v["split"] for v in gt["videos"]}
    seen: dict[str, set[str]] = {}
    total = 0
    for split in ("train", "val"):
        with open(root / "annotations" / f"{split}.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            assert tuple(reader.fieldnames) == ANNOTATION_COLUMNS
            rows = list(reader)
        seen[split] = {r["video_id"] for r in rows}
        for r in rows:
            total += 1
            assert split_of[r["video_id"]] == split
            start, stop = int(r["start_frame"]), int(r["stop_frame"])
            assert 0 <= start < stop <= num_frames[r["video_id"]]
            assert round(_parse_ts(r["start_timestamp"]) * 8.0) == start
            assert round(_parse_ts(r["stop_timestamp"]) * 8.0) == stop
            assert r["narration_timestamp"] == r["start_timestamp"]
            assert VERBS[int(r["verb_class"])] == r["verb"] and NOUNS[int(r["noun_class"])] == r["noun"]
            assert r["narration"].startswith(r["verb"])
    assert seen["train"] and seen["val"] and seen["train"].isdisjoint(seen["val"])
    assert total == len(gt["actions"])
    manifests = {
        s: {ln.split(",")[0] for ln in (root / f"manifest_{s}.csv").read_text().splitlines()} for s in ("train", "val")
    }
    assert manifests["val"] == {f"videos/{v}.mp4" for v in seen["val"]}


def test_annotations_read_by_the_library_reader(small_corpus):
    annotations = pytest.importorskip("worldmodel.data.annotations")
    segments = annotations.read_annotations(small_corpus / "annotations" / "train.csv")
    assert segments and all(s.stop_s > s.start_s for s in segments)
    path = annotations.find_video(small_corpus / "videos", segments[0].video_id, segments[0].participant_id)
    assert Path(path).is_file()


def test_generation_is_byte_identical_for_a_seed(small_corpus, tmp_path):
    again = tmp_path / "again"
    generate_corpus(again, seed=0, **{**SMALL, "workers": 2})  # also: worker count does not matter
    assert _hashes(again) == _hashes(small_corpus)
    other = tmp_path / "other"
    generate_corpus(other, seed=1, **{**SMALL, "num_videos": 2})
    first = sorted((other / "videos").iterdir())[0]
    assert hashlib.sha256(first.read_bytes()).hexdigest() not in set(_hashes(small_corpus).values())


def test_cupboard_door_is_visible_in_the_pixels():
    """Rendered frames show the action: the door region changes a lot while the cupboard opens."""
    plan = plan_corpus(16, seed=0, fps=8.0, time_scale=0.5)
    video = next(v for v in plan.videos if any(a.verb == "open" for a in v.actions))
    opening = next(a for a in video.actions if a.verb == "open")
    wanted = {opening.start_frame, opening.stop_frame - 1, opening.start_frame - 1}
    frames = {i: f.astype(np.float32) for i, f in enumerate(render_video(video, size=64)) if i in wanted}
    x0, y0, x1, y1 = video.layout.cupboard
    scale = 64 / corpus_mod.WORLD
    cols = slice(int((x0 + 8) * scale), int((x1 - 8) * scale))
    if video.layout.mirror:
        cols = slice(64 - cols.stop, 64 - cols.start)
    rows = slice(int((y0 + 6) * scale), int((y1 - 6) * scale))
    region = lambda f: frames[f][rows, cols]  # noqa: E731
    change = np.abs(region(opening.stop_frame - 1) - region(opening.start_frame)).mean()
    idle = np.abs(region(opening.start_frame) - region(opening.start_frame - 1)).mean()
    assert change > 20 and change > 3 * idle


# ------------------------------------------------------------------------------------- ensure_corpus
def test_ensure_corpus_is_idempotent(tmp_path, capsys):
    out = tmp_path / "c"
    params = dict(num_videos=2, size=32, fps=6.0, time_scale=0.3, workers=1)
    manifest = ensure_corpus(out, **params)
    assert manifest == out / "manifest.csv" and is_complete_corpus(out)
    # it says what it is doing while it writes (a minute with the default size), then the summary;
    # 2 videos are split 1 / 1, so that a probe has both splits
    said = capsys.readouterr().err
    assert f"writing the built-in corpus to {out}" in said and "2 videos (1 train / 1 val)" in said
    stamp = manifest.stat().st_mtime_ns
    assert ensure_corpus(out, **params) == manifest
    assert ensure_corpus(out) == manifest  # no parameters: whatever corpus is there
    assert manifest.stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(ValueError, match="num_videos=2"):
        ensure_corpus(out, **{**params, "num_videos": 3})
    # an incomplete corpus (a video lost) is regenerated
    victim = sorted((out / "videos").iterdir())[0]
    victim.unlink()
    assert not is_complete_corpus(out)
    ensure_corpus(out, **params)
    assert victim.is_file() and is_complete_corpus(out)


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "c"
    params = dict(num_videos=3, size=32, fps=6.0, time_scale=0.3, workers=1)

    def crash(message: str) -> None:  # called after each finished video: fail after the first
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        generate_corpus(out, log=crash, **params)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder was removed too
    # a folder left by a process killed hard (no cleanup) is ignored; a half-written out_dir is not
    # mistaken for a corpus and is rebuilt
    (tmp_path / ".c.partial-deadbeef" / "videos").mkdir(parents=True)
    out.mkdir()
    (out / "corpus.json").write_text(json.dumps({"video_ids": ["x"]}))
    assert not is_complete_corpus(out)
    ensure_corpus(out, **params)
    assert is_complete_corpus(out)
    assert len((out / "manifest.csv").read_text().splitlines()) == 3


def test_a_one_video_corpus_says_its_validation_split_is_empty(tmp_path):
    summary = generate_corpus(tmp_path / "one", num_videos=1, size=32, fps=6.0, time_scale=0.3, workers=1)
    assert (summary.num_train_videos, summary.num_val_videos) == (1, 0)
    assert "1 video (1 train / 0 val)" in str(summary)
    assert "warning: the val split has no video (val.csv is empty)" in str(summary)
    # no validation action, no baseline: null in corpus.json (strict JSON; it was NaN), said in its README
    info = json.loads((tmp_path / "one" / "corpus.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert info["baselines"] == {"majority": None, "oracle": None}
    assert "none (a split has no action)" in (tmp_path / "one" / "README.md").read_text()
    assert "warning" not in str(generate_corpus(tmp_path / "two", num_videos=2, size=32, fps=6.0, time_scale=0.3,
                                                workers=1))  # fmt: skip


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not .*a worldmodel corpus"):
        ensure_corpus(out, num_videos=1, size=32, time_scale=0.3, workers=1)
    assert (out / "thesis.tex").read_text() == "precious"
    # a corpus.json alone does not make a folder a corpus (it was enough, and everything else was deleted)
    (out / "corpus.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"\(corpus.json, thesis.tex\).*would delete"):
        generate_corpus(out, num_videos=1, size=32, time_scale=0.3, workers=1)
    assert (out / "thesis.tex").read_text() == "precious"
    # nor does a real corpus with a user's files inside it: regenerating it keeps refusing until they move out
    real = tmp_path / "real"
    generate_corpus(real, num_videos=1, size=32, time_scale=0.3, workers=1)
    (real / "probes").mkdir()
    (real / "probes" / "metrics.json").write_text("{}")
    (real / "videos" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"\(probes, videos/notes.txt\)"):
        generate_corpus(real, num_videos=1, seed=1, size=32, time_scale=0.3, workers=1)
    assert (real / "probes" / "metrics.json").exists() and (real / "videos" / "notes.txt").exists()
    (real / "probes" / "metrics.json").unlink()
    (real / "probes").rmdir()
    (real / "videos" / "notes.txt").unlink()
    generate_corpus(real, num_videos=1, seed=1, size=32, time_scale=0.3, workers=1)  # a corpus alone: replaced
    assert json.loads((real / "corpus.json").read_text())["seed"] == 1


def test_cli_reports_bad_options_and_outputs_without_a_traceback(tmp_path, capsys):
    from worldmodel.cli import main

    (tmp_path / "a_file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    for argv, message in [
        (["--size", "33"], "size must be an even number"),
        (["--videos", "0"], "num_videos must be in 1..100000, got 0"),
        (["--videos", "1000000000"], "num_videos must be in 1..100000"),  # was a bare MemoryError
        (["--fps", "0"], "fps must be a number of frames per second in [1, 120]"),
        (["--fps", "0.01"], "fps must be a number of frames per second in [1, 120]"),  # 40-minute videos of 24 frames
    ]:
        assert main(["corpus", "--out", str(tmp_path / "new"), *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["corpus", "--out", str(tmp_path / "a_file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert main(["corpus", "--out", str(tmp_path / "mine"), "--videos", "1"]) == 2
    assert "not (or not only) a worldmodel corpus" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious" and not (tmp_path / "new").exists()


def test_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_corpus(tmp_path / "x", num_videos=1, size=63)
    with pytest.raises(ValueError, match="num_videos"):
        plan_corpus(0)


@pytest.mark.slow
def test_default_corpus_renders_within_two_minutes(tmp_path):
    started = time.perf_counter()
    summary = generate_corpus(tmp_path / "full")
    elapsed = time.perf_counter() - started
    assert summary.num_videos == DEFAULT_VIDEOS and is_complete_corpus(tmp_path / "full")
    assert elapsed < 120, f"default corpus took {elapsed:.0f} s"


def test_a_script_without_a_main_guard_still_gets_its_corpus(tmp_path):
    """Spawned render workers re-import the caller's script; one that builds the corpus at import (no
    `if __name__ == "__main__":`) used to die with BrokenProcessPool. The rest is rendered in-process."""
    script = tmp_path / "noguard.py"
    script.write_text("from worldmodel.data.corpus import generate_corpus\n"
                      "generate_corpus('out', num_videos=8, size=32, workers=2, seed=0)\nprint('done')\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "done" and "rendering in this process" in proc.stderr
    assert len(list((tmp_path / "out" / "videos").glob("*.mp4"))) == 8


def test_which_recipes_a_small_corpus_holds_depends_on_its_seed():
    """Fewer videos than recipes: the seed picks the recipes (it was always recipes 0..n-1, never the bowl
    ones, whatever the seed); corpora of whole multiples of 8 hold each recipe equally often, as before."""
    picks = {tuple(sorted({v.recipe_id for v in plan_corpus(4, seed).videos})) for seed in range(6)}
    assert len(picks) > 1 and all(len(p) == 4 for p in picks)
    counts = Counter(v.recipe_id for v in plan_corpus(24, 3).videos)
    assert sorted(counts) == list(range(8)) and set(counts.values()) == {3}


def test_a_sigterm_while_rendering_removes_the_temporary_folder(tmp_path):
    """`worldmodel corpus` stopped by SIGTERM (a scheduler, `timeout`, `kill`) exits 143 and leaves no
    half-written `.partial` folder behind, with two rendering processes (the default)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "worldmodel.cli", "corpus", "--out", str(out), "--videos", "16",
                             "--size", "64", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob(".c.partial-*/videos/*.mp4")):
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "stopped by SIGTERM; nothing was written to" in err, err[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_the_finished_corpus_is_moved_into_place_with_sigterm_back_to_default(tmp_path, monkeypatch):
    """SIGTERM raises only while rendering: an exception in the middle of the final move (rename the old
    corpus aside, the new one in) could lose the finished corpus, so by then the signal ends the process
    as it always did."""
    import signal

    from worldmodel.data import corpus

    seen = []
    move = corpus._move_into_place

    def spy(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGTERM))
        return move(*args, **kwargs)

    monkeypatch.setattr(corpus, "_move_into_place", spy)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    generate_corpus(tmp_path / "c", num_videos=1, size=32, fps=6.0, time_scale=0.3, workers=1)
    assert seen == [signal.SIG_DFL] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
