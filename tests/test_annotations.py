"""Annotation parsing (EPIC-KITCHENS-100 layout), video lookup and the action vocabulary."""

from __future__ import annotations

import json

import pytest

from conftest import write_vfr_video
from worldmodel.data.annotations import (
    ActionSegment,
    ActionVocabulary,
    find_video,
    parse_timestamp,
    read_annotations,
)

EPIC_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
)


def _write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("00:00:00.14", 0.14),
        ("00:01:02.50", 62.5),
        ("01:00:00", 3600.0),
        ("1:02.5", 62.5),
        ("12.5", 12.5),
        ("0", 0.0),
        (3.25, 3.25),
    ],
)
def test_parse_timestamp_formats(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "00:61:00", "00:00:60.5", "-1", "1:2:3:4", "00:xx:01", "1.5:00"])
def test_parse_timestamp_rejects_bad_values(text):
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp(text)


def test_read_epic_csv_with_timestamps(tmp_path):
    csv_path = _write(
        tmp_path / "train.csv",
        EPIC_HEADER
        + "P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,8,['door'],[8]\n"
        + 'P01_01_1,P01,P01_01,00:00:02.629,00:00:04.37,00:00:06.17,262,370,turn on light,turn-on,6,light,114,"[\'light\', \'lamp\']","[114, 7]"\n',
    )
    segments = read_annotations(csv_path)
    assert len(segments) == 2
    first, second = segments
    assert first == ActionSegment(
        video_id="P01_01",
        start_s=pytest.approx(0.14),
        stop_s=pytest.approx(3.37),
        verb=3,
        noun=8,
        participant_id="P01",
        narration_id="P01_01_0",
        verb_name="open",
        noun_name="door",
        start_frame=8,
        stop_frame=202,
        source=f"{csv_path}:2",
    )
    # timestamps win over frame numbers when both are present; quoted commas do not shift columns
    assert second.start_s == pytest.approx(4.37) and second.stop_s == pytest.approx(6.17)
    assert (second.verb, second.noun, second.noun_name) == (6, 114, "light")


def test_frame_numbers_use_the_videos_fps(tmp_path, make_video):
    make_video(tmp_path / "videos" / "vid_a.mp4", num_frames=12, fps=10.0, size=(32, 32))
    make_video(tmp_path / "videos" / "P02" / "videos" / "P02_03.mp4", num_frames=12, fps=5.0, size=(32, 32))
    csv_path = _write(
        tmp_path / "frames.csv",
        "video_id,start_frame,stop_frame,verb_class,noun_class\n"
        "vid_a,25,40,1,2\n"
        "P02_03,25,40,0,0\n",
    )
    a, b = read_annotations(csv_path, videos_dir=tmp_path / "videos")
    assert (a.start_s, a.stop_s) == pytest.approx((2.5, 4.0))  # 10 fps
    assert (b.start_s, b.stop_s) == pytest.approx((5.0, 8.0))  # 5 fps, EPIC layout
    assert (a.start_frame, a.stop_frame) == (25, 40)
    # an explicit frame rate needs no videos
    a, _ = read_annotations(csv_path, fps=50.0)
    assert a.start_s == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"frames\.csv:2.*videos_dir"):
        read_annotations(csv_path)


def test_frame_numbers_in_a_variable_frame_rate_video_are_the_frames_times(tmp_path):
    write_vfr_video(tmp_path / "videos" / "vfr.mp4")  # frames 0-20 at 0-0.4 s, then 100 ms apart
    csv_path = _write(tmp_path / "frames.csv", "video_id,start_frame,stop_frame,verb_class,noun_class\nvfr,10,30,1,2\n")
    (segment,) = read_annotations(csv_path, videos_dir=tmp_path / "videos")
    assert (segment.start_s, segment.stop_s) == pytest.approx((0.2, 1.4), abs=1e-6)


