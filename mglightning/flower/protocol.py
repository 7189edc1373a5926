"""What the ServerApp and the ClientApps send each other: Flower records around our tensors.

A train message carries x_md and, in its config, the round, the node's position in the round,
its partition-id and the node's resolved config (:class:`~.node_setup.NodeSetup`, the same in
every message of a run: the strategy's ``train_config``): the client draws from the streams of
(seed, round, position) (:mod:`mglightning.federated.streams`), exactly as the in-process
learner's client at that position. The reply carries the local parameters, the support size
(``num-examples``, Flower's weighting key) and the mean local loss, and the position again, so
that the server can put the replies back into the round's order whatever order they arrive in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from mglightning.errors import ConfigError
from mglightning.federated.server import ClientResult
from mglightning.flower.node_setup import NodeSetup

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
PARTITION_ID = "partition-id"  # node config key: the node's index into the training nodes
NODE_SETUP = "node-setup"  # train config key: the node's resolved config, as JSON


@dataclass
class TrainTask:
    """One local solve: start point x_md, round (1-based), position in the round (0-based)."""

    x_md: torch.Tensor
    round_index: int
    position: int
    partition_id: int


def node_setup_config(setup: NodeSetup) -> ConfigRecord:
    """The train config (``Strategy.start(train_config=...)``) that gives every node its setup."""
    return ConfigRecord({NODE_SETUP: setup.to_json()})


def train_message(task: TrainTask, node_id: int, train_config: ConfigRecord) -> Message:
    """The message of ``task`` to Flower node ``node_id``, with the run's ``train_config``."""
    config = ConfigRecord({**train_config, "server-round": task.round_index,
                           "position": task.position, PARTITION_ID: task.partition_id})
    content = RecordDict({ARRAYS: ArrayRecord({"x_md": task.x_md}), CONFIG: config})
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)


def read_train_message(message: Message) -> TrainTask:
    config = message.content[CONFIG]
    x_md = message.content[ARRAYS].to_torch_state_dict()["x_md"]
    return TrainTask(x_md, int(config["server-round"]), int(config["position"]),
                     int(config[PARTITION_ID]))


def read_node_setup(message: Message) -> str:
    """The node's setup in a train message, as JSON (a cache key; :meth:`NodeSetup.from_json`)."""
    config = message.content[CONFIG]
    if NODE_SETUP not in config:
        raise ConfigError(f"the train message has no {NODE_SETUP!r}: the ServerApp must start "
                          f"its strategy with train_config=node_setup_config(...)")
    return str(config[NODE_SETUP])


def result_reply(message: Message, task: TrainTask, result: ClientResult) -> Message:
    metrics = MetricRecord({"num-examples": result.num_samples, "loss": float(result.loss),
                            "position": task.position, PARTITION_ID: task.partition_id,
                            "node-id": result.node_id})
    content = RecordDict({ARRAYS: ArrayRecord({"params": result.params}), METRICS: metrics})
    return Message(content=content, reply_to=message)


def read_result(reply: Message) -> tuple[int, ClientResult]:
    """(position in the round, the node's result) of a reply without error."""
    metrics = reply.content[METRICS]
    params = reply.content[ARRAYS].to_torch_state_dict()["params"]
    result = ClientResult(int(metrics["node-id"]), params, int(metrics["num-examples"]),
                          torch.tensor(float(metrics["loss"]), dtype=torch.float64))
    return int(metrics["position"]), result


def query_message(node_id: int) -> Message:
    """Asks a node which training node (partition-id) it holds."""
    return Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=node_id)


def partition_reply(message: Message, partition_id: int) -> Message:
    return Message(content=RecordDict({CONFIG: ConfigRecord({PARTITION_ID: partition_id})}),
                   reply_to=message)


def read_partition(reply: Message) -> int:
    return int(reply.content[CONFIG][PARTITION_ID])
