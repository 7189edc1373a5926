"""Your own data by config alone: an image tree or a ``.npz`` of arrays, pooled.

``dataset=folder dataset.source.path=DIR``: PNG/JPEG files in ``DIR/<class>/<image>``, or in
``DIR/<node>/<class>/<image>`` when the data say which node each image belongs to (what the
natural partition keeps, as FEMNIST's writers). ``dataset=arrays
dataset.source.path=FILE.npz``: ``images`` (uint8, N×H×W or N×H×W×C), ``labels`` (integers)
and, optionally, ``node_ids`` (integers), read with ``allow_pickle=False`` so a file never runs
code. Either loader is a ``dataset.source`` target like the built-in sets
(:mod:`mglightning.data.datasets`): the result is pooled (METHOD.md §2) and partitioned by the same
partitioners. Labels become 0..K-1 in sorted order of the class names (folders) or values
(arrays); nodes likewise. Bad input ends in one :class:`DataError` line naming the file or key
and what to change; data that would not fit in memory, priced from the files' headers before
any of it is decoded, in one :class:`~mglightning.errors.ConfigError` line
(:mod:`mglightning.data.memory`).
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mglightning.constraints import Rule
from mglightning.data.errors import DataError
from mglightning.data.images import ImageData
from mglightning.data.memory import check_fits, size_text
from mglightning.errors import one_line

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAYSCALE_MODES = ("1", "L", "LA")  # read as one channel; every other mode as RGB
PATH_KEY = "dataset.source.path"
IMAGE_SIZE_KEY = "dataset.source.image_size"
FOLDER_LAYOUT = "DIR/<class>/<image> (or DIR/<node>/<class>/<image> for a natural partition)"
ARRAYS_LAYOUT = ("np.savez(FILE, images=uint8 (N, H, W) or (N, H, W, C), labels=ints (N,), "
                 "optional node_ids=ints (N,))")
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # what np.load takes for an .npz (a zip archive)
NPY_MAGIC = b"\x93NUMPY"  # a single array, as np.save writes it
PICKLE_PROTOCOL_2_AND_UP = b"\x80"
# Copies of the pixels alive together at the peak of loading (measured: 3.2 and 1.6 bytes a
# pixel): a folder's decoded images, their stack and its NCHW copy; an npz's array and its
# NCHW copy.
FOLDER_LOAD_COPIES = 3
ARRAYS_LOAD_COPIES = 2
# Converting a decoded file to L or RGB copies it: the largest file costs twice its pixels.
DECODE_COPIES = 2


def _is_image_size(value) -> bool:
    """One integer >= 1 (a square), a list of one or two (height, width), or null."""
    sizes = [value] if isinstance(value, int) else value
    return value is None or (isinstance(sizes, list) and len(sizes) in (1, 2) and all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes))


IMAGE_SIZE_RULE = Rule(_is_image_size, "[height, width] of integers >= 1, one such number for a "
                                       "square, or null for the files' own size")


def load_image_folder(
    data_root: str | None = None, /, path: str | None = None,
    image_size: Annotated[int | Sequence[int] | None, IMAGE_SIZE_RULE] = None,
) -> ImageData:
    """An image tree, every image one size (its own, or ``image_size`` [H, W] after resizing);
    ``path`` is the user's own, ``data_root`` is not read. Nothing is decoded before the
    headers say that the images fit in memory."""
    root = _existing_path(path, directory=True)
    size = _image_size(image_size)
    top_folders = _subfolders(root)  # classes, or nodes holding classes
    if not top_folders:
        raise DataError(f"{PATH_KEY}={root} holds no folders: lay images out as {FOLDER_LAYOUT}, "
                        "PNG or JPEG")
    has_nodes = [bool(_subfolders(folder)) for folder in top_folders]
    if any(has_nodes) and not all(has_nodes):
        flat = top_folders[has_nodes.index(False)]
        nested = top_folders[has_nodes.index(True)]
        raise DataError(f"{PATH_KEY}={root} mixes class folders ({flat.name}) and node folders "
                        f"({nested.name}): use one layout, {FOLDER_LAYOUT}")
    class_folders_by_node = ([_subfolders(node) for node in top_folders] if all(has_nodes)
                             else [top_folders])
    files, class_of_file, node_of_file = [], [], []
    for node_index, class_folders in enumerate(class_folders_by_node):
        for class_folder in class_folders:
            images = _image_files(class_folder)
            files += images
            class_of_file += [class_folder.name] * len(images)
            node_of_file += [node_index] * len(images)
    class_names = _class_names(sorted(set(class_of_file)), root)
    labels = torch.tensor([class_names.index(name) for name in class_of_file])
    images = _stack(files, size)
    if not all(has_nodes):
        return _pooled(root, images, labels, class_names)
    return _pooled(root, images, labels, class_names, torch.tensor(node_of_file),
                   [node.name for node in top_folders])


def load_arrays(data_root: str | None = None, /, path: str | None = None) -> ImageData:
    """A ``.npz`` of ``images``, ``labels`` and optionally ``node_ids``; ``path`` is the
    user's own, ``data_root`` is not read."""
    file = _existing_path(path, directory=False)
    arrays = _read_npz(file)
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise DataError(f"{file}: images is {images.dtype} {images.shape}, expected uint8 pixels "
                        f"0..255 of shape (N, H, W) or (N, H, W, C) with N >= 1: {ARRAYS_LAYOUT}")
    if images.ndim == 4 and images.shape[3] > 4:
        raise DataError(f"{file}: images has shape {images.shape}, whose last axis is not a "
                        "channel axis (1, 3 or 4): store (N, H, W, C), e.g. "
                        "np.moveaxis(images, 1, -1) for (N, C, H, W)")
    labels, class_values = _dense_ids(arrays, "labels", file, len(images))
    class_names = _class_names([str(value) for value in class_values], file)
    images_nchw = torch.from_numpy(images.reshape(*images.shape[:3], -1)).permute(0, 3, 1, 2)
    if "node_ids" not in arrays:
        return _pooled(file, images_nchw.contiguous(), labels, class_names)
    node_ids, node_values = _dense_ids(arrays, "node_ids", file, len(images))
    return _pooled(file, images_nchw.contiguous(), labels, class_names, node_ids,
                   [str(value) for value in node_values])


