"""The pooled data set in memory (:class:`ImageData`) and where data sets live on disk.

Apart from the loaders of :mod:`.datasets` (torchvision, whose import alone takes seconds): a
Flower ClientApp, started afresh for every message, reads its node's shard into an ImageData
with nothing but torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

DATA_DIR_ENV = "MG_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/mglightning/data")


@dataclass(eq=False)
class ImageData:
    """One pooled data set: uint8 images (N, C, H, W) and int64 labels (N,) (METHOD.md §2).

    ``mean`` and ``std`` are per-channel statistics on the [0, 1] scale; :meth:`batch`
    normalizes with them, so model code never sees raw pixels. Batches are made on the device
    the images are on (see :meth:`to`). ``class_names[label]`` names a class where the data
    set has names (None: ids only). Where the data say which node each sample belongs to (a
    natural partition), ``node_ids`` (N,) int64 index ``node_names``, on the CPU, where the
    partitioners read them; else both are None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    node_ids: torch.Tensor | None = None
    node_names: tuple[str, ...] | None = None
    _mean_tensor: torch.Tensor = field(init=False, repr=False)  # (1, C, 1, 1)
    _std_tensor: torch.Tensor = field(init=False, repr=False)  # (1, C, 1, 1)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), "
                             f"got {tuple(self.labels.shape)}")
        device = self.images.device
        self._mean_tensor = torch.tensor(self.mean, dtype=torch.float32, device=device).view(
            1, -1, 1, 1)
        self._std_tensor = torch.tensor(self.std, dtype=torch.float32, device=device).view(
            1, -1, 1, 1)

    def to(self, device: torch.device | str) -> ImageData:
        """This data set on ``device`` (itself when already there): a run's device holds the
        pooled images once, and every batch is gathered and normalized there."""
        if self.images.device == torch.device(device):
            return self
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    @classmethod
    def from_images(cls, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    class_names: list[str] | None = None, node_ids: torch.Tensor | None = None,
                    node_names: list[str] | None = None) -> ImageData:
        """Wrap pooled images, computing the per-channel normalization statistics from them."""
        mean, std = channel_statistics(images)
        return cls(images, labels.to(torch.int64), num_classes, mean, std,
                   None if class_names is None else tuple(class_names),
                   None if node_ids is None else node_ids.to(torch.int64),
                   None if node_names is None else tuple(node_names))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what a backbone is built for."""
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float32 images (B, C, H, W) and labels (B,) of the given rows."""
        images = self.images[indices].to(torch.float32).div_(255.0)
        images.sub_(self._mean_tensor).div_(self._std_tensor)
        return images, self.labels[indices]


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale.

    Counted from a 256-bin histogram per channel, so CIFAR's 184 M pixels never become floats.
    """
    values = torch.arange(256, dtype=torch.float64, device=images.device) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        variance = float((counts * values.square()).sum() / total) - mean**2
        means.append(mean)
        stds.append(math.sqrt(variance) if variance > 0 else 1.0)  # a constant channel: no scaling
    return tuple(means), tuple(stds)


def resolve_data_root(root: str | None) -> Path:
    """Where data sets live: ``root`` if given, else ``$MG_DATA_DIR``, else the user cache."""
    chosen = root if root else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()
