"""What data would take in memory, priced before it is allocated, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_tree

from mglightning.data import memory
from mglightning.data.own_data import load_arrays, load_image_folder
from mglightning.errors import ConfigError


def test_available_memory_is_the_kernel_s_mem_available(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000 kB\nMemFree:  100 kB\nMemAvailable:  3000 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "CGROUP_LIMIT", tmp_path / "none")
    assert memory.available_bytes() == 3000 * 1024
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("2000000\n")
    usage.write_text("500000\n")
    monkeypatch.setattr(memory, "CGROUP_LIMIT", limit)
    monkeypatch.setattr(memory, "CGROUP_USAGE", usage)
    assert memory.available_bytes() == 1500000  # the container's limit leaves less
    limit.write_text("max\n")
    assert memory.available_bytes() == 3000 * 1024


def test_needs_above_half_the_available_memory_are_refused_naming_both(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 3_000_000)
    assert memory.shortfall(1_500_000, "these", "do less") is None
    message = memory.shortfall(1_500_001, "these", "do less")
    assert message == ("these need 1.5 MB of memory but cpu has 3.0 MB available, and a run "
                       "plans for at most 50% of it: do less")
    with pytest.raises(ConfigError, match="^these need"):
        memory.check_fits(1_500_001, "these", "do less")


def with_available(monkeypatch, available: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": available)


def test_an_image_folder_is_priced_from_its_headers(tmp_path, monkeypatch):
    """4 grayscale 8x6 files, one RGB 8x6: 5 RGB images of 144 bytes, 3 copies, and the
    largest file (RGB, 144) decoded and converted (2 copies): 5*144*3 + 2*144 = 2448."""
    write_tree(tmp_path, {"a": 4}, size=(8, 6))
    write_tree(tmp_path, {"b": 1}, size=(8, 6), mode="RGB")
    with_available(monkeypatch, 2 * 2448)
    assert load_image_folder(path=str(tmp_path)).shape == (3, 8, 6)
    with_available(monkeypatch, 2 * 2448 - 2)
    with pytest.raises(ConfigError, match=r"^5 images of 3x8x6 \(CxHxW\) pixels need 2.4 kB"):
        load_image_folder(path=str(tmp_path))
    # resized to 20x10: 5*3*200*3 + 2*144 = 9288, the files themselves unchanged
    with_available(monkeypatch, 2 * 9288 - 2)
    with pytest.raises(ConfigError, match=r"^5 images of 3x20x10 \(CxHxW\) pixels need 9.3 kB"):
        load_image_folder(path=str(tmp_path), image_size=[20, 10])


def test_an_npz_is_priced_from_its_array_headers(tmp_path, monkeypatch):
    """images (4, 3, 3) uint8: 36 bytes, read and copied to NCHW; labels (4,) int64: 32 bytes;
    36 + 32 + 36 = 104."""
    np.savez(tmp_path / "data.npz", images=np.zeros((4, 3, 3), np.uint8),
             labels=np.arange(4, dtype=np.int64))
    with_available(monkeypatch, 2 * 104)
    assert len(load_arrays(path=str(tmp_path / "data.npz"))) == 4
    with_available(monkeypatch, 2 * 104 - 2)
    with pytest.raises(ConfigError, match=r"\(images: uint8 \(4, 3, 3\)\) need 104 B"):
        load_arrays(path=str(tmp_path / "data.npz"))
