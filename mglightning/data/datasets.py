"""Image data sets as one pooled uint8 tensor (SPEC §2: train and test images are pooled).

Every data set lives in memory once, as an :class:`ImageData`; federated nodes are index views
into it, so a hundred clients cost a hundred index tensors, not a hundred image copies.
Real data sets come from torchvision's own classes (or, for Fashion-MNIST, from the Debian
package's idx files when torchvision's folder is absent); a user's own data from
:mod:`mglightning.data.own_data`. Every way the files can be missing or damaged ends in a
one-line :class:`DataError` that says what to do.
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

import torch
import torch.nn.functional as F
import torchvision

from mglightning.data.errors import DataError
from mglightning.data.images import (  # noqa: F401 (re-exported)
    DATA_DIR_ENV,
    ImageData,
    resolve_data_root,
)
from mglightning.data.own_data import OWN_DATA_LOADERS
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

TORCHVISION_CLASSES = {
    "mnist": torchvision.datasets.MNIST,
    "fmnist": torchvision.datasets.FashionMNIST,
    "cifar10": torchvision.datasets.CIFAR10,
    "cifar100": torchvision.datasets.CIFAR100,
}
NUM_CLASSES = {"mnist": 10, "fmnist": 10, "cifar10": 10, "cifar100": 100}
DATASET_NAMES = (*TORCHVISION_CLASSES, *OWN_DATA_LOADERS, "synthetic")
DEBIAN_REMEDY = "delete it and re-download, or reinstall dataset-fashion-mnist"
DOWNLOAD_REMEDY = "delete it and re-download (download=true)"

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

_LOADED: dict[tuple[str, str], ImageData] = {}




def load_dataset(
    name: str, root: str | None = None, download: bool = True, **options
) -> ImageData:
    """Load a data set with train and test pooled (SPEC §2); real ones are loaded once per process.

    ``options`` apply to ``synthetic`` (num_classes, shape, samples_per_class, seed) and to a
    user's own data (``folder``: path, image_size; ``arrays``: path), read anew each call.
    """
    if name == "synthetic":
        return make_synthetic(**options)
    if name in OWN_DATA_LOADERS:
        pooled = OWN_DATA_LOADERS[name](**options)
        logger.info("%s: %d images of shape %s, %d classes", options.get("path"),
                    len(pooled.labels), tuple(pooled.images.shape[1:]), len(pooled.class_names))
        return ImageData.from_images(pooled.images, pooled.labels, len(pooled.class_names),
                                     pooled.class_names, pooled.node_ids, pooled.node_names)
    if name not in TORCHVISION_CLASSES:
        raise DataError(f"unknown data set {name!r} (dataset.name): use one of {DATASET_NAMES}")
    if options:
        raise DataError(f"data set {name!r} takes no options, got {sorted(options)}: "
                        "they belong to dataset.name=synthetic")
    data_root = resolve_data_root(root)
    key = (name, str(data_root))
    if key not in _LOADED:
        _LOADED[key] = _load_real(name, data_root, download)
    return _LOADED[key]


def _load_real(name: str, data_root: Path, download: bool) -> ImageData:
    """Pick the source of a real data set and pool its train and test parts."""
    source = debian_fmnist_dir()
    if name == "fmnist" and not _torchvision_files_present(name, data_root) and all(
        (source / f"{file_name}.gz").is_file() for file_name in IDX_FILE_NAMES
    ):
        logger.info("loading Fashion-MNIST from the Debian package files in %s", source)
        images, labels = read_idx_pair_folder(source, ".gz", DEBIAN_REMEDY)
        class_names = TORCHVISION_CLASSES[name].classes
    else:
        source = torchvision_folder(name, data_root)
        logger.info("loading %s with torchvision from %s", name, source)
        images, labels, class_names = _load_torchvision(name, data_root, download)
    if len(labels) > 0 and not 0 <= int(labels.min()) <= int(labels.max()) < NUM_CLASSES[name]:
        raise DataError(f"labels in {source} span {int(labels.min())}..{int(labels.max())} but "
                        f"{name} has {NUM_CLASSES[name]} classes: the files are corrupt, delete "
                        "them and re-download (download=true)")
    logger.info("%s: %d images of shape %s", name, len(labels), tuple(images.shape[1:]))
    return ImageData.from_images(images, labels, NUM_CLASSES[name], class_names)


def debian_fmnist_dir() -> Path:
    """Folder of the Debian ``dataset-fashion-mnist`` files; ``$MG_FMNIST_DEBIAN_DIR`` overrides."""
    return Path(os.environ.get(DEBIAN_FMNIST_ENV, DEBIAN_FMNIST_DIR))


def torchvision_folder(name: str, data_root: Path) -> Path:
    """The folder torchvision reads ``name`` from: ``<root>/<Class>/raw`` or the CIFAR folder."""
    dataset_class = TORCHVISION_CLASSES[name]
    if name in ("cifar10", "cifar100"):
        return data_root / dataset_class.base_folder
    return data_root / dataset_class.__name__ / "raw"


def _torchvision_file_names(name: str) -> list[str]:
    """The files torchvision needs in :func:`torchvision_folder`."""
    dataset_class = TORCHVISION_CLASSES[name]
    if name in ("cifar10", "cifar100"):
        batches = dataset_class.train_list + dataset_class.test_list
        return [file_name for file_name, _ in batches] + [dataset_class.meta["filename"]]
    return list(IDX_FILE_NAMES)


def _torchvision_files_present(name: str, data_root: Path) -> bool:
    folder = torchvision_folder(name, data_root)
    return all((folder / file_name).is_file() for file_name in _torchvision_file_names(name))


def _load_torchvision(
    name: str, data_root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Pooled (images (N, C, H, W), labels (N,)) from torchvision's train and test splits, and
    the class names (CIFAR's from its meta file)."""
    dataset_class = TORCHVISION_CLASSES[name]
    try:
        splits = [dataset_class(str(data_root), train=train, download=download)
                  for train in (True, False)]
    except LOADER_ERRORS as error:
        raise _torchvision_failure(name, data_root, download, error) from error
    images = torch.cat([_images_nchw(split.data) for split in splits])
    labels = torch.cat([torch.as_tensor(split.targets, dtype=torch.int64) for split in splits])
    return images, labels, list(splits[0].classes)