def _pooled(source: Path, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
            node_ids: torch.Tensor | None = None,
            node_names: list[str] | None = None) -> ImageData:
    """uint8 images (N, C, H, W) and labels (N,) in 0..K-1 naming ``class_names`` as one
    pooled data set; where the data assign nodes, node ids (N,) in 0..M-1 naming
    ``node_names``."""
    logger.info("%s: %d images of shape %s, %d classes", source, len(labels),
                tuple(images.shape[1:]), len(class_names))
    return ImageData.from_images(images, labels, len(class_names), class_names, node_ids,
                                 node_names)


def _existing_path(path: str | None, directory: bool) -> Path:
    kind = "a folder of class folders" if directory else "an .npz file"
    if not path:
        raise DataError(f"{PATH_KEY} is not set: give {kind}, e.g. {PATH_KEY}=my_data"
                        f"{'' if directory else '.npz'}")
    resolved = Path(path).expanduser()
    if resolved.is_dir() if directory else resolved.is_file():
        return resolved
    if resolved.exists():
        found, loader, other = (
            ("a file", "dataset=folder", "dataset=arrays takes an .npz file") if directory
            else ("a folder", "dataset=arrays", "dataset=folder takes a folder of images"))
        raise DataError(f"{PATH_KEY}={path} is {found}, but {loader} takes {kind} ({other})")
    raise DataError(f"{PATH_KEY}={path}: no such {'folder' if directory else 'file'} "
                    f"(relative paths start at the working directory); give {kind}")


def _image_size(image_size) -> tuple[int, int] | None:
    """``image_size`` as (H, W): one number for a square, [H, W], or None (the files' size)."""
    if image_size is None:
        return None
    sizes = [image_size] if isinstance(image_size, int) else list(image_size)
    return sizes[0], sizes[-1]


def _subfolders(folder: Path) -> list[Path]:
    """Sorted visible subfolders (hidden ones, like .ipynb_checkpoints, are not classes)."""
    return sorted(entry for entry in folder.iterdir()
                  if entry.is_dir() and not entry.name.startswith("."))


def _image_files(class_folder: Path) -> list[Path]:
    files = sorted(entry for entry in class_folder.iterdir() if entry.is_file()
                   and entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith("."))
    if not files:
        raise DataError(f"{class_folder} holds no PNG or JPEG image: add images or remove the "
                        "folder")
    return files


def _class_names(names: list[str], source: Path) -> list[str]:
    if len(names) < 2:
        raise DataError(f"{source} holds one class only ({', '.join(names)}): classification "
                        "needs at least 2; add a class")
    return names


