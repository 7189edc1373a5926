"""Lightning DataModules for one node and for the whole federation (METHOD.md §2).

A :class:`ClientDataModule` is a node: two index tensors (support, query) into the shared
:class:`~mglightning.data.datasets.ImageData`, never a copy of its images. The
:class:`FederatedDataModule` loads the data set once, cuts it into nodes, splits the nodes into
training and target nodes and each node into support and query, all from one seed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import lightning
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from mglightning.data.images import ImageData
from mglightning.data.node import NodeData
from mglightning.data.partition import (
    PARTITION_KEY,
    TARGET_NODES_KEY,
    PartitionError,
    split_support_query,
    split_train_target,
)
from mglightning.errors import one_line
from mglightning.targets import bind

logger = logging.getLogger(__name__)

DEFAULT_SUPPORT_FRACTION = 0.75  # METHOD.md §2: 75/25 support/query


class IndexedImages(Dataset):
    """Rows of an ImageData picked by an index tensor, fetched a whole batch at a time.

    ``dataset[positions]`` takes a list of positions (what a BatchSampler yields) and returns
    normalized images and labels in one gather, instead of one tensor op per sample.
    """

    def __init__(self, data: ImageData, indices: torch.Tensor) -> None:
        self.data = data
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(self.indices[positions])


class ClientDataModule(NodeData, lightning.LightningDataModule):
    """One federated node (:class:`~mglightning.data.node.NodeData`) with Lightning's data
    loaders: shuffled support and in-order query mini-batches.

    ``seed`` seeds the shuffling of :meth:`train_dataloader`; the training hot path,
    :meth:`sample_support_batch`, takes the caller's generator instead.
    """

    def __init__(
        self,
        node_id: int,
        data: ImageData,
        support_idx: torch.Tensor,
        query_idx: torch.Tensor,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        lightning.LightningDataModule.__init__(self)
        NodeData.__init__(self, node_id, data, support_idx, query_idx)
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        """Shuffled support mini-batches of ``batch_size``."""
        shuffle = RandomSampler(range(len(self.support_idx)),
                                generator=torch.Generator().manual_seed(self.seed))
        return _batched_loader(self.data, self.support_idx, shuffle, self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """Query mini-batches of ``batch_size``, in index order."""
        in_order = SequentialSampler(range(len(self.query_idx)))
        return _batched_loader(self.data, self.query_idx, in_order, self.batch_size)


def _batched_loader(
    data: ImageData, indices: torch.Tensor, sampler, batch_size: int
) -> DataLoader:
    """A DataLoader whose sampler yields whole batches of positions; no per-sample collation."""
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    return DataLoader(IndexedImages(data, indices), sampler=batches, batch_size=None,
                      num_workers=0)


class FederatedDataModule(lightning.LightningDataModule):
    """The federation of METHOD.md §2: data set, nodes, training/target split, support/query split.

    ``dataset`` is the resolved ``dataset`` config group: its label ``name``, ``source`` (the
    loader, a ``_target_`` node, called with ``data_root``), ``partition`` (the partitioner, a
    ``_target_`` node), ``num_target_nodes`` and ``support_fraction``. :meth:`setup` does all
    the work once and fails on an impossible partition before any training starts; with
    ``clients_per_round`` (K) also when fewer training nodes result (:func:`node_split`).
    ``data`` holds the pooled data set, the one copy of every image and label.
    """

    def __init__(
        self, dataset: Mapping, seed: int, batch_size: int = 32, data_root: str | None = None,
        clients_per_round: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset_cfg = dataset
        self.seed = seed
        self.batch_size = batch_size
        self.data_root = data_root
        self.clients_per_round = clients_per_round
        self.data: ImageData | None = None
        self.train_clients: list[ClientDataModule] = []
        self.target_clients: list[ClientDataModule] = []

    @property
    def num_classes(self) -> int:
        return self._loaded_data().num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return self._loaded_data().shape

    @property
    def node_sizes(self) -> torch.Tensor:
        """(training nodes,) sample counts, e.g. for size-weighted aggregation."""
        return torch.tensor([client.num_samples for client in self.train_clients])

    def _loaded_data(self) -> ImageData:
        if self.data is None:
            raise RuntimeError("FederatedDataModule.setup() has not run yet")
        return self.data

    def setup(self, stage: str | None = None) -> None:
        """Load, partition and split once; on every call (one per Lightning stage) with a
        Trainer attached, put the data on the Trainer's device, where the model is."""
        if self.data is None:
            self._load_and_split()
        if self.trainer is not None:
            self.to_device(self.trainer.strategy.root_device)

    def to_device(self, device: torch.device | str) -> None:
        """Put the pooled data set and every node's index views on ``device``, once for the
        whole federation: batches are then gathered and normalized there."""
        data = self._loaded_data().to(device)
        self.data = data
        for client in self.train_clients + self.target_clients:
            client.to_device(data)

    def _load_and_split(self) -> None:
        """Load the data set, cut it into nodes, split nodes and their samples (on the CPU)."""
        partition_seed, _, support_seed = _independent_seeds(self.seed, 3)
        try:
            partitioner = bind(self.dataset_cfg["partition"])()
        except TypeError as error:  # a field without a default, not set
            raise PartitionError(f"{PARTITION_KEY}: {one_line(error)}") from error
        num_targets = int(self.dataset_cfg.get("num_target_nodes", 0))
        nodes_from_data = getattr(partitioner, "num_nodes", None) is None  # a natural partition
        if not nodes_from_data:  # an impossible split fails before loading
            node_split(partitioner.num_nodes, num_targets, self.seed, self.clients_per_round)
        data = bind(self.dataset_cfg["source"])(self.data_root)
        node_indices = partitioner.partition(data.labels, data.num_classes, data.node_ids,
                                             seed=partition_seed)
        train_ids, target_ids = node_split(len(node_indices), num_targets, self.seed,
                                           self.clients_per_round)
        clients = self._make_clients(data, node_indices, support_seed,
                                     data.node_names if nodes_from_data else None)
        self.train_clients = [clients[node_id] for node_id in train_ids]
        self.target_clients = [clients[node_id] for node_id in target_ids]
        self.data = data
        logger.info(self.describe())

    def _make_clients(
        self, data: ImageData, node_indices: list[torch.Tensor], seed: int,
        node_names: tuple[str, ...] | None = None,
    ) -> list[ClientDataModule]:
        """One ClientDataModule per node, its support/query split drawn from one generator;
        ``node_names``: the data's names of a natural partition's nodes (for messages)."""
        support_fraction = float(self.dataset_cfg.get("support_fraction",
                                                      DEFAULT_SUPPORT_FRACTION))
        generator = torch.Generator().manual_seed(seed)
        clients = []
        for node_id, indices in enumerate(node_indices):
            support_idx, query_idx = split_support_query(
                indices, support_fraction, generator,
                None if node_names is None else node_names[node_id])
            clients.append(ClientDataModule(node_id, data, support_idx, query_idx,
                                            self.batch_size, seed=seed + node_id))
        return clients

    def train_dataloader(self) -> DataLoader:
        """One item per training epoch: an epoch is one communication round, whose data the
        learner draws from ``train_clients`` itself (METHOD.md §3)."""
        return DataLoader(range(1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        """Target-task indices 0..T-1, one per step: the adaptation module looks up
        ``target_clients[i]`` itself (METHOD.md §4)."""
        return DataLoader(range(len(self.target_clients)), batch_size=None,
                          collate_fn=_target_index)

    def describe(self) -> str:
        """One line: data set, node counts, node sizes and classes per node."""
        data = self._loaded_data()
        clients = self.train_clients + self.target_clients
        sizes = [client.num_samples for client in clients]
        class_counts = [len(client.classes) for client in clients]
        return (f"{self.dataset_cfg['name']}: {len(data)} images {data.shape}, "
                f"{data.num_classes} classes; {len(clients)} nodes ({len(self.train_clients)} "
                f"training, {len(self.target_clients)} target); node sizes "
                f"{min(sizes)}-{max(sizes)}; classes per node "
                f"{min(class_counts)}-{max(class_counts)}")


def _target_index(position: int) -> int:
    return int(position)


def node_split(
    num_nodes: int, num_target_nodes: int, seed: int, clients_per_round: int | None = None
) -> tuple[list[int], list[int]]:
    """Training and target node ids of a federation of ``num_nodes`` nodes (METHOD.md §2), drawn
    from the run's ``seed``; with ``clients_per_round`` (K), checked to leave K training nodes.

    The one check of K against the training nodes: the config's (``validate``, before any data
    loads, where ``dataset.partition.num_nodes`` gives the count) and the loaded federation's
    (a natural partition's count is known only from the data) both call it.
    """
    nodes_seed = _independent_seeds(seed, 3)[1]
    train_ids, target_ids = split_train_target(num_nodes, num_target_nodes, nodes_seed)
    if clients_per_round is not None and clients_per_round > len(train_ids):
        raise PartitionError(
            f"method.clients_per_round={clients_per_round}: must be at most the "
            f"{len(train_ids)} training nodes ({num_nodes} nodes minus "
            f"{TARGET_NODES_KEY}={num_target_nodes})")
    return train_ids, target_ids


def _independent_seeds(seed: int, count: int) -> list[int]:
    """``count`` seeds for independent random streams derived from one config seed."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(child.generate_state(1)[0]) for child in children]
