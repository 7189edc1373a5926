"""One training node's data for its ClientApp: the node's own rows, cached on disk.

A node's shard is a function of the pooled data set, the partition and the seed (SPEC §2), so
cutting it needs every label of the pooled set. A node's first ClientApp process builds the
:class:`~mglightning.data.datamodule.FederatedDataModule` once and writes the node's shard (its
images and labels, the pooled normalization statistics, its support/query split); from then on
the node loads its own rows alone, with torch alone. The shards are filed under the config's
fingerprint and the pooled data's (the ServerApp's, :attr:`NodeSetup.data`, checked against
the node's own data when a shard is cut): changed data get shards of their own, never stale
ones. This matters under a SuperNode, which
starts a fresh ClientApp process per message. Each node writes only its own file, so nodes
sharing a disk never race. A shard gives the node's local solver exactly the batches the pooled
data would: the same rows, in the same support order, normalized with the same statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mglightning.data.images import ImageData, resolve_data_root
from mglightning.data.node import NodeData
from mglightning.errors import ConfigError
from mglightning.flower.node_setup import NodeSetup
from mglightning.run.identity import data_fingerprint, fingerprint

SHARD_FOLDER = "flower-shards"  # under the data root


@dataclass
class NodeShard:
    """A training node's data, and the shape and classes its network is built for."""

    client: NodeData
    num_classes: int
    input_shape: tuple[int, int, int]


def shard_folder(setup: NodeSetup) -> Path:
    """Where the shards of this data set, partition and seed, cut from the pooled data of
    fingerprint ``setup.data``, live."""
    key = fingerprint({"dataset": setup.dataset, "seed": setup.seed})
    return resolve_data_root(setup.data_root) / SHARD_FOLDER / f"{key}-{setup.data}"


def load_node_shard(setup: NodeSetup, partition_id: int) -> NodeShard:
    """Training node ``partition_id`` (an index into ``FederatedDataModule.train_clients``)."""
    path = shard_folder(setup) / f"node{partition_id}.pt"
    if not path.exists():
        write_node_shard(setup, partition_id, path)
    return read_node_shard(path)


def write_node_shard(setup: NodeSetup, partition_id: int, path: Path) -> None:
    """Cut training node ``partition_id``'s rows out of the pooled data set; write atomically."""
    # Lightning and the data set loaders, imported here alone: only a node's first process
    # cuts its shard, and every later one (one a message) reads it without them.
    from mglightning.data.datamodule import FederatedDataModule
    from mglightning.run.checkpoint import AtomicCheckpointIO

    datamodule = FederatedDataModule(setup.dataset, seed=setup.seed,
                                     batch_size=setup.dataset["batch_size"],
                                     data_root=setup.data_root)
    datamodule.setup()
    loaded = data_fingerprint(datamodule.data.images, datamodule.data.labels)
    if loaded != setup.data:
        raise ConfigError(f"this node's data (data_fingerprint {loaded}) differ from the "
                          f"ServerApp's ({setup.data}): give every node the server's data under "
                          f"its data_root ({resolve_data_root(setup.data_root)})")
    clients = datamodule.train_clients
    if not 0 <= partition_id < len(clients):
        raise ConfigError(f"node config partition-id={partition_id}: the config has "
                          f"{len(clients)} training nodes, use 0..{len(clients) - 1}")
    AtomicCheckpointIO().save_checkpoint(shard_payload(datamodule.data, clients[partition_id]),
                                         path)


def shard_payload(data: ImageData, client: NodeData) -> dict:
    rows = torch.cat([client.support_idx, client.query_idx])
    return {
        "node_id": client.node_id,
        "images": data.images[rows].clone(),  # (n, C, H, W) uint8
        "labels": data.labels[rows].clone(),
        "num_support": len(client.support_idx),
        "num_classes": data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
    }


def read_node_shard(path: Path) -> NodeShard:
    payload = torch.load(path, weights_only=True)
    data = ImageData(payload["images"], payload["labels"], payload["num_classes"],
                     tuple(payload["mean"]), tuple(payload["std"]))
    num_support, num_rows = payload["num_support"], len(payload["labels"])
    client = NodeData(payload["node_id"], data, torch.arange(num_support),
                      torch.arange(num_support, num_rows))
    return NodeShard(client, data.num_classes, data.shape)
