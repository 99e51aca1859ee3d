"""Which clip: manifests, the pretraining ClipDataset, the anticipation dataset, the epoch sampler.

Every random choice of a sample is a pure function of (seed, epoch, index): the sample's generator is
``np.random.default_rng([seed, epoch, index])`` and drives the clip start, the crop and the flip, and
the replacement of unusable files. Samplers yield ``(epoch, index)`` keys, so a batch is the same
whatever the number of DataLoader workers, ranks, or where a run was resumed.

Unusable videos (missing, empty, truncated, corrupt, not a video: a `VideoError` from decoding) never
stop a run and are never replaced silently: the item records each file it skipped in ``errors`` as
``(path, reason, detail)``, a replacement is drawn from the same source with the sample's generator,
and `DataErrorTracker` (fed by `worldmodel.data.datamodule.DataErrorCallback` in the main process)
counts them, writes them to ``data_errors.csv`` and stops the run with a clear message once too large
a share of the data is bad.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info

from worldmodel.data.annotations import ActionSegment, ActionVocabulary, find_video, read_annotations
from worldmodel.data.transforms import is_channels_last_video, video_from_frames
from worldmodel.data.video import (
    VIDEO_EXTENSIONS,
    ClipSampler,
    VideoError,
    VideoInfo,
    read_clips,
    read_frames,
    read_video_info,
    worker_message,
)

__all__ = [
    "AnticipationDataset",
    "ClipDataset",
    "DataErrorTracker",
    "DataFailureError",
    "SampleFailureError",
    "EpochSampler",
    "ManifestEntry",
    "collate_samples",
    "fetch_batch",
    "new_clip_batch",
    "read_manifest",
    "to_video",
]

# A transform takes uint8 frames (T, H, W, C) and the sample's generator, returns uint8 (C, T, H, W).
# One with a fixed output `size` (h, w) and `accepts_out = True` also takes `out=`, a channels-last
# (C, T, h, w) clip to write into: `ClipDataset.__getitems__` hands it the clip's slot in the batch.
VideoTransform = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]
DataError = tuple[str, str, str]  # (path, reason, detail)


# ---------------------------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class ManifestEntry:
    path: str
    label: int | None = None


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _files_below(root: Path) -> list[Path]:
    """Every file in `root` and below, sorted; symlinked folders are followed (once each, so a link
    cycle ends), and links are listed even when broken."""
    found, visited = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders[:] = []
            continue
        visited.add(real)
        found += [Path(folder) / name for name in files]
    return sorted(found)


def read_manifest(path: str | os.PathLike, left_out: Counter | None = None) -> list[ManifestEntry]:
    """Video paths (and optional integer labels) from a manifest file or a directory of videos.

    A manifest file has one video per line: ``path`` or ``path label``, separated by a space or a
    comma (use the comma form for paths containing spaces). Relative paths are resolved against the
    manifest's folder. Blank lines, ``#`` comments and a header line (``path`` or ``path,label``) are
    skipped. A directory is scanned recursively for files with a video extension, in sorted order;
    hidden files and hidden folders are skipped (macOS writes a ``._name.mp4`` of metadata beside every
    video it copies to some disks: not a video, and counted as a failure it could stop a run).

    left_out: for a directory, gets the count of the files the scan leaves out, by extension ("" for
    none; hidden files and whatever lies in hidden folders, such as .git, are not counted), from the
    same walk, also when no video is found.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        shown = [p for p in _files_below(path) if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        videos = [p for p in shown if _is_video(p)]
        if left_out is not None:
            left_out.update(p.suffix.lower() for p in shown if not _is_video(p))
        if not videos:
            raise DataConfigError(
                f"{path}: no video files found in this directory or below "
                f"(extensions {', '.join(VIDEO_EXTENSIONS)})"
            )
        # a broken link keeps its own path, so that reading it reports the link as missing
        return [ManifestEntry(str(p.resolve() if p.exists() else p.absolute()), None) for p in videos]
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (give a manifest file or a folder of videos)")

    root = path.resolve().parent
    entries: list[ManifestEntry] = []
    seen_data = False
    with open(path, encoding="utf-8-sig") as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{line_no}"
            fields = _split_manifest_line(line, where)
            if not seen_data and [x.lower() for x in fields] in (["path"], ["path", "label"]):
                seen_data = True
                continue  # header
            seen_data = True
            video = Path(fields[0]).expanduser()
            if not video.is_absolute():
                video = root / video
            label = None
            if len(fields) == 2:
                try:
                    label = int(fields[1])
                except ValueError:
                    spaced = "," not in line and " " in line
                    hint = (f"; a path with spaces takes the comma form: '{line},' or '{line},LABEL'"
                            if spaced else "")
                    raise DataConfigError(
                        f"{where}: label {fields[1]!r} is not an integer (expected 'path' or 'path label'; "
                        f"the only header lines skipped are 'path' and 'path,label'){hint}"
                    ) from None
                if label == -1:  # the "no label" of ClipDataset's samples, written out
                    label = None
                elif label < 0:
                    raise DataConfigError(f"{where}: label {label} is negative; labels are class ids >= 0, or -1 "
                                          "(or none) for a video without one")  # fmt: skip
            entries.append(ManifestEntry(os.path.normpath(video), label))
    if not entries:
        raise DataConfigError(f"manifest {path} lists no videos (only blank lines, comments or a header)")
    return entries


def _split_manifest_line(line: str, where: str) -> list[str]:
    if "," in line:
        fields = [x.strip() for x in next(csv.reader([line], skipinitialspace=True))]
        while len(fields) > 1 and fields[-1] == "":
            fields = fields[:-1]  # trailing comma(s): no label
    else:
        fields = line.split()
    if not 1 <= len(fields) <= 2 or not fields[0]:
        raise DataConfigError(
            f"{where}: expected 'path' or 'path label' (space or comma separated), got {line!r}; "
            "write paths that contain spaces as 'path,label'"
        )
    return fields


# ---------------------------------------------------------------------------------------------- errors
class DataFailureError(RuntimeError):
    """Too many videos could not be used: the data needs fixing before training goes on.

    Raised in a DataLoader worker, it reaches the main process with its own message (`worker_message`)."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(worker_message(type(self), message) if isinstance(message, str) else message, *args)


class SampleFailureError(DataFailureError):
    """No video could be found for one sample in `max_attempts` tries: raised by the dataset itself.

    ``.errors`` holds every failed attempt ``(path, reason, detail)``, also when raised in a DataLoader
    worker: the message lists them one per line as "  PATH: REASON: DETAIL", and the error rebuilt in
    the main process reads them back (as `VideoError` does its own text), so that `DataErrorCallback`
    can still write them to ``data_errors.csv``."""

    def __init__(self, message: str = "", errors: Sequence[DataError] | None = None) -> None:
        super().__init__(message)
        if errors is None:
            errors = []
            for line in str(self).splitlines():
                if line.startswith("  "):
                    try:
                        error = VideoError(line[2:])
                    except (TypeError, ValueError):
                        continue
                    errors.append((error.path, error.reason, error.detail))
        self.errors = [tuple(str(x) for x in error) for error in errors]

    def __reduce__(self):
        return type(self), (str(self), self.errors)


class DataConfigError(ValueError):
    """Data settings that cannot work (manifests, weights, a resume that cannot be exact), found before the
    first step: `worldmodel pretrain` prints it as one line."""


class DataErrorTracker:
    """Counts the unusable files met by the data loaders, logs them to CSV, stops a run at a threshold.

    ``update(errors, num_ok)`` takes one batch's ``errors`` (``(path, reason, detail)``, one per skipped
    file) and the number of samples it delivered. Each error is appended to ``out_dir/data_errors.csv``
    (rank r > 0: ``data_errors.rank{r}.csv``). Once at least ``min_samples`` attempts have been made and
    failures / (failures + num_ok) exceeds ``max_failure_ratio``, `DataFailureError` is raised.
    """

    CSV_COLUMNS = ("path", "reason", "detail")
    MAX_EXAMPLES = 5
    MAX_BAD_FILES = 1000  # distinct unusable files remembered for the summary (and checkpoints)

    def __init__(
        self,
        out_dir: str | os.PathLike | None,
        max_failure_ratio: float = 0.1,
        min_samples: int = 50,
        rank: int = 0,
    ) -> None:
        if not 0.0 <= max_failure_ratio <= 1.0:
            raise ValueError(f"max_failure_ratio must be in [0, 1], got {max_failure_ratio}")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.max_failure_ratio = float(max_failure_ratio)
        self.min_samples = int(min_samples)
        self.rank = int(rank)
        self.counts: Counter[str] = Counter()
        self.num_ok = 0
        self.examples: list[DataError] = []
        self.num_padded = 0  # clips of videos shorter than a clip (last frame repeated): usable, but said
        self.padded_examples: list[str] = []
        self.csv_rows = 0  # rows this run has written to the CSV (kept in checkpoints)
        self.bad_files: set[str] = set()  # the distinct unusable files (up to MAX_BAD_FILES)
        self.bad_files_complete = True  # False: a lower bound (a checkpoint from before they were kept)
        self._resumed = False
        self._resume_rows: int | None = None  # the rows of this rank's CSV the checkpoint counted (None: unknown)
        self._started = False

    @property
    def csv_path(self) -> Path | None:
        if self.out_dir is None:
            return None
        name = "data_errors.csv" if self.rank == 0 else f"data_errors.rank{self.rank}.csv"
        return self.out_dir / name

    @property
    def num_failures(self) -> int:
        return sum(self.counts.values())

    @property
    def failure_ratio(self) -> float:
        attempts = self.num_failures + self.num_ok
        return self.num_failures / attempts if attempts else 0.0

    def update(self, errors: Sequence[Sequence[str]], num_ok: int, padded: Sequence[str] = (), check: bool = True) -> None:
        """padded: the paths of this batch's clips that repeat their video's last frame (too short).
        check: apply the stop threshold to this tracker's own counts (off when several processes decide on
        their summed counts, `check(totals=...)`)."""
        errors = [(str(p), str(r), str(d)) for p, r, d in errors]
        self.num_ok += int(num_ok)
        self.num_padded += len(padded)
        for path in padded:
            self._add_padded_example(str(path))
        self.record(errors)
        if check:
            self.check()

    def record(self, errors: Sequence[Sequence[str]]) -> None:
        """Count and list `errors` (``(path, reason, detail)``) without the threshold check: the failed
        attempts of a sample that stopped the run (`SampleFailureError`)."""
        errors = [(str(p), str(r), str(d)) for p, r, d in errors]
        for error in errors:
            self.counts[error[1]] += 1
            self._add_example(error)
            self._add_bad_file(error[0])
        if errors:
            self._append_csv(errors)

    def _add_example(self, error: DataError) -> None:
        """Keep `error` among the examples: up to MAX_EXAMPLES, one per file."""
        if len(self.examples) < self.MAX_EXAMPLES and error[0] not in {e[0] for e in self.examples}:
            self.examples.append(error)

    def _add_bad_file(self, path: str) -> None:
        if len(self.bad_files) < self.MAX_BAD_FILES:
            self.bad_files.add(path)

    def _bad_files_text(self) -> str:
        """'N unusable video(s)' (distinct files; 'at least N' past MAX_BAD_FILES)."""
        n = len(self.bad_files)
        lower_bound = n >= self.MAX_BAD_FILES or not self.bad_files_complete
        return f"{'at least ' if lower_bound else ''}{n} unusable video(s)"

    def _add_padded_example(self, path: str) -> None:
        if len(self.padded_examples) < self.MAX_EXAMPLES and path not in self.padded_examples:
            self.padded_examples.append(path)

    def start(self) -> None:
        """At the start of training (after a checkpoint's state was loaded): a fresh run moves a CSV left by an
        earlier attempt in the same folder to ``data_errors.previous.csv`` instead of adding to it; a resumed
        run keeps the rows its checkpoint had counted and drops those written after it (their batches are
        trained again and list their errors again)."""
        if self._started:  # once per tracker: a second fit() of the same trainer continues its list
            return
        self._started = True
        path = self.csv_path
        if path is None or not path.is_file():
            return
        if not self._resumed:
            path.replace(path.with_name(path.stem + ".previous.csv"))
            return
        if self._resume_rows is None:
            return  # a checkpoint that did not count this rank's rows (other ranks, older versions): kept as is
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) > 1 + self._resume_rows:
            from worldmodel.checkpoints import atomic_write_bytes  # (lightning and the models: imported late)

            # atomically: a kill during the rewrite leaves the old list, never half of it
            text = io.StringIO(newline="")
            csv.writer(text).writerows(rows[: 1 + self._resume_rows])
            atomic_write_bytes(text.getvalue().encode(), path)

    def _append_csv(self, errors: list[DataError]) -> None:
        path = self.csv_path
        if path is None:
            return
        self.csv_rows += len(errors)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(self.CSV_COLUMNS)
            writer.writerows(errors)

    def _counts_text(self) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items())) or "none"

    def summary(self) -> str:
        """One line for the log: skipped files by reason, share of attempts, where the list is."""
        attempts = self.num_failures + self.num_ok
        line = (
            f"data: {self._bad_files_text()} skipped: {self.num_failures} failed read(s) in {attempts} attempts "
            f"({100 * self.failure_ratio:.1f}%); by reason: {self._counts_text()}"
        )
        if self.num_failures and self.csv_path is not None:
            line += f"; list in {self.csv_path}"
        if self.num_padded:
            line += (
                f"; {self.num_padded} clip(s) from videos shorter than a clip, their last frame repeated "
                f"(data.short_policy; e.g. {', '.join(self.padded_examples[:3])})"
            )
        if self.failure_ratio > self.max_failure_ratio and attempts < self.min_samples:
            line += (
                f". WARNING: above max_failure_ratio={self.max_failure_ratio:g}, in too few attempts to stop the "
                f"run (the check starts at {self.min_samples}): check the data with `worldmodel data check MANIFEST`"
            )
        return line

    def over_threshold(self, failures: int, attempts: int) -> bool:
        """Whether `failures` of `attempts` stop the run (once there are at least min_samples attempts)."""
        return attempts >= self.min_samples and failures / max(attempts, 1) > self.max_failure_ratio

    def check(self, totals: tuple[int, int] | None = None) -> None:
        """DataFailureError past the threshold. totals: (failures, attempts) summed over every process of a
        multi-process run, which then all decide alike (the reasons and examples are this tracker's: a
        `merged` one's are every process's)."""
        failures, attempts = totals if totals is not None else (self.num_failures, self.num_failures + self.num_ok)
        if not self.over_threshold(failures, attempts):
            return
        examples = "\n".join(f"  {p}: {r}: {d}" for p, r, d in self.examples)
        where = f"All of them are listed in {self.csv_path}.\n" if self.csv_path is not None else ""
        if totals is not None:
            where = (f"Each process lists its own: {self.csv_path.name} for rank 0, data_errors.rankN.csv for rank N, "
                     f"in {self.csv_path.parent}.\n") if self.csv_path else ""
        raise DataFailureError(
            f"too many unusable videos: {failures} of {attempts} attempts failed "
            f"({100 * failures / max(attempts, 1):.1f}%), above max_failure_ratio={self.max_failure_ratio:g} "
            f"({100 * self.max_failure_ratio:.1f}%)" + (" (all processes)" if totals is not None else "") + ".\n"
            f"By reason: {self._counts_text()}.\n"
            f"Examples:\n{examples}\n{where}"
            "Find the bad files with `worldmodel data check MANIFEST`, then fix or remove them from the "
            "manifest (or raise data.max_failure_ratio if some bad files are expected)."
        )

    @classmethod
    def merged(cls, states: Sequence[dict], template: "DataErrorTracker") -> "DataErrorTracker":
        """One tracker holding the summed counts of several processes' `state_dict`s (for the summary line of
        a multi-process run); its CSV path is the template's (rank 0's)."""
        total = cls(template.out_dir, template.max_failure_ratio, template.min_samples, rank=template.rank)
        for state in states:
            total.counts.update({str(k): int(v) for k, v in state.get("counts", {}).items()})
            total.num_ok += int(state.get("num_ok", 0))
            total.num_padded += int(state.get("num_padded", 0))
            for error in state.get("examples", []):
                total._add_example(tuple(error))
            files, complete = cls._bad_files_of(state)
            for path in files:
                total._add_bad_file(path)
            total.bad_files_complete &= complete
            for path in state.get("padded_examples", []):
                total._add_padded_example(str(path))
        return total

    @staticmethod
    def _bad_files_of(state: dict) -> tuple[list[str], bool]:
        """A state's distinct unusable files and whether they are all of them: a checkpoint from before they
        were kept gives the files its examples name, a lower bound (unless it counted no failure)."""
        if "bad_files" in state:
            return [str(p) for p in state["bad_files"]], True
        return [str(e[0]) for e in state.get("examples", [])], not state.get("counts")

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "num_ok": self.num_ok, "examples": [list(e) for e in self.examples],
                "num_padded": self.num_padded, "padded_examples": list(self.padded_examples),
                "csv_rows": self.csv_rows, "csv_rank": self.rank, "bad_files": sorted(self.bad_files)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.counts = Counter({str(k): int(v) for k, v in state.get("counts", {}).items()})
        self.num_ok = int(state.get("num_ok", 0))
        self.examples = [tuple(e) for e in state.get("examples", [])][: self.MAX_EXAMPLES]
        files, self.bad_files_complete = self._bad_files_of(state)
        self.bad_files = set(files)
        self.num_padded = int(state.get("num_padded", 0))
        self.padded_examples = [str(p) for p in state.get("padded_examples", [])][: self.MAX_EXAMPLES]
        # only rank 0 writes checkpoints: its row count says nothing about another rank's CSV
        same_csv = "csv_rows" in state and int(state.get("csv_rank", 0)) == self.rank
        self._resume_rows = int(state["csv_rows"]) if same_csv else None
        self.csv_rows = self._resume_rows if same_csv else self.num_failures
        self._resumed = True


# ---------------------------------------------------------------------------------------------- datasets
def _split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """(epoch, index) from a sampler key; a plain int index means epoch 0."""
    if isinstance(key, (tuple, list)):
        epoch, index = key
    else:
        epoch, index = 0, key
    epoch, index = int(epoch), int(index)
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return epoch, index


def to_video(
    frames: torch.Tensor, transform: VideoTransform | None, rng: np.random.Generator, out: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 (T, H, W, C) -> uint8 (C, T, H, W) (channels last), through the transform when there is one.

    out: a channels-last clip to write the result into (through `out=` for a transform, which must
    then have `accepts_out`); returned.
    """
    if transform is None:
        video = video_from_frames(frames)
        return video if out is None else out.copy_(video)
    return transform(frames, rng) if out is None else transform(frames, rng, out=out)


