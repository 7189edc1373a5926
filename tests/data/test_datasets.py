"""Loaders against the real on-disk formats, written here in tiny form (METHOD.md §2)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

from mglightning.data import datasets
from mglightning.data.datasets import DataError, ImageData, make_synthetic, resolve_data_root

TRAIN_COUNT, TEST_COUNT = 12, 5


def load(name: str, data_root: str, download: bool) -> ImageData:
    """The built-in data set ``name`` (its loader, ``mglightning.data.datasets.<name>``)."""
    return getattr(datasets, name)(data_root, download=download)
REAL_FMNIST_FILES = [datasets.DEBIAN_FMNIST_DIR / f"{name}.gz" for name in datasets.IDX_FILE_NAMES]


@pytest.fixture(autouse=True)
def no_debian_fmnist(tmp_path, monkeypatch):
    """Point the Debian Fashion-MNIST folder at an empty one, so installed files never leak in."""
    empty_dir = tmp_path / "no-debian-files"
    empty_dir.mkdir()
    monkeypatch.setenv(datasets.DEBIAN_FMNIST_ENV, str(empty_dir))


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """An idx file: big-endian magic, big-endian dims, raw uint8 payload; gzipped if *.gz."""
    content = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    content += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as compressed:
            compressed.write(content)
    else:
        path.write_bytes(content)


def write_idx_folder(folder: Path, suffix: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The four MNIST-style idx files; returns the pooled (train then test) images and labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for split, count in (("train", TRAIN_COUNT), ("t10k", TEST_COUNT)):
        split_images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        split_labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", split_images,
                  datasets.IDX_IMAGES_MAGIC)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", split_labels,
                  datasets.IDX_LABELS_MAGIC)
        images.append(split_images)
        labels.append(split_labels)
    return np.concatenate(images), np.concatenate(labels)


def assert_pooled(data: ImageData, images: np.ndarray, labels: np.ndarray) -> None:
    """Loaded images (N, C, H, W) and int64 labels equal what was written, in pooled order."""
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert torch.equal(data.images, torch.from_numpy(images))
    assert torch.equal(data.labels, torch.from_numpy(labels.astype(np.int64)))


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the CIFAR python batches were written:
    loaded with encoding="latin1" (as torchvision does) their keys become 'data', 'labels'."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, content: dict) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(content)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def random_cifar_rows(rng: np.random.Generator, count: int, num_classes: int):
    """(count, 3072) uint8 rows in CIFAR's layout (red plane, green plane, blue plane) + labels."""
    rows = rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)
    return rows, rng.integers(0, num_classes, size=count).tolist()


def write_cifar10(root: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py with data_batch_1..5, test_batch, batches.meta (real keys)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    all_rows, all_labels = [], []
    batch_names = [f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]
    for batch_name in batch_names:
        rows, labels = random_cifar_rows(rng, 3, 10)
        write_py2_pickle(folder / batch_name, {b"batch_label": batch_name.encode(),
                                               b"labels": labels, b"data": rows,
                                               b"filenames": [b"x.png"] * len(labels)})
        all_rows.append(rows)
        all_labels += labels
    names = [f"class{i}".encode() for i in range(10)]
    write_py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": 3, b"num_vis": 3072,
                                               b"label_names": names})
    return np.concatenate(all_rows).reshape(-1, 3, 32, 32), np.array(all_labels)


