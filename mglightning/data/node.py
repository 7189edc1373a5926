"""One federated node's data: two index views (support, query) into the pooled data set.

What a local solver and fast adaptation read of a node (METHOD.md §2), apart from Lightning:
:class:`~mglightning.data.datamodule.ClientDataModule` adds Lightning's data loaders to it, and
a Flower ClientApp, started afresh for every message, holds its shard as a plain
:class:`NodeData`.
"""

from __future__ import annotations

import torch

from mglightning.data.images import ImageData
from mglightning.devices import from_host


class NodeData:
    """Support (train) and query (test) index views into shared data, never a copy of its
    images. The index views live on the data's device (:meth:`to_device`)."""

    def __init__(
        self, node_id: int, data: ImageData, support_idx: torch.Tensor, query_idx: torch.Tensor
    ) -> None:
        self.node_id = node_id
        self.data = data
        self.support_idx = support_idx
        self.query_idx = query_idx

    @property
    def num_samples(self) -> int:
        """Support plus query samples: the node's whole share of the data set."""
        return len(self.support_idx) + len(self.query_idx)

    @property
    def classes(self) -> list[int]:
        """Sorted class ids present at this node."""
        node_labels = self.data.labels[torch.cat([self.support_idx, self.query_idx])]
        return node_labels.unique().tolist()

    def sample_support_batch(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random support mini-batch of min(batch_size, support size) distinct samples,
        drawn on the generator's device (the CPU: the same batches on every device) and
        gathered on the data's."""
        num_support = len(self.support_idx)
        positions = torch.randperm(num_support, generator=generator, device=generator.device)
        chosen = from_host(positions[: min(batch_size, num_support)], self.support_idx.device)
        return self.data.batch(self.support_idx[chosen])

    def to_device(self, data: ImageData) -> None:
        """Point at ``data`` (the pooled data set moved to a device) and move the index views
        there too."""
        self.data = data
        self.support_idx = self.support_idx.to(data.images.device)
        self.query_idx = self.query_idx.to(data.images.device)

    def support_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole support part as (images, labels)."""
        return self.data.batch(self.support_idx)

    def query_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole query part as (images, labels)."""
        return self.data.batch(self.query_idx)
