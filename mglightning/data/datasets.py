"""The built-in data sets, each a loader that a data set's YAML names by ``_target_``
(METHOD.md §2: train and test images pooled, as one :class:`ImageData`).

A loader is called as ``loader(data_root)`` with its config options bound
(``dataset.source``, :class:`mglightning.data.datamodule.FederatedDataModule`); ``data_root``
is the run's (``data_root=``, ``$MG_DATA_DIR``, else the user cache), positional-only because
the config does not set it. Every data set lives in memory once; federated nodes are index views
into it, so a hundred clients cost a hundred index tensors, not a hundred image copies. Real
data sets come from torchvision's own classes (or, for Fashion-MNIST, from the Debian package's
idx files when torchvision's folder is absent) and are loaded once per process; a user's own
data from :mod:`mglightning.data.own_data`. Every way the files can be missing or damaged ends
in a one-line :class:`DataError` that says what to do.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Annotated, NamedTuple

import torch
import torch.nn.functional as F
import torchvision

from mglightning.constraints import boolean, integer, integer_list
from mglightning.data.errors import DataError
from mglightning.data.images import (  # noqa: F401 (re-exported)
    DATA_DIR_ENV,
    ImageData,
    resolve_data_root,
)
from mglightning.data.memory import check_fits
from mglightning.errors import one_line

logger = logging.getLogger(__name__)

DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FMNIST_ENV = "MG_FMNIST_DEBIAN_DIR"

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
IDX_FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DEBIAN_REMEDY = "delete it and re-download, or reinstall dataset-fashion-mnist"
DOWNLOAD_REMEDY = "delete it and re-download (download=true)"
MNIST_OFFLINE_REMEDY = ", or `python -m mglightning.data.mnist_offline` (what `make install` runs)"

# What torchvision and the file readers raise on missing, offline or damaged data; URLError and
# gzip.BadGzipFile are OSErrors, pickle and the idx reader raise the rest.
LOADER_ERRORS = (
    RuntimeError,
    OSError,
    EOFError,
    pickle.UnpicklingError,
    AssertionError,
    ValueError,
    TypeError,
    KeyError,
)

# Synthetic images: noise and shift make samples of one class differ; the smooth prototypes
# differ far more between classes, so a small network separates them within a few steps.
SYNTHETIC_PROTOTYPE_DOWNSCALE = 4
SYNTHETIC_NOISE_STD = 30.0  # on the 0..255 pixel scale
SYNTHETIC_MAX_SHIFT = 2  # pixels, in each direction
# Memory at the peak of making them: float32 copies of the images (shifted prototypes, noise,
# scaled noise, their sum) and the uint8 result (measured: 12.6 bytes a pixel).
SYNTHETIC_BYTES_PER_PIXEL = 17


class TorchvisionSet(NamedTuple):
    """One of torchvision's data sets: its name in messages, its class and its class count."""

    name: str
    dataset_class: type
    num_classes: int


MNIST = TorchvisionSet("mnist", torchvision.datasets.MNIST, 10)
FASHION_MNIST = TorchvisionSet("fmnist", torchvision.datasets.FashionMNIST, 10)
CIFAR10 = TorchvisionSet("cifar10", torchvision.datasets.CIFAR10, 10)
CIFAR100 = TorchvisionSet("cifar100", torchvision.datasets.CIFAR100, 100)

_LOADED: dict[tuple[str, str], ImageData] = {}  # (data set, folder) → its pooled data


def mnist(data_root: str | None = None, /,
          download: Annotated[bool, boolean()] = True) -> ImageData:
    """MNIST: 70,000 28×28 grayscale digits, 10 classes."""
    return _torchvision_pooled(MNIST, data_root, download, MNIST_OFFLINE_REMEDY)