def write_cifar100(root: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """cifar-100-python with train, test, meta (real keys, fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    all_rows, all_labels = [], []
    for split_name, count in (("train", 7), ("test", 4)):
        rows, fine_labels = random_cifar_rows(rng, count, 100)
        write_py2_pickle(folder / split_name, {b"filenames": [b"x.png"] * count,
                                               b"batch_label": split_name.encode(),
                                               b"fine_labels": fine_labels,
                                               b"coarse_labels": [label // 5 for label in
                                                                  fine_labels],
                                               b"data": rows})
        all_rows.append(rows)
        all_labels += fine_labels
    names = [f"fine{i}".encode() for i in range(100)]
    write_py2_pickle(folder / "meta", {b"fine_label_names": names,
                                       b"coarse_label_names": [b"coarse"] * 20})
    return np.concatenate(all_rows).reshape(-1, 3, 32, 32), np.array(all_labels)


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """Our tiny CIFAR files cannot match the real files' md5 sums: check only that they exist.

    torchvision's CIFAR classes check batches and meta through ``cifar.check_integrity``.
    """
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


def test_debian_fmnist_gz_files_are_read_and_pooled(tmp_path, monkeypatch):
    debian_dir = tmp_path / "debian"
    images, labels = write_idx_folder(debian_dir, ".gz", seed=1)
    monkeypatch.setenv(datasets.DEBIAN_FMNIST_ENV, str(debian_dir))
    data = load("fmnist", str(tmp_path / "root"), download=False)
    assert_pooled(data, images[:, None], labels)
    assert data.num_classes == 10 and data.shape == (1, 28, 28)
    assert data.class_names == tuple(torchvision.datasets.FashionMNIST.classes)


@pytest.mark.parametrize("damage", ["short payload", "cut gzip stream", "wrong magic"])
def test_damaged_idx_gz_file_raises_data_error(tmp_path, monkeypatch, damage):
    debian_dir = tmp_path / "debian"
    write_idx_folder(debian_dir, ".gz", seed=2)
    damaged = debian_dir / "t10k-images-idx3-ubyte.gz"
    if damage == "short payload":
        header = struct.pack(">IIII", datasets.IDX_IMAGES_MAGIC, TEST_COUNT, 28, 28)
        with gzip.open(damaged, "wb") as compressed:
            compressed.write(header + bytes(100))
    elif damage == "cut gzip stream":
        damaged.write_bytes(damaged.read_bytes()[:-200])
    else:
        write_idx(damaged, np.zeros((TEST_COUNT, 28, 28)), datasets.IDX_LABELS_MAGIC)
    monkeypatch.setenv(datasets.DEBIAN_FMNIST_ENV, str(debian_dir))
    with pytest.raises(DataError, match="truncated or corrupt") as error:
        load("fmnist", str(tmp_path / "root"), download=False)
    assert str(damaged) in str(error.value) and "\n" not in str(error.value)
    assert "dataset-fashion-mnist" in str(error.value)


def test_short_idx_payload_reports_expected_and_found_bytes(tmp_path):
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as compressed:
        compressed.write(struct.pack(">II", datasets.IDX_LABELS_MAGIC, 10) + bytes(4))
    with pytest.raises(DataError, match=r"expected 18 bytes, found 12"):
        datasets.read_idx(path, datasets.IDX_LABELS_MAGIC, datasets.DEBIAN_REMEDY)


@pytest.mark.parametrize("name, class_folder", [("mnist", "MNIST"), ("fmnist", "FashionMNIST")])
def test_torchvision_raw_folder_is_read_and_pooled(tmp_path, name, class_folder):
    images, labels = write_idx_folder(tmp_path / class_folder / "raw", "", seed=3)
    data = load(name, str(tmp_path), download=False)
    assert_pooled(data, images[:, None], labels)


def test_truncated_torchvision_raw_file_names_the_file(tmp_path):
    raw_folder = tmp_path / "MNIST" / "raw"
    write_idx_folder(raw_folder, "", seed=4)
    damaged = raw_folder / "train-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated or corrupt") as error:
        load("mnist", str(tmp_path), download=False)
    assert str(damaged) in str(error.value) and "download=true" in str(error.value)


@pytest.mark.parametrize("file_name, empty", [
    ("train-images-idx3-ubyte", np.zeros((0, 28, 28))),
    ("t10k-labels-idx1-ubyte", np.zeros(0)),
])
def test_an_idx_file_with_zero_images_names_the_file(tmp_path, file_name, empty):
    """torchvision's reader raises a bare ValueError on an empty payload; the loader names
    the file instead."""
    raw_folder = tmp_path / "MNIST" / "raw"
    write_idx_folder(raw_folder, "", seed=8)
    magic = datasets.IDX_IMAGES_MAGIC if empty.ndim == 3 else datasets.IDX_LABELS_MAGIC
    write_idx(raw_folder / file_name, empty, magic)
    with pytest.raises(DataError, match="holds no data") as error:
        load("mnist", str(tmp_path), download=False)
    assert str(raw_folder / file_name) in str(error.value) and "\n" not in str(error.value)


def test_labels_beyond_the_class_count_raise(tmp_path):
    raw_folder = tmp_path / "MNIST" / "raw"
    write_idx_folder(raw_folder, "", seed=9)
    write_idx(raw_folder / "t10k-labels-idx1-ubyte", np.full(TEST_COUNT, 12),
              datasets.IDX_LABELS_MAGIC)
    with pytest.raises(DataError, match=f"labels in {raw_folder} span .*12"):
        load("mnist", str(tmp_path), download=False)


@pytest.mark.parametrize("name, writer", [("cifar10", write_cifar10), ("cifar100", write_cifar100)])
def test_cifar_python_batches_are_read_as_chw(tmp_path, skip_cifar_md5, name, writer):
    images, labels = writer(tmp_path, seed=5)
    data = load(name, str(tmp_path), download=False)
    assert_pooled(data, images, labels)
    assert data.shape == (3, 32, 32) and data.num_classes == (10 if name == "cifar10" else 100)
    prefix = "class" if name == "cifar10" else "fine"  # the names in the meta file
    assert data.class_names == tuple(f"{prefix}{i}" for i in range(data.num_classes))


def test_truncated_cifar_batch_raises_data_error(tmp_path, skip_cifar_md5):
    write_cifar10(tmp_path, seed=6)
    damaged = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    damaged.write_bytes(damaged.read_bytes()[:500])
    with pytest.raises(DataError, match="corrupt") as error:
        load("cifar10", str(tmp_path), download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(error.value)


def test_cifar_md5_mismatch_raises_data_error(tmp_path):
    """Without the test bypass, torchvision's md5 check rejects the files: reported as corrupt."""
    write_cifar10(tmp_path, seed=7)
    with pytest.raises(DataError, match="corrupt"):
        load("cifar10", str(tmp_path), download=False)


@pytest.mark.parametrize("name, folder", [("fmnist", "FashionMNIST/raw"),
                                          ("mnist", "MNIST/raw"),
                                          ("cifar10", "cifar-10-batches-py"),
                                          ("cifar100", "cifar-100-python")])
def test_missing_data_names_folder_and_remedies(tmp_path, name, folder):
    with pytest.raises(DataError) as error:
        load(name, str(tmp_path), download=False)
    message = str(error.value)
    assert str(tmp_path / folder) in message and "download=true" in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fmnist")
    assert ("mglightning.data.mnist_offline" in message) == (name == "mnist")
    assert f"data_root= (or $MG_DATA_DIR) at a folder that already holds {folder}/" in message
    assert "\n" not in message


@pytest.mark.parametrize("name, module", [("fmnist", torchvision.datasets.mnist),
                                          ("cifar10", torchvision.datasets.cifar)])
def test_failed_download_raises_data_error(tmp_path, monkeypatch, name, module):
    """Offline: torchvision's own download code runs and its URLError becomes a DataError."""

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(module, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="download failed.*no network") as error:
        load(name, str(tmp_path), download=True)
    assert "\n" not in str(error.value)


def test_resolve_data_root_prefers_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv(datasets.DATA_DIR_ENV)
    assert resolve_data_root(None) == Path.home() / ".cache" / "mglightning" / "data"


def test_repeated_loads_share_one_tensor(tmp_path):
    write_idx_folder(tmp_path / "MNIST" / "raw", "", seed=8)
    first = load("mnist", str(tmp_path), download=False)
    assert load("mnist", str(tmp_path), download=False) is first


@pytest.mark.skipif(not all(path.is_file() for path in REAL_FMNIST_FILES),
                    reason=f"dataset-fashion-mnist not installed in {datasets.DEBIAN_FMNIST_DIR}")
def test_real_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DEBIAN_FMNIST_ENV, str(datasets.DEBIAN_FMNIST_DIR))
    data = load("fmnist", str(tmp_path), download=False)
    assert data.images.shape == (70000, 1, 28, 28) and data.num_classes == 10
    assert torch.equal(torch.bincount(data.labels), torch.full((10,), 7000))


