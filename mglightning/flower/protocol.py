"""What the ServerApp and the ClientApps send each other: Flower records around numpy arrays.

A train message carries x_md and, in its config, the round, the node's position in the round,
its training index and the parts of the resolved config a node reads
(:func:`~mglightning.federated.training_node.node_config`, the same in every message of a run:
the strategy's ``train_config``): the client draws from the streams of (seed, round, position)
(:mod:`mglightning.federated.streams`), exactly as the in-process learner's client at that
position. The reply carries the local parameters, the support size (``num-examples``, Flower's
weighting key) and the mean local loss, and the position again, so that the server can put the
replies back into the round's order whatever order they arrive in.

The arrays are numpy's, and this module imports neither torch nor anything of ours that does:
a ClientApp whose node solves in a worker (:mod:`.node_worker`) imports numpy and flwr alone.
Each side converts at its edge (the strategy and :mod:`.local_node`), with the same float32
bytes that ``ArrayRecord`` of a torch tensor would carry.

Three numbers name a node, each its own name here: Flower's node id (``node_id`` of a message,
where it goes), the training index (which of the training nodes it holds: an index into
``FederatedDataModule.train_clients``, what the round's choice draws) and the partitioner's node
id (``NodeData.node_id``, which ``faults.inject.clients`` names). Flower's own word for the
training index is the node config key ``partition-id`` (set by its simulation engine or
``--node-config``); the ClientApp reads it there, once (:func:`.client_app.training_index`),
and our messages speak of the training index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from mglightning.errors import ConfigError

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
TRAINING_INDEX = "training-index"  # our messages' key: which training node a node holds
NODE_CONFIG = "node-config"  # train config key: the config parts a node reads, as JSON


@dataclass
class TrainTask:
    """One local solve: start point x_md (P,), round (1-based), position in the round
    (0-based), by the node of ``training_index``."""

    x_md: np.ndarray
    round_index: int
    position: int
    training_index: int


@dataclass
class NodeResult:
    """A node's local solve as it travels: :class:`~mglightning.federated.server.ClientResult`
    with numpy parameters (P,) and a float loss."""

    node_id: int
    params: np.ndarray
    num_samples: int
    loss: float


def node_config_record(node_config: dict) -> ConfigRecord:
    """The train config (``Strategy.start(train_config=...)``) that gives every node the config
    parts it reads (:func:`~mglightning.federated.training_node.node_config`)."""
    return ConfigRecord({NODE_CONFIG: json.dumps(node_config, sort_keys=True)})


def train_message(task: TrainTask, node_id: int, train_config: ConfigRecord) -> Message:
    """The message of ``task`` to Flower node ``node_id``, with the run's ``train_config``."""
    config = ConfigRecord({**train_config, "server-round": task.round_index,
                           "position": task.position, TRAINING_INDEX: task.training_index})
    content = RecordDict({ARRAYS: ArrayRecord({"x_md": Array(task.x_md)}), CONFIG: config})
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)


def read_train_message(message: Message) -> TrainTask:
    config = message.content[CONFIG]
    return TrainTask(message.content[ARRAYS]["x_md"].numpy(), int(config["server-round"]),
                     int(config["position"]), int(config[TRAINING_INDEX]))


def read_node_config(message: Message) -> str:
    """The node's config parts in a train message, as JSON (a cache key)."""
    config = message.content[CONFIG]
    if NODE_CONFIG not in config:
        raise ConfigError(f"the train message has no {NODE_CONFIG!r}: the ServerApp must start "
                          f"its strategy with train_config=node_config_record(...)")
    return str(config[NODE_CONFIG])


def result_reply(message: Message, task: TrainTask, result: NodeResult) -> Message:
    metrics = MetricRecord({"num-examples": result.num_samples, "loss": result.loss,
                            "position": task.position, TRAINING_INDEX: task.training_index,
                            "node-id": result.node_id})
    content = RecordDict({ARRAYS: ArrayRecord({"params": Array(result.params)}),
                          METRICS: metrics})
    return Message(content=content, reply_to=message)


def read_result(reply: Message) -> tuple[int, NodeResult]:
    """(position in the round, the node's result) of a reply without error."""
    metrics = reply.content[METRICS]
    result = NodeResult(int(metrics["node-id"]), reply.content[ARRAYS]["params"].numpy(),
                        int(metrics["num-examples"]), float(metrics["loss"]))
    return int(metrics["position"]), result


def query_message(node_id: int) -> Message:
    """Asks Flower node ``node_id`` which training node it holds."""
    return Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=node_id)


def training_index_reply(message: Message, training_index: int) -> Message:
    return Message(content=RecordDict({CONFIG: ConfigRecord({TRAINING_INDEX: training_index})}),
                   reply_to=message)


def read_training_index(reply: Message) -> int:
    return int(reply.content[CONFIG][TRAINING_INDEX])
