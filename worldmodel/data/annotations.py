"""Action annotations in the EPIC-KITCHENS-100 layout, and the verb / noun / action vocabulary.

An annotation CSV has one action segment per row. Columns (header names as in EPIC-KITCHENS-100):

- ``video_id`` (required); ``participant_id`` and ``narration_id`` (optional);
- the segment's time: ``start_timestamp`` / ``stop_timestamp`` as ``HH:MM:SS.ff`` (``HH:MM:SS``,
  ``MM:SS`` and plain seconds such as ``12.5`` are accepted too), or ``start_frame`` / ``stop_frame``.
  A row with frame numbers and no timestamps gets its seconds as ``frame / fps`` (frame 0 is the first
  decoded frame) from the video's own frame rate (`read_video_info`; for a variable frame rate video,
  the frame's real start time) or an fps given by the caller;
- ``verb_class`` and ``noun_class`` (required, integers >= 0); ``verb`` and ``noun`` names (optional).

Vocabulary and pairs unseen in training
---------------------------------------
Verbs and nouns are indexed by their class ids. Actions are the (verb, noun) pairs that occur in the
TRAINING annotations, indexed in sorted order; the action head has one output per such pair. A
validation row whose pair never occurs in training keeps its row (nothing is filtered out, unlike
V-JEPA 2's evaluation, which drops those rows) and gets the action label ``-1``:

- no output of the action head stands for it, so it can never be predicted correctly: it counts as a
  miss in top-1 / top-k accuracy of the action head;
- for mean-class recall, the pair is still a class present in the split: the probe passes each -1
  row's pair along, and every distinct unseen pair enters the class average with recall 0 (its rows
  still count in the verb and noun metrics as usual). `worldmodel.metrics` owns that computation.

The vocabulary is saved as JSON (`ActionVocabulary.save` / `load`) next to a trained probe, so that
evaluation maps pairs to the same action ids as training did.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from worldmodel.data.video import REMUX_EXTENSIONS, VIDEO_EXTENSIONS, VideoInfo, read_video_info

__all__ = [
    "ActionSegment",
    "ActionVocabulary",
    "find_video",
    "parse_timestamp",
    "read_annotations",
]


def parse_timestamp(s: str | float | int) -> float:
    """Seconds from ``HH:MM:SS.ff``, ``HH:MM:SS``, ``MM:SS(.ff)`` or plain seconds (``"12.5"``).

    >>> parse_timestamp("00:01:02.50")
    62.5
    """
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        seconds = float(s)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"invalid timestamp {s!r}: expected a finite number of seconds >= 0")
        return seconds
    text = str(s).strip()
    expected = "expected HH:MM:SS.ff, HH:MM:SS, MM:SS or seconds (e.g. 00:01:02.50 or 62.5)"
    if not text:
        raise ValueError(f"empty timestamp: {expected}")
    parts = text.split(":")
    if len(parts) > 3:
        raise ValueError(f"invalid timestamp {text!r}: {expected}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"invalid timestamp {text!r}: {expected}") from None
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"invalid timestamp {text!r}: parts must be non-negative numbers")
    if len(parts) > 1:
        # hours and minutes are whole numbers; minutes and seconds below 60
        if any(not p.strip().isdigit() for p in parts[:-1]):
            raise ValueError(f"invalid timestamp {text!r}: hours and minutes must be whole numbers")
        if values[-1] >= 60 or (len(values) == 3 and values[1] >= 60):
            raise ValueError(f"invalid timestamp {text!r}: minutes and seconds must be below 60")
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds


@dataclass(frozen=True)
class ActionSegment:
    """One annotated action: which video, when (seconds), and its verb / noun classes."""

    video_id: str
    start_s: float
    stop_s: float
    verb: int
    noun: int
    participant_id: str | None = None
    narration_id: str | None = None
    verb_name: str | None = None
    noun_name: str | None = None
    start_frame: int | None = None
    stop_frame: int | None = None
    source: str = ""  # "file.csv:line", for error messages

    @property
    def pair(self) -> tuple[int, int]:
        return (self.verb, self.noun)


def _video_candidates(videos_dir: str | os.PathLike, video_id: str, participant_id: str | None):
    """Folders to look in, in order: DIR, then DIR/<participant>/videos (and DIR/<participant>)."""
    root = Path(videos_dir)
    folders = [root]
    participants = [participant_id] if participant_id else []
    # EPIC-KITCHENS video ids start with the participant id (P01_01 -> P01)
    if "_" in video_id and video_id.split("_")[0] not in participants:
        participants.append(video_id.split("_")[0])
    for pid in participants:
        folders += [root / pid / "videos", root / pid]
    extensions = []
    for ext in VIDEO_EXTENSIONS:
        extensions += [ext, ext.upper()]
    return folders, extensions


def find_video(videos_dir: str | os.PathLike, video_id: str, participant_id: str | None = None) -> str:
    """Path of ``video_id``'s file: ``DIR/<video_id>.<ext>`` or ``DIR/<participant_id>/videos/<video_id>.<ext>``.

    Extensions are VIDEO_EXTENSIONS in lower or upper case (``P01_01.MP4`` as EPIC-KITCHENS ships it).
    Without ``participant_id`` the participant is read from an EPIC-style id (``P01_01`` -> ``P01``).
    Also accepted: ``DIR/<participant_id>/<video_id>.<ext>``. Raises FileNotFoundError listing the
    places tried. When several files fit, the first wins: folders in the order above, then extensions in
    VIDEO_EXTENSIONS order (``.mp4`` first), lower case first; except that MPEG streams (REMUX_EXTENSIONS:
    ``.ts``, ``.mpg``, ...; refused when read) come after every other file in every folder, so the remux
    ``P01/videos/V1.mp4`` wins over ``V1.ts``.
    """
    folders, extensions = _video_candidates(videos_dir, video_id, participant_id)
    for streams in (False, True):  # readable containers first, wherever they are
        for folder in folders:
            for ext in extensions:
                if (ext.lower() in REMUX_EXTENSIONS) != streams:
                    continue
                candidate = folder / f"{video_id}{ext}"
                if candidate.is_file():
                    return str(candidate)
    tried = ", ".join(str(folder / f"{video_id}.<ext>") for folder in folders)
    raise FileNotFoundError(
        f"video {video_id!r} not found under {videos_dir}: tried {tried} with <ext> one of "
        f"{', '.join(e.lstrip('.') for e in VIDEO_EXTENSIONS)} (lower or upper case). "
        "Check --videos / videos_dir and the annotation's video_id."
    )


_TIME_COLUMNS = (("start_timestamp", "stop_timestamp"), ("start_frame", "stop_frame"))


def read_annotations(
    path: str | os.PathLike,
    videos_dir: str | os.PathLike | None = None,
    fps: float | None = None,
) -> list[ActionSegment]:
    """Read an EPIC-KITCHENS-100 style CSV into ActionSegments, in file order.

    Rows with frame numbers and no timestamps need a frame rate: ``fps`` when given, else each
    video's own (found under ``videos_dir`` and probed once per video). Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    info_cache: dict[str, VideoInfo] = {}

    def frame_time(video_id: str, participant_id: str | None, where: str, frame: int) -> float:
        if fps is not None:
            return frame / float(fps)
        if videos_dir is None:
            raise ValueError(
                f"{where}: row gives start_frame/stop_frame without timestamps; pass videos_dir "
                "(the frame rate is read from the video) or fps"
            )
        if video_id not in info_cache:
            info_cache[video_id] = read_video_info(find_video(videos_dir, video_id, participant_id))
        return float(info_cache[video_id].times_of(np.array([frame]))[0])

    segments: list[ActionSegment] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if not columns:
            raise ValueError(f"{path}: empty annotation file (expected a header line with video_id, ...)")
        reader.fieldnames = columns
        required = ["video_id", "verb_class", "noun_class"]
        missing = [c for c in required if c not in columns]
        has_time = any(start in columns for start, _ in _TIME_COLUMNS)
        if missing or not has_time:
            if not has_time:
                missing.append("start_timestamp/stop_timestamp or start_frame/stop_frame")
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}. "
                "Annotations use the EPIC-KITCHENS-100 layout (see worldmodel.data.annotations)."
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            row = {k: (v.strip() if isinstance(v, str) else "") for k, v in row.items() if k is not None}
            if not any(row.values()):
                continue  # blank line
            segments.append(_parse_row(row, where, frame_time))
    if not segments:
        raise ValueError(f"{path}: no annotation rows")
    return segments