def new_clip_batch(batch_size: int, num_frames: int, size: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """An uninitialised uint8 batch of clips (B, C, T, H, W), laid out (B, T, H, W, C) in memory as
    `collate_samples` stacks them; in shared memory inside a DataLoader worker, so that handing it to
    the main process copies nothing (as `default_collate` does for the batches it stacks)."""
    shape = (batch_size, num_frames, int(size[0]), int(size[1]), channels)
    if get_worker_info() is None:
        memory = torch.empty(shape, dtype=torch.uint8)
    else:
        storage = torch.UntypedStorage._new_shared(math.prod(shape))  # bytes
        memory = torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)
    return rearrange(memory, "b t h w c -> b c t h w")


def fetch_batch(
    item: Callable[..., dict], keys: Sequence, transform: VideoTransform | None, num_frames: int
) -> list[dict]:
    """``[item(key) for key in keys]``, but with a transform of fixed `size` that `accepts_out`, each
    clip is written straight into its slot of one batch tensor (`new_clip_batch`; ``item(key, out=slot)``),
    which `collate_samples` then returns without stacking: the clips are never copied after the
    resize. The values are the same either way."""
    keys = list(keys)
    size = getattr(transform, "size", None)
    if len(keys) < 2 or size is None or not getattr(transform, "accepts_out", False):
        return [item(key) for key in keys]
    batch = new_clip_batch(len(keys), num_frames, size)
    return [item(key, out=batch[b]) for b, key in enumerate(keys)]


