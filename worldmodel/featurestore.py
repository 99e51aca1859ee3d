"""Where the probe keeps frozen features: in memory, or in memory-mapped files when they do not fit.

`worldmodel probe` encodes every clip once and trains its heads on the stored tokens. A split's tokens
are one (clips, tokens, width) float32 tensor: 657 clips of the tiny model take 14 MB, but 10,000
EPIC-KITCHENS-style clips of a ViT-L at 16 x 256 px take 80 GB. Allocated in memory, such a tensor
"succeeds" (Linux hands out pages lazily) and the run is killed for memory hours later, when the
encoder has filled it. So the size is worked out before any encoding (`plan_feature_store`), and:

- `memory`: a plain tensor; refused up front when it needs more than the memory available;
- `disk`: the tensor is backed by a file under the output folder, memory-mapped (`torch.from_file`),
  so the page cache holds what fits and the rest stays on disk; the file is unlinked as soon as it is
  mapped, so it takes no name in the folder, and its space returns when the tensor is freed or the
  process ends, killed or not (nothing to clean up). Refused up front when the disk is too small;
- `stream`: nothing is stored; every training epoch (and every evaluation) encodes its clips again,
  as V-JEPA 2's probe does: no memory or disk for features, at the price of encoding the training
  clips once per epoch, for the hyper-parameter search and again for the final heads (with 20
  epochs about 40 times the work of one pass; twice that with `--encoder auto`);
- `auto` (the default): memory when the features need at most half of the memory available now,
  else disk, else (neither can hold them) stream.

Values are identical either way (the same float32 numbers, the same reads); only where the bytes live
differs. Available memory is MemAvailable from /proc/meminfo, lowered to what a cgroup memory limit
leaves (containers, SLURM jobs); where neither can be read, memory is assumed to suffice.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from worldmodel.cliutil import existing_ancestor

FEATURE_STORES = ("auto", "memory", "disk", "stream")
AUTO_MEMORY_SHARE = 0.5  # auto keeps features in memory up to this share of the memory available
GIB = 1024**3


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and anything else: None


def _inactive_file(stat_file: Path) -> int:
    """Reclaimable page cache of a cgroup (its memory.stat's inactive_file), 0 when unknown."""
    try:
        for line in stat_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_folders() -> list[tuple[Path, str, str]]:
    """(folder, limit file, usage file) of this process's memory cgroup and of every cgroup above it, from
    /proc/self/cgroup (v2 "0::/path", v1 "N:memory:/path"); a SLURM job or systemd slice is such a folder."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            root, limit, usage = Path("/sys/fs/cgroup"), "memory.max", "memory.current"
        elif "memory" in parts[1].split(","):
            root, limit, usage = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        folder = root / parts[2].lstrip("/")
        while True:
            found.append((folder, limit, usage))
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return found


def available_memory_bytes() -> int | None:
    """Bytes of memory this process can still take: MemAvailable, capped by the memory limit of its cgroup
    or any cgroup above it (v2 or v1: containers, SLURM jobs, systemd slices) minus that cgroup's use
    (reclaimable page cache not counted). None where none of these can be read (not Linux)."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    for folder, limit_file, usage_file in _cgroup_folders():
        limit, usage = _read_int(str(folder / limit_file)), _read_int(str(folder / usage_file))
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 writes a huge number for "none"
            left = max(0, limit - max(0, usage - _inactive_file(folder / "memory.stat")))
            available = left if available is None else min(available, left)
    return available


def gib(num_bytes: float) -> str:
    if num_bytes < GIB:
        return f"{num_bytes / 1024**2:.1f} MiB"
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes < 10 * GIB else f"{num_bytes / GIB:.0f} GiB"


@dataclass(frozen=True)
class FeatureStore:
    """Allocates feature tensors in memory (folder None) or as memory-mapped files in `folder`; with
    stream=True, features are not stored at all (their users encode clips when they need them)."""

    folder: Path | None = None
    stream: bool = False

    @property
    def kind(self) -> str:
        return "stream" if self.stream else "memory" if self.folder is None else "disk"

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """An uninitialised tensor of `shape` (contents: whatever the memory holds; zeros for a new file)."""
        if self.folder is None:
            return torch.empty(shape, dtype=dtype)
        numel = math.prod(shape)
        nbytes = max(1, numel * torch.empty((), dtype=dtype).element_size())
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".features-", suffix=".bin", dir=self.folder)
        try:
            try:  # the space itself, now: a full disk is an OSError here, not a SIGBUS when a page is written
                os.posix_fallocate(fd, 0, nbytes)
            except AttributeError:  # no posix_fallocate (macOS): a sparse file
                os.ftruncate(fd, nbytes)
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # ENOSPC and the like: say it now
                    raise OSError(err.errno, f"no room for {gib(nbytes)} of features in {self.folder}: "
                                             f"{err.strerror}") from None
                os.ftruncate(fd, nbytes)  # a file system that cannot reserve: a sparse file
            os.close(fd)
            fd = -1
            tensor = torch.from_file(name, shared=True, size=numel, dtype=dtype)
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(name)  # the mapping keeps the data; the space is freed with the tensor
        return tensor.view(shape)

    def zeros(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        if self.folder is None:
            return torch.zeros(shape, dtype=dtype)
        return self.empty(shape, dtype)  # a new file (reserved or sparse) reads as zeros


def plan_feature_store(
    mode: str,
    need_bytes: int,
    folder: str | os.PathLike,
    what: str,
    available: int | None = -1,
    free_disk: int | None = -1,
    disk_copies: int = 1,
) -> tuple[FeatureStore, str]:
    """Choose where features of `need_bytes` live (see the module docstring); returns the store and a
    one-line description for the log. Raises ValueError, before any encoding, when the place chosen with
    memory / disk cannot hold them; auto then streams (a store that keeps nothing). `what` says what the
    bytes are (clips x tokens x width); `available` / `free_disk` override the measured memory and disk
    (-1: measure; None: unknown).
    disk_copies: how many times the features are written to that disk besides the store (2 with the
    probe's --disk-cache): counted against the free disk when the store is there."""
    if mode not in FEATURE_STORES:
        raise ValueError(f"--feature-store must be one of {', '.join(FEATURE_STORES)}, got {mode!r}")
    streaming = ("features are not stored: every training epoch and every evaluation encodes its clips "
                 "again (--feature-store stream)")
    if mode == "stream":
        return FeatureStore(stream=True), streaming
    folder = Path(folder)
    if available == -1:
        available = available_memory_bytes()
    if free_disk == -1:
        free_disk = shutil.disk_usage(existing_ancestor(folder)).free
    memory_text = "unknown" if available is None else gib(available)
    fits_memory = available is None or need_bytes <= available
    fits_disk = free_disk is None or need_bytes * max(1, disk_copies) <= 0.95 * free_disk
    disk_text = "unknown" if free_disk is None else gib(free_disk)
    sizes = f"the frozen features need {gib(need_bytes)} ({what})" + (
        f", {disk_copies} times over on disk (the store and --disk-cache)" if disk_copies > 1 else "")
    if mode == "memory" and not fits_memory:
        raise ValueError(
            f"{sizes}, more than the {memory_text} of memory available: keep them on disk (--feature-store disk, "
            f"memory-mapped under {folder}, {disk_text} free) or probe fewer or smaller clips"
        )
    if mode == "disk" and not fits_disk:
        raise ValueError(
            f"{sizes}, more than the {disk_text} free on the disk of {folder}: point --out at a larger disk "
            "or probe fewer or smaller clips"
        )
    if mode == "auto":
        if available is None or need_bytes <= AUTO_MEMORY_SHARE * available:
            mode = "memory"
        elif fits_disk:
            mode = "disk"
        else:
            return FeatureStore(stream=True), (
                f"{sizes}: more than half of the {memory_text} of memory available, and more than the {disk_text} "
                f"free on the disk of {folder}, so {streaming}; slower by about twice the number of epochs "
                "(or make room: --feature-dtype bfloat16, --encoder target, a larger disk for --out)"
            )
    if mode == "memory":
        return FeatureStore(None), f"{sizes}: kept in memory ({memory_text} available)"
    return FeatureStore(folder), (
        f"{sizes}: kept in memory-mapped files under {folder} ({disk_text} free on its disk; {memory_text} of memory "
        "available)"
    )