def fmnist(data_root: str | None = None, /,
           download: Annotated[bool, boolean()] = True) -> ImageData:
    """Fashion-MNIST: 70,000 28×28 grayscale clothing images, 10 classes; offline from the
    Debian package's files (``apt-get install dataset-fashion-mnist``) when torchvision's
    folder lacks them."""
    root, debian = resolve_data_root(data_root), debian_fmnist_dir()
    if not _torchvision_files_present(FASHION_MNIST.dataset_class, root) and all(
        (debian / f"{file_name}.gz").is_file() for file_name in IDX_FILE_NAMES
    ):
        key = (FASHION_MNIST.name, str(debian))
        if key not in _LOADED:
            logger.info("loading Fashion-MNIST from the Debian package files in %s", debian)
            images, labels = read_idx_pair_folder(debian, ".gz", DEBIAN_REMEDY)
            _LOADED[key] = _pooled(FASHION_MNIST, debian, images, labels,
                                   FASHION_MNIST.dataset_class.classes)
        return _LOADED[key]
    return _torchvision_pooled(FASHION_MNIST, data_root, download,
                               f", or `apt-get install dataset-fashion-mnist` (files in {debian})")


def cifar10(data_root: str | None = None, /,
            download: Annotated[bool, boolean()] = True) -> ImageData:
    """CIFAR-10: 60,000 32×32 colour images, 10 classes."""
    return _torchvision_pooled(CIFAR10, data_root, download)


def cifar100(data_root: str | None = None, /,
             download: Annotated[bool, boolean()] = True) -> ImageData:
    """CIFAR-100: 60,000 32×32 colour images, 100 (fine) classes."""
    return _torchvision_pooled(CIFAR100, data_root, download)


def _torchvision_pooled(dataset: TorchvisionSet, data_root: str | None, download: bool,
                        other_sources: str = "") -> ImageData:
    """``dataset``'s train and test splits pooled, read once per process and folder;
    ``other_sources`` (", or ...") adds ways to get the files to the message when they are
    missing."""
    root = resolve_data_root(data_root)
    key = (dataset.name, str(root))
    if key not in _LOADED:
        folder = torchvision_folder(dataset.dataset_class, root)
        logger.info("loading %s with torchvision from %s", dataset.name, folder)
        images, labels, class_names = _load_torchvision(dataset, root, download, other_sources)
        _LOADED[key] = _pooled(dataset, folder, images, labels, class_names)
    return _LOADED[key]


def _pooled(dataset: TorchvisionSet, source: Path, images: torch.Tensor, labels: torch.Tensor,
            class_names: list[str]) -> ImageData:
    """The pooled :class:`ImageData`, once its labels are known to name its classes."""
    if len(labels) > 0 and not 0 <= int(labels.min()) <= int(labels.max()) < dataset.num_classes:
        raise DataError(f"labels in {source} span {int(labels.min())}..{int(labels.max())} but "
                        f"{dataset.name} has {dataset.num_classes} classes: the files are "
                        "corrupt, delete them and re-download (download=true)")
    logger.info("%s: %d images of shape %s", dataset.name, len(labels), tuple(images.shape[1:]))
    return ImageData.from_images(images, labels, dataset.num_classes, class_names)


def debian_fmnist_dir() -> Path:
    """Folder of the Debian ``dataset-fashion-mnist`` files; ``$MG_FMNIST_DEBIAN_DIR`` overrides."""
    return Path(os.environ.get(DEBIAN_FMNIST_ENV, DEBIAN_FMNIST_DIR))


def _is_cifar(dataset_class: type) -> bool:
    return issubclass(dataset_class, torchvision.datasets.CIFAR10)  # CIFAR-100 subclasses it


def torchvision_folder(dataset_class: type, data_root: Path) -> Path:
    """The folder torchvision reads ``dataset_class`` from: ``<root>/<Class>/raw`` or the CIFAR
    folder."""
    if _is_cifar(dataset_class):
        return data_root / dataset_class.base_folder
    return data_root / dataset_class.__name__ / "raw"


def _torchvision_file_names(dataset_class: type) -> list[str]:
    """The files torchvision needs in :func:`torchvision_folder`."""
    if _is_cifar(dataset_class):
        batches = dataset_class.train_list + dataset_class.test_list
        return [file_name for file_name, _ in batches] + [dataset_class.meta["filename"]]
    return list(IDX_FILE_NAMES)


def _torchvision_files_present(dataset_class: type, data_root: Path) -> bool:
    folder = torchvision_folder(dataset_class, data_root)
    return all((folder / file_name).is_file()
               for file_name in _torchvision_file_names(dataset_class))