class ClipDataset(Dataset):
    """Clips from the videos of one or several manifests (pretraining).

    Item ``(epoch, index)`` (or ``index`` for epoch 0) is a dict: ``video`` uint8 (C, T, H, W),
    ``label`` (-1 when the manifest has none), ``index``, ``epoch``, ``errors`` (files skipped while
    making it) and ``path`` (the file the clip comes from). Several manifests are mixed by `EpochSampler`
    in proportion to ``weights`` (default: in proportion to their sizes, i.e. uniform over videos);
    the dataset exposes ``source_ids`` (per item) and ``source_weights`` (per manifest, normalised, or
    None without weights) for it.
    """

    def __init__(
        self,
        manifests: list[str] | str,
        sampler: ClipSampler,
        transform: VideoTransform | None = None,
        weights: list[float] | None = None,
        seed: int = 0,
        decode_size: int | tuple[int, int] | None = None,
        max_attempts: int = 20,
    ) -> None:
        if isinstance(manifests, (str, os.PathLike)):
            manifests = [manifests]
        manifests = [str(m) for m in manifests]
        if not manifests:
            raise ValueError("ClipDataset needs at least one manifest")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.sampler = sampler
        self.transform = transform
        self.seed = int(seed)
        self.decode_size = decode_size
        self.max_attempts = int(max_attempts)
        self.source_names = manifests

        self.entries: list[ManifestEntry] = []
        source_ids: list[int] = []
        for source, manifest in enumerate(manifests):
            entries = read_manifest(manifest)
            self.entries += entries
            source_ids += [source] * len(entries)
        self.source_ids = np.asarray(source_ids, dtype=np.int64)  # (N,)
        self._source_items = [np.flatnonzero(self.source_ids == s) for s in range(len(manifests))]

        if weights is None:
            self.source_weights: list[float] | None = None
        else:
            if len(weights) != len(manifests):
                raise DataConfigError(f"got {len(weights)} manifest weights for {len(manifests)} manifests "
                                      f"({', '.join(manifests)}): give one weight per manifest")
            if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
                raise DataConfigError(f"manifest weights must be >= 0 and not all zero, got {list(weights)}")
            self.source_weights = [float(w) / sum(weights) for w in weights]

    def __len__(self) -> int:
        return len(self.entries)

    def _replacement(self, index: int, failed: set[int], rng: np.random.Generator) -> int:
        """Another item of the same source, drawn with the sample's generator (avoiding known-bad ones)."""
        pool = self._source_items[int(self.source_ids[index])]
        candidate = int(pool[rng.integers(len(pool))])
        for _ in range(8):
            if candidate not in failed or len(failed) >= len(pool):
                break
            candidate = int(pool[rng.integers(len(pool))])
        return candidate

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        return self._item(key)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[dict]:
        """The items of one batch (the DataLoader's batched fetch); see `fetch_batch`."""
        return fetch_batch(self._item, keys, self.transform, self.sampler.num_frames)

    def _item(self, key: int | tuple[int, int], out: torch.Tensor | None = None) -> dict:
        epoch, index = _split_key(key)
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.entries)} videos")
        rng = np.random.default_rng([self.seed, epoch, index])
        errors: list[DataError] = []
        failed: set[int] = set()
        current = index
        for _ in range(self.max_attempts):
            entry = self.entries[current]
            try:
                clip = read_clips(entry.path, self.sampler, mode="random", rng=rng, size=self.decode_size)[0]
            except VideoError as err:
                errors.append((str(getattr(err, "path", entry.path)), err.reason, err.detail))
                failed.add(current)
                current = self._replacement(current, failed, rng)
                continue
            video = to_video(clip.frames, self.transform, rng, out=out)  # (C, T, H, W) uint8
            return {
                "video": video,
                "label": -1 if entry.label is None else int(entry.label),
                "index": index,
                "epoch": epoch,
                "errors": errors,
                "path": entry.path,
                "padded": clip.padded,  # a video shorter than the clip: counted in the data summary
            }
        listed = "\n".join(f"  {p}: {r}: {' '.join(str(d).split())}" for p, r, d in errors)
        raise SampleFailureError(
            f"sample {index} (epoch {epoch}): {self.max_attempts} videos in a row could not be used:\n{listed}\n"
            "Check the manifest with `worldmodel data check MANIFEST`.",
            errors,
        )