def _parse_int(row: dict, column: str, where: str, minimum: int = 0) -> int:
    value = row.get(column, "")
    try:
        number = int(value)
    except ValueError:
        try:  # "12.0" from spreadsheet exports
            number = int(float(value))
            if number != float(value):
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}: {column} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{where}: {column} must be >= {minimum}, got {number}")
    return number


def _parse_row(row: dict, where: str, frame_time) -> ActionSegment:
    video_id = row.get("video_id", "")
    if not video_id:
        raise ValueError(f"{where}: empty video_id")
    participant_id = row.get("participant_id") or None
    start_frame = _parse_int(row, "start_frame", where) if row.get("start_frame") else None
    stop_frame = _parse_int(row, "stop_frame", where) if row.get("stop_frame") else None
    try:
        start_s = parse_timestamp(row["start_timestamp"]) if row.get("start_timestamp") else None
        stop_s = parse_timestamp(row["stop_timestamp"]) if row.get("stop_timestamp") else None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if start_s is None:
        if start_frame is None:
            raise ValueError(f"{where}: row has neither start_timestamp nor start_frame")
        start_s = frame_time(video_id, participant_id, where, start_frame)
        if stop_s is None and stop_frame is not None:
            stop_s = frame_time(video_id, participant_id, where, stop_frame)
    if stop_s is None:
        stop_s = start_s  # an instant; anticipation only needs the start
    if stop_s < start_s:
        raise ValueError(f"{where}: action stops ({stop_s:.3f} s) before it starts ({start_s:.3f} s)")
    return ActionSegment(
        video_id=video_id,
        start_s=float(start_s),
        stop_s=float(stop_s),
        verb=_parse_int(row, "verb_class", where),
        noun=_parse_int(row, "noun_class", where),
        participant_id=participant_id,
        narration_id=row.get("narration_id") or None,
        verb_name=row.get("verb") or None,
        noun_name=row.get("noun") or None,
        start_frame=start_frame,
        stop_frame=stop_frame,
        source=where,
    )