def _images_nchw(split_data) -> torch.Tensor:
    """torchvision's ``.data`` as uint8 (N, C, H, W): MNIST-like (N, H, W), CIFAR (N, H, W, C)."""
    images = torch.as_tensor(split_data)
    if images.dim() == 3:
        return images.unsqueeze(1)
    return images.permute(0, 3, 1, 2).contiguous()


def _torchvision_failure(name: str, data_root: Path, download: bool, error: Exception) -> DataError:
    """Turn whatever torchvision raised into a DataError: files missing, or files damaged."""
    folder = torchvision_folder(name, data_root)
    if not _torchvision_files_present(name, data_root):
        return _missing_data_error(name, data_root, download, error)
    if name in ("mnist", "fmnist"):
        read_idx_pair_folder(folder, "", DOWNLOAD_REMEDY)  # raises naming the damaged file
    return DataError(f"{folder} holds a truncated or corrupt file ({one_line(error)}): "
                     f"delete {folder} and re-download (download=true)")


def _missing_data_error(name: str, data_root: Path, download: bool, error: Exception) -> DataError:
    """Name the expected folder and files, and every way to get them."""
    folder = torchvision_folder(name, data_root)
    expected = ", ".join(_torchvision_file_names(name))
    attempt = f"download failed ({one_line(error)})" if download else "download=false"
    remedies = f"run online once (download=true) to download to {data_root}"
    if name == "fmnist":
        remedies += (f", or `apt-get install dataset-fashion-mnist` (files in "
                     f"{debian_fmnist_dir()})")
    if name == "mnist":
        remedies += ", or `python -m mglightning.data.mnist_offline` (what `make install` runs)"
    remedies += (f", or point data_root= (or ${DATA_DIR_ENV}) at a folder that already holds "
                 f"{folder.relative_to(data_root)}/ from an earlier download")
    return DataError(f"{name} not found in {folder} (expected {expected}; {attempt}): {remedies}")


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
    num_classes: int = 10,
    shape: tuple[int, int, int] | list[int] = (1, 28, 28),
    samples_per_class: int = 300,
    seed: int = 0,
) -> ImageData:
    """Procedural class-conditional images for tests and smoke runs without downloads.

    Each class has a seeded smooth prototype (a coarse random pattern upsampled); each sample is
    its prototype shifted by a few pixels plus pixel noise, so classes are clearly separable
    while no two samples are identical.
    """
    channels, height, width = (int(size) for size in shape)
    if num_classes < 1 or samples_per_class < 1 or min(channels, height, width) < 1:
        raise DataError(f"dataset.synthetic needs positive num_classes, samples_per_class and "
                        f"shape, got {num_classes}, {samples_per_class}, {tuple(shape)}")
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