class AnticipationDataset(Dataset):
    """Context clips that end ``anticipation_s`` before each annotated action starts.

    The clip has ``num_frames`` frames at ``fps`` (default 32 at 8 fps: 4 s); its LAST frame is the last
    video frame at or before ``start_s - anticipation_s`` (frames before the video start repeat the first
    frame). Every annotation row gives exactly one item, in file order: evaluation never skips a row,
    so a missing video is an error at construction and an undecodable one an error when read, as is an
    action after its video's end. Windows are placed by time: in a variable frame rate video by the
    frames' real start times (`worldmodel.data.video`), so a context never runs past its gap.

    Items add ``verb``, ``noun``, ``action`` (= ``label``; -1 for a pair unseen in training),
    ``start_s`` (action start), ``end_s`` (time of the context's last frame), ``anticipation_s`` and
    ``video_id``.

    Several gaps (``anticipation_s`` a sequence, e.g. (0.5, 1.0, 1.5) for training a probe the way
    V-JEPA 2 jitters it) give one item per (gap, row): item ``g * len(segments) + i`` is row i with gap
    ``anticipation_gaps[g]``.
    """

    MAX_LISTED = 10

    def __init__(
        self,
        annotations_csv: str,
        videos_dir: str,
        vocabulary: ActionVocabulary,
        num_frames: int = 32,
        fps: float = 8.0,
        anticipation_s: float | Sequence[float] = 1.0,
        transform: VideoTransform | None = None,
        seed: int = 0,
        decode_size: int | tuple[int, int] | None = None,
    ) -> None:
        gaps = (anticipation_s,) if isinstance(anticipation_s, (int, float)) else tuple(anticipation_s)
        if not gaps or any(not (float(g) >= 0 and math.isfinite(float(g))) for g in gaps):
            raise ValueError(f"anticipation_s must be one or more finite gaps >= 0 seconds, got {anticipation_s}")
        if not isinstance(vocabulary, ActionVocabulary):
            raise TypeError(
                f"vocabulary must be an ActionVocabulary (the classes, from the TRAINING annotations: "
                f"ActionVocabulary.from_annotations(train_csv)), got {type(vocabulary).__name__}"
            )
        self.annotations_csv = str(annotations_csv)
        self.videos_dir = str(videos_dir)
        self.vocabulary = vocabulary
        self.anticipation_gaps: tuple[float, ...] = tuple(float(g) for g in gaps)
        self.anticipation_s = self.anticipation_gaps[0]
        self.transform = transform
        self.seed = int(seed)
        self.decode_size = decode_size
        self.clip_sampler = ClipSampler(num_frames=num_frames, fps=fps)

        # every referenced video must exist before anything else (frame-number rows need their fps)
        self.video_paths: dict[str, str] = {}
        missing: list[str] = []
        for video_id, participant_id in _referenced_videos(self.annotations_csv):
            if video_id in self.video_paths or video_id in missing:
                continue
            try:
                self.video_paths[video_id] = find_video(self.videos_dir, video_id, participant_id)
            except FileNotFoundError:
                missing.append(video_id)
        if missing:
            shown = ", ".join(missing[: self.MAX_LISTED]) + (" ..." if len(missing) > self.MAX_LISTED else "")
            raise FileNotFoundError(
                f"{self.annotations_csv}: {len(missing)} referenced video(s) not found under {self.videos_dir}: "
                f"{shown}. Videos are looked up as DIR/<video_id>.<ext> or DIR/<participant_id>/videos/"
                f"<video_id>.<ext> (ext: {', '.join(e.lstrip('.') for e in VIDEO_EXTENSIONS)}, any case)."
            )
        self.segments: list[ActionSegment] = read_annotations(self.annotations_csv, videos_dir=self.videos_dir)
        for segment in self.segments:
            vocabulary.check(segment)
        self._infos: dict[str, VideoInfo] = {}  # per process (each worker probes its own)

    def __len__(self) -> int:
        return len(self.segments) * len(self.anticipation_gaps)

    def item(self, index: int) -> tuple[ActionSegment, float]:
        """(annotated action, anticipation gap) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items ({len(self.segments)} annotated actions)")
        gap, row = divmod(index, len(self.segments))
        return self.segments[row], self.anticipation_gaps[gap]

    def _info(self, video_id: str) -> VideoInfo:
        if video_id not in self._infos:
            # a variable frame rate video comes with its frames' start times: windows are placed by those
            self._infos[video_id] = read_video_info(self.video_paths[video_id])
        return self._infos[video_id]

    def check(self) -> None:
        """Open every referenced video once and place every action's context in it: a `VideoError` or
        `ValueError` naming the file (and annotation line) now, rather than in the middle of a run."""
        for index in range(len(self.segments)):  # the gaps move the clip, not whether the action fits
            self.context_indices(index)

    def context_indices(self, index: int) -> np.ndarray:
        """Source frame indices (T,) of item ``index``'s context clip."""
        segment, gap = self.item(index)
        info = self._info(segment.video_id)
        duration_s = info.num_frames / info.fps
        if segment.start_s > duration_s + 1.0 / info.fps:  # one frame of slack for rounding
            # the clip would be the video's last frames, whatever the action: refuse instead
            action = f"action {segment.narration_id}" if segment.narration_id else "the action"
            raise ValueError(
                f"{segment.source or self.annotations_csv}: {action} starts at "
                f"{segment.start_s:.3f} s, after the end of video {segment.video_id} ({info.path}: "
                f"{info.num_frames} frames at {info.fps:.3f} fps = {duration_s:.3f} s). Is it the right video, "
                "or were its frame numbers counted at another frame rate?"
            )
        end_s = max(segment.start_s - gap, 0.0)
        return self.clip_sampler.indices_ending_at(info, end_s)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        return self._item(key)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[dict]:
        """The items of one batch (the DataLoader's batched fetch); see `fetch_batch`."""
        return fetch_batch(self._item, keys, self.transform, self.clip_sampler.num_frames)

    def _item(self, key: int | tuple[int, int], out: torch.Tensor | None = None) -> dict:
        epoch, index = _split_key(key)
        segment, gap = self.item(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        info = self._info(segment.video_id)
        indices = self.context_indices(index)  # (T,)
        frames = read_frames(self.video_paths[segment.video_id], indices, size=self.decode_size)
        video = to_video(frames, self.transform, rng, out=out)  # (C, T, H, W) uint8
        action = self.vocabulary.action_id(segment.verb, segment.noun)
        return {
            "video": video,
            "label": action,
            "index": index,
            "epoch": epoch,
            "errors": [],
            "verb": segment.verb,
            "noun": segment.noun,
            "action": action,
            "start_s": segment.start_s,
            "end_s": float(info.times_of(indices[-1:])[0]),
            "anticipation_s": gap,
            "video_id": segment.video_id,
        }


def _referenced_videos(annotations_csv: str) -> list[tuple[str, str | None]]:
    """(video_id, participant_id) of every row, without parsing the rest (for the existence check)."""
    path = Path(annotations_csv)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip() for c in (reader.fieldnames or [])]
        if "video_id" not in reader.fieldnames:
            raise ValueError(f"{path}: missing column video_id; found {', '.join(reader.fieldnames)}")
        refs = []
        for row in reader:
            video_id = (row.get("video_id") or "").strip()
            if video_id:
                refs.append((video_id, (row.get("participant_id") or "").strip() or None))
    return refs