def test_annotation_errors_name_file_and_line(tmp_path):
    missing_col = _write(tmp_path / "a.csv", "video_id,start_timestamp,verb_class\nv,00:00:01.00,1\n")
    with pytest.raises(ValueError, match=r"a\.csv: missing column\(s\) noun_class"):
        read_annotations(missing_col)
    no_time = _write(tmp_path / "b.csv", "video_id,verb_class,noun_class\nv,1,2\n")
    with pytest.raises(ValueError, match="start_timestamp/stop_timestamp or start_frame/stop_frame"):
        read_annotations(no_time)
    bad_time = _write(
        tmp_path / "c.csv",
        "video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
        "v,00:00:01.00,00:00:02.00,1,2\n"
        "v,00:00:01.00,00:0x:02.00,1,2\n",
    )
    with pytest.raises(ValueError, match=r"c\.csv:3: invalid timestamp"):
        read_annotations(bad_time)
    bad_class = _write(
        tmp_path / "d.csv", "video_id,start_timestamp,stop_timestamp,verb_class,noun_class\nv,1.0,2.0,open,2\n"
    )
    with pytest.raises(ValueError, match=r"d\.csv:2: verb_class must be an integer"):
        read_annotations(bad_class)
    backwards = _write(
        tmp_path / "e.csv", "video_id,start_timestamp,stop_timestamp,verb_class,noun_class\nv,5.0,2.0,1,2\n"
    )
    with pytest.raises(ValueError, match=r"e\.csv:2: action stops"):
        read_annotations(backwards)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_annotations(tmp_path / "nope.csv")


def test_find_video_layouts(tmp_path):
    (tmp_path / "P01" / "videos").mkdir(parents=True)
    epic = tmp_path / "P01" / "videos" / "P01_01.MP4"  # EPIC ships upper-case extensions
    flat = tmp_path / "clip7.webm"
    epic.write_bytes(b"x")
    flat.write_bytes(b"x")
    assert find_video(tmp_path, "P01_01", "P01") == str(epic)
    assert find_video(tmp_path, "P01_01") == str(epic)  # participant read from the id
    assert find_video(tmp_path, "clip7") == str(flat)
    # an MPEG stream (refused when read) loses to a readable file of the same id in any folder: its remux
    stream = tmp_path / "P01_01.ts"
    stream.write_bytes(b"x")
    assert find_video(tmp_path, "P01_01") == str(epic)
    epic.unlink()
    assert find_video(tmp_path, "P01_01") == str(stream)  # the only one: found, and refused with advice when read
    (tmp_path / "P01_01.mkv").write_bytes(b"x")  # otherwise folders first: the top folder wins
    epic.write_bytes(b"x")
    assert find_video(tmp_path, "P01_01") == str(tmp_path / "P01_01.mkv")
    with pytest.raises(FileNotFoundError) as err:
        find_video(tmp_path, "P09_02", "P09")
    message = str(err.value)
    assert "P09_02" in message and str(tmp_path / "P09" / "videos" / "P09_02.<ext>") in message
    assert str(tmp_path / "P09_02.<ext>") in message and "mp4" in message


def _segment(verb: int, noun: int, video_id: str = "v", verb_name=None) -> ActionSegment:
    return ActionSegment(video_id, 1.0, 2.0, verb, noun, verb_name=verb_name, source="test.csv:1")


def test_vocabulary_actions_are_training_pairs(tmp_path):
    train = [_segment(2, 5, verb_name="cut"), _segment(0, 1), _segment(2, 5), _segment(1, 0)]
    val = [_segment(4, 1), _segment(0, 7)]
    vocab = ActionVocabulary.from_annotations(train, eval_segments=val)
    assert (vocab.num_verbs, vocab.num_nouns) == (5, 8)  # max id + 1 over train and val
    assert vocab.actions == [(0, 1), (1, 0), (2, 5)]  # seen in training, sorted, no duplicates
    assert vocab.num_actions == 3
    assert [vocab.action_id(v, n) for v, n in [(0, 1), (1, 0), (2, 5)]] == [0, 1, 2]
    # pairs unseen in training (even made of known verbs and nouns) have no action id
    assert vocab.action_id(0, 0) == -1 and vocab.action_id(4, 1) == -1
    assert vocab.verb_names == {2: "cut"}

    only_train = ActionVocabulary.from_annotations(train)
    assert (only_train.num_verbs, only_train.num_nouns) == (3, 6)
    with pytest.raises(ValueError, match="verb_class 4 is outside the vocabulary"):
        only_train.check(val[0])
    explicit = ActionVocabulary.from_annotations(train, num_verbs=97, num_nouns=300)
    assert (explicit.num_verbs, explicit.num_nouns) == (97, 300)
    with pytest.raises(ValueError, match="num_nouns=3"):
        ActionVocabulary.from_annotations(train, num_nouns=3)

    path = tmp_path / "probe" / "vocabulary.json"
    vocab.save(path)
    assert json.loads(path.read_text())["actions"] == [[0, 1], [1, 0], [2, 5]]
    loaded = ActionVocabulary.load(path)
    assert loaded == vocab and loaded.action_id(2, 5) == 2 and loaded.action_id(4, 1) == -1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        ActionVocabulary.load(tmp_path / "bad.json")
