"""One training node's data for its ClientApp: the node's own rows, cached on disk.

A node's shard is a function of the pooled data set, the partition and the seed (METHOD.md §2), so
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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mglightning.data.images import ImageData, resolve_data_root
from mglightning.data.node import NodeData
from mglightning.errors import ConfigError
from mglightning.run.identity import DATA_KEY, data_fingerprint, digest

SHARD_FOLDER = "flower-shards"  # under the data root


@dataclass
class NodeShard:
    """A training node's data, and the shape and classes its network is built for."""

    client: NodeData
    num_classes: int
    input_shape: tuple[int, int, int]


def shard_folder(config: Mapping) -> Path:
    """Where the shards of this data set, partition and seed live, cut from the pooled data of
    fingerprint ``config[DATA_KEY]`` (``config``: a node's config parts as the ServerApp sends
    them, :func:`~mglightning.federated.training_node.node_config` with the data's fingerprint):
    changed data never reuses a stale shard."""
    key = digest({"dataset": config["dataset"], "seed": config["seed"]})
    return resolve_data_root(config["data_root"]) / SHARD_FOLDER / f"{key}-{config[DATA_KEY]}"


def load_node_shard(config: Mapping, training_index: int) -> NodeShard:
    """The training node of ``training_index`` (an index into
    ``FederatedDataModule.train_clients``)."""
    path = shard_folder(config) / f"node{training_index}.pt"
    if not path.exists():
        write_node_shard(config, training_index, path)
    return read_node_shard(path)


def write_node_shard(config: Mapping, training_index: int, path: Path) -> None:
    """Cut the rows of the training node of ``training_index`` out of the pooled data set;
    write atomically."""
    # Lightning and the data set loaders, imported here alone: only a node's first process
    # cuts its shard, and every later one (one a message) reads it without them.
    from mglightning.data.datamodule import FederatedDataModule
    from mglightning.run.checkpoint import AtomicCheckpointIO

    datamodule = FederatedDataModule(config["dataset"], seed=config["seed"],
                                     batch_size=config["dataset"]["batch_size"],
                                     data_root=config["data_root"])
    datamodule.setup()
    loaded = data_fingerprint(datamodule.data.images, datamodule.data.labels)
    if loaded != config[DATA_KEY]:
        raise ConfigError(f"this node's data ({DATA_KEY} {loaded}) differ from the "
                          f"ServerApp's ({config[DATA_KEY]}): give every node the server's data "
                          f"under its data_root ({resolve_data_root(config['data_root'])})")
    clients = datamodule.train_clients
    if not 0 <= training_index < len(clients):
        raise ConfigError(f"node config partition-id={training_index}: the config has "
                          f"{len(clients)} training nodes, use 0..{len(clients) - 1}")
    AtomicCheckpointIO().save_checkpoint(shard_payload(datamodule.data, clients[training_index]),
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