def test_batch_normalizes_with_channel_statistics():
    data = make_synthetic(num_classes=3, shape=(3, 8, 8), samples_per_class=20, seed=0)
    everything = torch.arange(len(data))
    images, labels = data.batch(everything)
    pixels = data.images.double() / 255.0
    expected_mean = pixels.mean(dim=(0, 2, 3))
    expected_std = pixels.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(torch.tensor(data.mean, dtype=torch.float64), expected_mean)
    torch.testing.assert_close(torch.tensor(data.std, dtype=torch.float64), expected_std)
    expected = (pixels - expected_mean.view(1, 3, 1, 1)) / expected_std.view(1, 3, 1, 1)
    assert images.dtype == torch.float32 and images.shape == (60, 3, 8, 8)
    torch.testing.assert_close(images.double(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(labels, data.labels)


def test_synthetic_is_seeded_balanced_and_varied():
    data = make_synthetic(num_classes=4, shape=(2, 16, 12), samples_per_class=30,
                        seed=3)
    assert data.images.shape == (120, 2, 16, 12) and data.num_classes == 4
    assert data.class_names is None  # ids only
    assert torch.equal(torch.bincount(data.labels), torch.full((4,), 30))
    same = make_synthetic(num_classes=4, shape=(2, 16, 12), samples_per_class=30,
                        seed=3)
    other = make_synthetic(num_classes=4, shape=(2, 16, 12), samples_per_class=30,
                         seed=4)
    assert torch.equal(data.images, same.images)
    assert not torch.equal(data.images, other.images)
    assert len(torch.unique(data.images.flatten(1), dim=0)) == len(data)


def test_synthetic_classes_are_learnable_in_a_few_steps():
    """A small CNN trained for a few steps on half the images classifies the other half."""
    torch.manual_seed(0)
    data = make_synthetic(num_classes=10, shape=(1, 28, 28), samples_per_class=60,
                        seed=0)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    train_images, train_labels = data.batch(order[::2])
    test_images, test_labels = data.batch(order[1::2])
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(train_images), train_labels).backward()
        optimizer.step()
    accuracy = (model(test_images).argmax(dim=1) == test_labels).float().mean()
    assert accuracy > 0.9