def _load_torchvision(
    dataset: TorchvisionSet, data_root: Path, download: bool, other_sources: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Pooled (images (N, C, H, W), labels (N,)) from torchvision's train and test splits, and
    the class names (CIFAR's from its meta file)."""
    try:
        splits = [dataset.dataset_class(str(data_root), train=train, download=download)
                  for train in (True, False)]
    except LOADER_ERRORS as error:
        raise _torchvision_failure(dataset, data_root, download, error,
                                   other_sources) from error
    images = torch.cat([_images_nchw(split.data) for split in splits])
    labels = torch.cat([torch.as_tensor(split.targets, dtype=torch.int64) for split in splits])
    return images, labels, list(splits[0].classes)


def _images_nchw(split_data) -> torch.Tensor:
    """torchvision's ``.data`` as uint8 (N, C, H, W): MNIST-like (N, H, W), CIFAR (N, H, W, C)."""
    images = torch.as_tensor(split_data)
    if images.dim() == 3:
        return images.unsqueeze(1)
    return images.permute(0, 3, 1, 2).contiguous()


def _torchvision_failure(dataset: TorchvisionSet, data_root: Path, download: bool,
                         error: Exception, other_sources: str) -> DataError:
    """Turn whatever torchvision raised into a DataError: files missing, or files damaged."""
    folder = torchvision_folder(dataset.dataset_class, data_root)
    if not _torchvision_files_present(dataset.dataset_class, data_root):
        return _missing_data_error(dataset, data_root, download, error, other_sources)
    if not _is_cifar(dataset.dataset_class):
        read_idx_pair_folder(folder, "", DOWNLOAD_REMEDY)  # raises naming the damaged file
    return DataError(f"{folder} holds a truncated or corrupt file ({one_line(error)}): "
                     f"delete {folder} and re-download (download=true)")


def _missing_data_error(dataset: TorchvisionSet, data_root: Path, download: bool,
                        error: Exception, other_sources: str) -> DataError:
    """Name the expected folder and files, and every way to get them."""
    folder = torchvision_folder(dataset.dataset_class, data_root)
    expected = ", ".join(_torchvision_file_names(dataset.dataset_class))
    attempt = f"download failed ({one_line(error)})" if download else "download=false"
    remedies = (f"run online once (download=true) to download to {data_root}{other_sources}, "
                f"or point data_root= (or ${DATA_DIR_ENV}) at a folder that already holds "
                f"{folder.relative_to(data_root)}/ from an earlier download")
    return DataError(f"{dataset.name} not found in {folder} (expected {expected}; {attempt}): "
                     f"{remedies}")


def read_idx_pair_folder(
    folder: Path, suffix: str, remedy: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled train + test (images (N, 1, H, W), labels (N,)) from the four idx files in a folder.

    ``suffix`` is ".gz" for compressed files; ``remedy`` ends every error message.
    """
    images, labels = [], []
    for split in ("train", "t10k"):
        image_path = folder / f"{split}-images-idx3-ubyte{suffix}"
        split_images = read_idx(image_path, IDX_IMAGES_MAGIC, remedy)
        split_labels = read_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", IDX_LABELS_MAGIC,
                                remedy)
        if len(split_images) != len(split_labels):
            raise DataError(f"{image_path} holds {len(split_images)} images but its labels file "
                            f"{len(split_labels)} labels: {remedy}")
        images.append(split_images.unsqueeze(1))
        labels.append(split_labels.to(torch.int64))
    return torch.cat(images), torch.cat(labels)


def read_idx(path: Path, expected_magic: int, remedy: str) -> torch.Tensor:
    """Read an idx file (gzipped when its name ends in .gz) as a uint8 tensor of its dimensions.

    The idx header is a big-endian magic number whose low byte is the number of dimensions,
    then one big-endian uint32 per dimension; the payload must hold exactly their product.
    """
    content = _read_file_bytes(path, remedy)
    if len(content) < 4:
        raise _corrupt_file_error(path, 4, len(content), remedy)
    (magic,) = struct.unpack(">I", content[:4])
    if magic != expected_magic:
        raise DataError(f"{path} is truncated or corrupt (magic number 0x{magic:08x}, expected "
                        f"0x{expected_magic:08x}): {remedy}")
    header_size = 4 + 4 * (magic & 0xFF)
    if len(content) < header_size:
        raise _corrupt_file_error(path, header_size, len(content), remedy)
    dims = struct.unpack(f">{magic & 0xFF}I", content[4:header_size])
    if math.prod(dims) == 0:
        raise DataError(f"{path} holds no data (dimensions {list(dims)}): {remedy}")
    expected_size = header_size + math.prod(dims)
    if len(content) != expected_size:
        raise _corrupt_file_error(path, expected_size, len(content), remedy)
    return torch.frombuffer(bytearray(content), dtype=torch.uint8, offset=header_size).view(*dims)


def _read_file_bytes(path: Path, remedy: str) -> bytes:
    """The whole (decompressed) content of a file; gzip damage becomes a DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as compressed:
                return compressed.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"{path} is truncated or corrupt ({one_line(error)}): "
                        f"{remedy}") from error


def _corrupt_file_error(path: Path, expected_size: int, found_size: int, remedy: str) -> DataError:
    return DataError(f"{path} is truncated or corrupt (expected {expected_size} bytes, found "
                     f"{found_size}): {remedy}")


def make_synthetic(
    data_root: str | None = None, /,
    num_classes: Annotated[int, integer(2)] = 10,
    shape: Annotated[tuple[int, int, int] | list[int], integer_list(1, length=3)] = (1, 28, 28),
    samples_per_class: Annotated[int, integer(1)] = 300,
    seed: Annotated[int, integer(0)] = 0,
) -> ImageData:
    """Procedural class-conditional images for tests and smoke runs without downloads (no
    files: ``data_root`` is not read).

    Each class has a seeded smooth prototype (a coarse random pattern upsampled); each sample is
    its prototype shifted by a few pixels plus pixel noise, so classes are clearly separable
    while no two samples are identical.
    """
    channels, height, width = (int(size) for size in shape)
    if num_classes < 1 or samples_per_class < 1 or min(channels, height, width) < 1:
        raise DataError(f"dataset.source needs positive num_classes, samples_per_class and "
                        f"shape, got {num_classes}, {samples_per_class}, {tuple(shape)}")
    check_fits(SYNTHETIC_BYTES_PER_PIXEL * num_classes * samples_per_class * channels * height
               * width, f"{num_classes * samples_per_class} synthetic images of "
               f"{channels}x{height}x{width} (CxHxW) pixels", "lower dataset.source.shape, "
               "dataset.source.samples_per_class or dataset.source.num_classes")
    generator = torch.Generator().manual_seed(seed)
    coarse_size = (max(2, height // SYNTHETIC_PROTOTYPE_DOWNSCALE),
                   max(2, width // SYNTHETIC_PROTOTYPE_DOWNSCALE))
    coarse = torch.rand(num_classes, channels, *coarse_size, generator=generator)
    prototypes = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    shifted = _shifted_copies(prototypes * 255.0, labels, generator)  # (N, C, H, W)
    noisy = shifted + SYNTHETIC_NOISE_STD * torch.randn(shifted.shape, generator=generator)
    images = noisy.round_().clamp_(0, 255).to(torch.uint8)
    return ImageData.from_images(images, labels, num_classes)


def _shifted_copies(
    prototypes: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """One copy of ``prototypes[label]`` per label, shifted by a random offset (edge-replicated)."""
    _, channels, height, width = prototypes.shape
    padded = F.pad(prototypes, [SYNTHETIC_MAX_SHIFT] * 4, mode="replicate")
    offsets = torch.randint(0, 2 * SYNTHETIC_MAX_SHIFT + 1, (len(labels), 2), generator=generator)
    rows = offsets[:, :1] + torch.arange(height)  # (N, H)
    cols = offsets[:, 1:] + torch.arange(width)  # (N, W)
    return padded[
        labels.view(-1, 1, 1, 1),
        torch.arange(channels).view(1, -1, 1, 1),
        rows.view(-1, 1, height, 1),
        cols.view(-1, 1, 1, width),
    ]