def _stack(files: list[Path], size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 (N, C, H, W): grayscale when every image is, else RGB (gray ones repeated)."""
    channels = _priced_channels(files, size)
    pixels = [_read_image(file, size) for file in files]
    stacked = np.stack([np.repeat(array, channels // array.shape[2], axis=2) for array in pixels])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def _priced_channels(files: list[Path], size: tuple[int, int] | None) -> int:
    """The channels the images stack to, from their headers alone: refused (before anything is
    decoded) when their sizes differ and ``size`` does not resize them, or when stacking them
    would not fit in memory."""
    headers = [_header(file) for file in files]  # (H, W, C) each
    if size is None:
        other = next((file for file, header in zip(files, headers, strict=True)
                      if header[:2] != headers[0][:2]), None)
        if other is not None:
            raise DataError(f"{other} is {_size_text(headers[files.index(other)])} but "
                            f"{files[0]} is {_size_text(headers[0])}: set {IMAGE_SIZE_KEY}=[H,W] "
                            "to resize every image to one size")
    height, width = size or headers[0][:2]
    channels = max(header[2] for header in headers)
    largest_file = max(math.prod(header) for header in headers)
    check_fits(FOLDER_LOAD_COPIES * len(files) * channels * height * width
               + DECODE_COPIES * largest_file,
               f"{len(files)} images of {channels}x{height}x{width} (CxHxW) pixels",
               f"set {IMAGE_SIZE_KEY}=[H,W] smaller (it resizes every image as it is read), or "
               "use fewer images")
    return channels


def _size_text(header: tuple[int, ...]) -> str:
    return f"{header[0]}x{header[1]} (HxW)"


def _header(file: Path) -> tuple[int, int, int]:
    """(H, W, C) of one PNG/JPEG as read (C: 1 for grayscale, else 3), from its header alone."""
    try:
        with Image.open(file) as image:
            width, height = image.size
            return height, width, 1 if image.mode in GRAYSCALE_MODES else 3
    except Image.DecompressionBombError as error:
        raise DataError(f"{file} is too large to decode safely ({one_line(error)}): shrink it or "
                        "delete it") from error
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise _unreadable(file, error) from error


def _unreadable(file: Path, error: Exception) -> DataError:
    return DataError(f"{file} is not a readable PNG or JPEG image ({one_line(error)}): replace "
                     "or delete it")


def _read_image(file: Path, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 1) or (H, W, 3) uint8 pixels of one PNG/JPEG, resized (bilinear) to ``size``."""
    try:
        with Image.open(file) as image:
            converted = image.convert("L" if image.mode in GRAYSCALE_MODES else "RGB")
            if size is not None:
                converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(converted, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise _unreadable(file, error) from error
    return array.reshape(*array.shape[:2], -1)


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    """Every array of the file, never unpickling; ``images`` and ``labels`` present; read only
    once their headers say that they fit in memory."""
    _check_is_zip(file)
    try:
        loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{PATH_KEY}={file} is not a readable .npz ({one_line(error)}): save it "
                        f"with {ARRAYS_LAYOUT}") from error
    with loaded:
        missing = [key for key in ("images", "labels") if key not in loaded.files]
        if missing:
            raise DataError(f"{file} has no {' and no '.join(missing)} array (it has "
                            f"{sorted(loaded.files)}): save it with {ARRAYS_LAYOUT}")
        declared = {key: _declared_size(loaded, key) for key in loaded.files}
        check_fits(sum(size for size, _ in declared.values())
                   + (ARRAYS_LOAD_COPIES - 1) * declared["images"][0],
                   f"the arrays of {PATH_KEY}={file} (images: {declared['images'][1]})",
                   "store fewer or smaller images in it (resized before saving), or use "
                   f"dataset=folder, whose {IMAGE_SIZE_KEY} resizes them as they are read")
        arrays = {}
        for key in loaded.files:
            try:
                arrays[key] = loaded[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
                raise DataError(f"{file}: array {key} cannot be read ({one_line(error)}): save "
                                f"plain numeric arrays with {ARRAYS_LAYOUT}") from error
    return arrays


def _check_is_zip(file: Path) -> None:
    """An .npz is a zip archive: anything else is refused saying what it is, before numpy would
    take it for a pickle."""
    with open(file, "rb") as handle:
        start = handle.read(8)  # the magics, and enough to show the user what it is
    if start.startswith(ZIP_MAGICS):
        return
    if start.startswith(NPY_MAGIC):
        found = "a single array (.npy, as np.save writes it), not named arrays"
    elif start.startswith(PICKLE_PROTOCOL_2_AND_UP):
        found = "a Python pickle, which is never read (unpickling can run code)"
    else:
        found = f"not a zip archive (it starts with {start!r}), so no .npz made by np.savez"
    raise DataError(f"{PATH_KEY}={file} is {found}: save it with {ARRAYS_LAYOUT}")


def _declared_size(loaded: np.lib.npyio.NpzFile, key: str) -> tuple[int, str]:
    """Bytes that reading ``loaded[key]`` takes, and its dtype and shape in words, from its
    .npy header alone; where that cannot be read, its zip entry's declared size (reading
    stops there)."""
    name = f"{key}.npy" if f"{key}.npy" in loaded.zip.namelist() else key
    try:
        with loaded.zip.open(name) as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        declared = loaded.zip.getinfo(name).file_size
        return declared, f"{size_text(declared)} uncompressed"
    return math.prod(shape) * dtype.itemsize, f"{dtype} {shape}"


def _dense_ids(arrays: dict[str, np.ndarray], key: str, file: Path,
               length: int) -> tuple[torch.Tensor, np.ndarray]:
    """``arrays[key]`` as int64 ids 0..M-1 (N,) and the M sorted distinct values they stand for."""
    values = arrays[key]
    if not np.issubdtype(values.dtype, np.integer) or values.ndim != 1:
        raise DataError(f"{file}: {key} is {values.dtype} {values.shape}, expected integers of "
                        f"shape (N,): {ARRAYS_LAYOUT}")
    if len(values) != length:
        raise DataError(f"{file}: images has {length} rows but {key} has {len(values)}: arrays "
                        "of one data set must have one entry per image")
    distinct, ids = np.unique(values, return_inverse=True)
    return torch.from_numpy(ids.astype(np.int64)), distinct