# ---------------------------------------------------------------------------------------------- sampler
_CYCLE_STREAM = 1_000_001  # seeds a source's shuffled cycles: [seed, stream, source, cycle]
_MIX_STREAM = 1_000_002  # seeds an epoch's interleaving of sources: [seed, stream, epoch]


def _largest_remainder(total: int, shares: Sequence[float]) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``shares`` (largest remainder method)."""
    exact = np.asarray(shares, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    rest = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


class EpochSampler(Sampler):
    """Yields this rank's ``(epoch, index)`` keys for the current epoch; deterministic given the seed.

    An epoch has ``samples_per_epoch`` samples over all ranks (default: the dataset's length). Sources
    (the dataset's ``source_ids`` / ``source_weights``; one source when there are no weights) contribute
    in proportion to their weights. Each source walks through its items in a shuffled cycle that goes on
    across epochs (every item once before any repeats, a new permutation per cycle), so short epochs
    over a large corpus still see new videos. With ``shuffle`` the epoch's samples are then shuffled;
    without, sources are interleaved evenly in item order.

    The epoch is split across ranks: rank r takes samples r, r + world_size, ...; the list is padded by
    wrapping so every rank gets the same count (``len(self)``). For mid-epoch resume, set
    ``start_index`` to the number of this rank's samples of the current epoch already consumed: the next
    iteration skips them (and resets ``start_index`` to 0). `resume` does this for a checkpoint's
    position and also lines the sampler's epochs up with the trainer's count (see there).
    """

    def __init__(
        self,
        dataset: Dataset,
        samples_per_epoch: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        num_items = len(dataset)
        if num_items == 0:
            raise ValueError("EpochSampler over an empty dataset")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.samples_per_epoch = int(samples_per_epoch or num_items)

        source_ids = getattr(dataset, "source_ids", None)
        weights = getattr(dataset, "source_weights", None)
        if source_ids is None or weights is None:
            self.pools = [np.arange(num_items, dtype=np.int64)]
            shares = [1.0]
        else:
            source_ids = np.asarray(source_ids)
            self.pools = [np.flatnonzero(source_ids == s) for s in range(len(weights))]
            shares = list(weights)
        self.counts = _largest_remainder(self.samples_per_epoch, shares)  # per source, per epoch
        for source, (pool, count) in enumerate(zip(self.pools, self.counts)):
            if count > 0 and len(pool) == 0:
                raise ValueError(f"source {source} has weight {shares[source]} but no items")
        self.num_samples = math.ceil(self.samples_per_epoch / self.world_size)  # per rank
        self.epoch = 0
        self.start_index = 0
        self.epoch_offset = 0  # the sampler's epoch minus the trainer's (see `resume`)
        # () -> (this rank's samples the trainer has already counted in the epoch it is about to run,
        # the samples of a whole trainer epoch); set by `DataProgressCallback` during fit
        self.trainer_position: Callable[[], tuple[int, int]] | None = None
        self._resumed = False  # set_epoch still has to take the trainer's number for the resumed position
        self._align = False  # the first iteration after `resume` still has to meet the trainer's position

    def resume(self, epoch: int, start_index: int) -> None:
        """Continue at this rank's sample `start_index` of `epoch` (a checkpoint's data position).

        Lightning does not always go on with the stopped epoch under its number. The trainer's next
        `set_epoch(n)` is taken as its own number for this position (later epochs keep the difference):
        Lightning restarts the stopped epoch with `n = epoch` after a batch-end checkpoint, but calls the
        next number, `epoch + 1`, when it counted the stopped epoch as finished (a checkpoint saved after
        `fit` returned, or by an epoch-end hook after `max_steps` or `max_time` stopped it); the rest of
        the stopped epoch then comes first. And when the checkpoint was at the end of the trainer's epoch
        and the trainer starts a new one at its batch 0 (`trainer_position`), that is the next epoch's
        start. So no sample is skipped or replayed: a resumed run sees the batches of the uninterrupted one.
        """
        self.epoch, self.start_index = int(epoch), int(start_index)
        self.epoch_offset, self._resumed, self._align = 0, True, True

    @property
    def resume_pending(self) -> bool:
        """`resume` was called and the trainer has not yet numbered that position (`set_epoch`)."""
        return self._resumed

    def set_epoch(self, epoch: int) -> None:
        """The trainer's epoch number (Lightning calls this as each epoch starts)."""
        if self._resumed:  # the first call after `resume`: the trainer's number for the resumed position
            self._resumed = False
            self.epoch_offset = self.epoch - int(epoch)
            return
        self.epoch = int(epoch) + self.epoch_offset

    def _meet_trainer(self) -> None:
        """At the first iteration after `resume`: a position at the end of the trainer's epoch, where the
        trainer starts a new epoch at its batch 0, is the start of the next epoch."""
        self._align = False
        if self.trainer_position is None:
            return
        counted, epoch_samples = self.trainer_position()
        if counted == 0 and 0 < epoch_samples <= self.start_index:
            self.epoch, self.start_index = self.epoch + 1, 0
            self.epoch_offset += 1

    def _source_draws(self, source: int, epoch: int) -> np.ndarray:
        """Items of ``source`` for ``epoch``: positions [e * count, (e + 1) * count) of its cycles."""
        pool, count = self.pools[source], int(self.counts[source])
        if count == 0:
            return np.empty(0, dtype=np.int64)
        positions = epoch * count + np.arange(count, dtype=np.int64)
        cycles, offsets = np.divmod(positions, len(pool))
        draws = np.empty(count, dtype=np.int64)
        for cycle in np.unique(cycles):
            at = cycles == cycle
            if self.shuffle:
                order = np.random.default_rng([self.seed, _CYCLE_STREAM, source, int(cycle)]).permutation(len(pool))
            else:
                order = np.arange(len(pool))
            draws[at] = pool[order[offsets[at]]]
        return draws

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """All ranks' dataset indices of ``epoch`` (samples_per_epoch,), before the rank split."""
        draws = [self._source_draws(s, epoch) for s in range(len(self.pools))]
        indices = np.concatenate(draws)
        if self.shuffle:
            mix = np.random.default_rng([self.seed, _MIX_STREAM, int(epoch)])
            return indices[mix.permutation(len(indices))]
        # even interleaving: the j-th of a source's c draws sits at (j + 0.5) / c of the epoch
        slots = np.concatenate([(np.arange(len(d)) + 0.5) / max(len(d), 1) for d in draws])
        return indices[np.argsort(slots, kind="stable")]

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's dataset indices of ``epoch`` (len(self),)."""
        indices = self.epoch_indices(epoch)
        padded = np.resize(indices, self.num_samples * self.world_size)  # pad by wrapping
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._align:
            self._meet_trainer()
        epoch, start = self.epoch, int(self.start_index)
        self.start_index = 0  # one-shot: only the resumed epoch skips
        for index in self.rank_indices(epoch)[start:]:
            yield (epoch, int(index))

    def __len__(self) -> int:
        return self.num_samples


# ---------------------------------------------------------------------------------------------- collate
def collate_samples(samples: list[dict]) -> dict:
    """Batch a list of items: tensors stacked (video -> (B, C, T, H, W) uint8), numbers to tensors,
    ``errors`` concatenated into one list, anything else (strings) kept as a list."""
    if not samples:
        raise ValueError("collate_samples got an empty list")
    batch: dict = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        first = values[0]
        if key == "errors":
            batch[key] = [tuple(error) for errors in values for error in errors]
        elif isinstance(first, torch.Tensor):
            # torch's default_collate stacks straight into shared memory inside a DataLoader worker,
            # saving the copy that sending a stacked tensor to the main process would make
            batch_view = _slots_of_one_batch(values)
            if batch_view is not None:  # written in place by ClipDataset.__getitems__: nothing to stack
                batch[key] = batch_view
            elif all(is_channels_last_video(v) for v in values):
                # clips in (T, H, W, C) memory: stack them as they lie, (B, T, H, W, C), and view the
                # result as (B, C, T, H, W) (torch.channels_last_3d) instead of reordering every clip
                stacked = default_collate([rearrange(v, "c t h w -> t h w c") for v in values])
                batch[key] = rearrange(stacked, "b t h w c -> b c t h w")
            else:
                batch[key] = default_collate(values)
        elif isinstance(first, np.ndarray):
            batch[key] = torch.as_tensor(np.stack(values))
        elif isinstance(first, (bool, np.bool_)):
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, (int, np.integer)):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, (float, np.floating)):
            # float32: batches go to devices (MPS) without float64 support
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = list(values)
    return batch


def _slots_of_one_batch(values: list) -> torch.Tensor | None:
    """The batch (B, C, T, H, W) when `values` are its clips in order, each a channels-last slot of
    one (B, T, H, W, C) tensor (as `new_clip_batch` makes and `ClipDataset.__getitems__` fills), else None."""
    first = values[0]
    if not all(isinstance(v, torch.Tensor) and is_channels_last_video(v) for v in values):
        return None
    storage, step = first.untyped_storage(), first.numel()
    if first.storage_offset() != 0 or storage.nbytes() != len(values) * step * first.element_size():
        return None  # only a buffer that is exactly this batch, never a view into someone else's memory
    for b, value in enumerate(values):
        if (value.untyped_storage().data_ptr() != storage.data_ptr() or value.shape != first.shape
                or value.dtype != first.dtype or value.storage_offset() != first.storage_offset() + b * step):
            return None
    frames = rearrange(first, "c t h w -> t h w c")  # contiguous
    stacked = frames.as_strided((len(values), *frames.shape), (step, *frames.stride()), first.storage_offset())
    return rearrange(stacked, "b t h w c -> b c t h w")
