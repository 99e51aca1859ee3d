"""Where the probe keeps frozen features: memory, memory-mapped files or nowhere (streamed), chosen before any encoding."""

import os
import re

import pytest
import torch

from worldmodel.featurestore import FeatureStore, available_memory_bytes, plan_feature_store


def test_a_disk_store_holds_the_same_numbers_and_leaves_no_file(tmp_path):
    store = FeatureStore(tmp_path / "store")
    tokens = store.empty((50, 7, 3))
    values = torch.randn(50, 7, 3)
    tokens[:] = values
    assert os.listdir(tmp_path / "store") == []  # unlinked once mapped: nothing to clean up, even after a kill
    idx = torch.tensor([49, 0, 17, 17])
    assert torch.equal(tokens[idx], values[idx])  # fancy indexing reads the mapped file as any tensor
    zeros = store.zeros((4, 5))
    assert torch.equal(zeros, torch.zeros(4, 5))
    del tokens
    assert torch.equal(FeatureStore().zeros((4, 5)), zeros)


def test_the_plan_chooses_memory_disk_or_refuses_before_any_work(tmp_path):
    folder = tmp_path / "out"
    gb = 1024**3
    store, line = plan_feature_store("auto", 4 * gb, folder, "n clips", available=10 * gb, free_disk=100 * gb)
    assert store.kind == "memory" and "in memory" in line
    store, line = plan_feature_store("auto", 6 * gb, folder, "n clips", available=10 * gb, free_disk=100 * gb)
    assert store.kind == "disk" and store.folder == folder and str(folder) in line  # over half of memory
    store, _ = plan_feature_store("auto", 6 * gb, folder, "n clips", available=None, free_disk=100 * gb)
    assert store.kind == "memory"  # memory unknown: as before
    # neither memory nor disk can hold them: auto streams (encodes again every epoch) and says why
    store, line = plan_feature_store("auto", 6 * gb, folder, "n clips", available=10 * gb, free_disk=5 * gb)
    assert store.kind == "stream" and re.search(r"6\.00 GiB \(n clips\).*half of the 10 GiB.*5\.00 GiB free.*not stored", line)
    assert plan_feature_store("stream", 600 * gb, folder, "n clips", available=1, free_disk=1)[0].kind == "stream"
    with pytest.raises(ValueError, match="--feature-store disk"):
        plan_feature_store("memory", 11 * gb, folder, "n clips", available=10 * gb, free_disk=100 * gb)
    assert plan_feature_store("memory", 9 * gb, folder, "n clips", available=10 * gb, free_disk=0)[0].kind == "memory"
    with pytest.raises(ValueError, match="larger disk"):
        plan_feature_store("disk", 6 * gb, folder, "n clips", available=100 * gb, free_disk=5 * gb)
    with pytest.raises(ValueError, match="--feature-store must be one of"):
        plan_feature_store("ram", 1, folder, "n clips")
    # --disk-cache writes the features once more to the same disk
    with pytest.raises(ValueError, match="2 times over on disk"):
        plan_feature_store("disk", 6 * gb, folder, "n clips", available=100 * gb, free_disk=10 * gb, disk_copies=2)
    # measured for real here: this machine has memory and its disk has room for one byte
    assert plan_feature_store("disk", 1, folder, "one byte")[0].kind == "disk"
    assert available_memory_bytes() is None or available_memory_bytes() > 0


def test_a_full_disk_is_an_error_when_the_store_is_made_not_a_crash_when_it_is_written(tmp_path, monkeypatch):
    """The file's space is reserved when the tensor is made (posix_fallocate): a sparse file on a full disk
    killed the process with SIGBUS at the first write of a page, hours into feature extraction."""
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="no room for .* of features in .*No space left"):
        FeatureStore(tmp_path / "store").empty((1000, 10))
    assert os.listdir(tmp_path / "store") == []  # nothing left behind