@dataclass
class ActionVocabulary:
    """Verb, noun and action (verb, noun pair) classes; actions are the pairs seen in training.

    ``action_id(verb, noun)`` is the pair's index in the sorted ``actions`` list, or -1 for a pair that
    never occurs in the training annotations (see the module docstring for how -1 is scored).
    """

    num_verbs: int
    num_nouns: int
    actions: list[tuple[int, int]]
    verb_names: dict[int, str] = field(default_factory=dict)
    noun_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.actions = sorted({(int(v), int(n)) for v, n in self.actions})
        for verb, noun in self.actions:
            if not (0 <= verb < self.num_verbs and 0 <= noun < self.num_nouns):
                raise ValueError(
                    f"action ({verb}, {noun}) is outside the vocabulary of {self.num_verbs} verbs and "
                    f"{self.num_nouns} nouns"
                )
        self._action_index = {pair: i for i, pair in enumerate(self.actions)}

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @classmethod
    def from_annotations(
        cls,
        train_segments: Sequence[ActionSegment] | str | os.PathLike,
        num_verbs: int | None = None,
        num_nouns: int | None = None,
        eval_segments: Iterable[ActionSegment] | str | os.PathLike = (),
    ) -> "ActionVocabulary":
        """Build from training segments: actions are the training pairs.

        Segments come from `read_annotations`; a CSV path is read with it (rows that give frame numbers
        only need `read_annotations(path, videos_dir=...)` first). ``num_verbs`` / ``num_nouns`` default
        to max class id + 1 over the training segments and ``eval_segments`` (which count for the verb
        and noun heads' sizes but never add actions); explicit counts (e.g. 97 verbs and 300 nouns for
        EPIC-KITCHENS-100) must cover every id seen.
        """
        if isinstance(train_segments, (str, os.PathLike)):
            train_segments = read_annotations(train_segments)
        if isinstance(eval_segments, (str, os.PathLike)):
            eval_segments = read_annotations(eval_segments)
        train_segments = list(train_segments)
        if not all(isinstance(s, ActionSegment) for s in train_segments):
            raise TypeError("from_annotations takes ActionSegments (from read_annotations) or an annotation CSV path")
        if not train_segments:
            raise ValueError("cannot build an action vocabulary from zero training segments")
        everything = train_segments + list(eval_segments)
        max_verb = max(s.verb for s in everything)
        max_noun = max(s.noun for s in everything)
        if num_verbs is None:
            num_verbs = max_verb + 1
        elif num_verbs <= max_verb:
            raise ValueError(f"num_verbs={num_verbs} but the annotations use verb_class {max_verb}")
        if num_nouns is None:
            num_nouns = max_noun + 1
        elif num_nouns <= max_noun:
            raise ValueError(f"num_nouns={num_nouns} but the annotations use noun_class {max_noun}")
        verb_names = {s.verb: s.verb_name for s in everything if s.verb_name}
        noun_names = {s.noun: s.noun_name for s in everything if s.noun_name}
        return cls(
            num_verbs=num_verbs,
            num_nouns=num_nouns,
            actions=[s.pair for s in train_segments],
            verb_names=verb_names,
            noun_names=noun_names,
        )

    def action_id(self, verb: int, noun: int) -> int:
        """Index of the (verb, noun) pair, or -1 when the pair was not seen in training."""
        return self._action_index.get((int(verb), int(noun)), -1)

    def check(self, segment: ActionSegment) -> None:
        """Raise if the segment's verb or noun has no output in this vocabulary."""
        if not 0 <= segment.verb < self.num_verbs:
            raise ValueError(
                f"{segment.source}: verb_class {segment.verb} is outside the vocabulary ({self.num_verbs} "
                "verbs); build it with eval_segments or an explicit num_verbs"
            )
        if not 0 <= segment.noun < self.num_nouns:
            raise ValueError(
                f"{segment.source}: noun_class {segment.noun} is outside the vocabulary ({self.num_nouns} "
                "nouns); build it with eval_segments or an explicit num_nouns"
            )

    def to_dict(self) -> dict:
        return {
            "format": "worldmodel.action_vocabulary/1",
            "num_verbs": self.num_verbs,
            "num_nouns": self.num_nouns,
            "actions": [list(pair) for pair in self.actions],
            "verb_names": {str(k): v for k, v in sorted(self.verb_names.items())},
            "noun_names": {str(k): v for k, v in sorted(self.noun_names.items())},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ActionVocabulary":
        try:
            return cls(
                num_verbs=int(data["num_verbs"]),
                num_nouns=int(data["num_nouns"]),
                actions=[(int(v), int(n)) for v, n in data["actions"]],
                verb_names={int(k): str(v) for k, v in data.get("verb_names", {}).items()},
                noun_names={int(k): str(v) for k, v in data.get("noun_names", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not an action vocabulary: {err!r}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON, atomically (readers see the old file or the whole new one)."""
        from worldmodel.checkpoints import atomic_write_bytes  # here: data loading need not import Lightning

        atomic_write_bytes((json.dumps(self.to_dict(), indent=1) + "\n").encode(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ActionVocabulary":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the action vocabulary: {err}") from None
