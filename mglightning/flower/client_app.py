"""The ClientApp: one training node (Flower's ``partition-id`` in its node config) running our
local solver on its own data shard.

A node answers a query with its training index and a train message with its local solve from
x_md, drawn from the streams of (seed, round, position) — the same solve, by the same node
(:func:`~mglightning.federated.training_node.build_training_node`), as the in-process
learner's client at that position. A solve that raises becomes Flower's error reply, which the
server counts and leaves out.

A SuperNode starts a process per message, so this module imports what a node needs and no
more: torch, flwr, the node builder and the shard reader; no Hydra, no Lightning, no W&B, no
entry point (a test checks). The node's config parts come resolved in the message
(:mod:`.protocol`); its node and shard are built once per process, which a Ray actor of the
simulation keeps across messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from mglightning.errors import ConfigError
from mglightning.federated.flat import FlatParameters
from mglightning.federated.training_node import TrainingNode, build_training_node
from mglightning.flower.protocol import (
    read_node_config,
    read_train_message,
    result_reply,
    training_index_reply,
)
from mglightning.flower.shard import NodeShard, load_node_shard

PARTITION_ID = "partition-id"  # Flower's node config key for a node's training index


@dataclass
class ClientNode:
    """A training node as its ClientApp process holds it: its shard, the node built for it
    and the flat parameters its solves run on."""

    seed: int
    shard: NodeShard
    node: TrainingNode
    flat: FlatParameters

    @classmethod
    def build(cls, node_config: dict, training_index: int) -> ClientNode:
        shard = load_node_shard(node_config, training_index)
        node = build_training_node(node_config, shard.input_shape, shard.num_classes)
        return cls(node_config["seed"], shard, node,
                   FlatParameters(node.network, node.network.is_gate_parameter))

    def solve(self, message: Message) -> Message:
        task = read_train_message(message)
        result = self.node.solve(self.flat, task.x_md, self.shard.client, self.seed,
                                 task.round_index, task.position)
        return result_reply(message, task, result)


@lru_cache(maxsize=4)
def client_node(node_config_json: str, training_index: int) -> ClientNode:
    return ClientNode.build(json.loads(node_config_json), training_index)


def training_index(context: Context) -> int:
    """The node's training index, which Flower's node config names ``partition-id``."""
    if PARTITION_ID not in context.node_config:
        raise ConfigError(f"node config has no {PARTITION_ID}: start the SuperNode with "
                          f"--node-config {PARTITION_ID}=<training node index>")
    return int(context.node_config[PARTITION_ID])


def make_client_app() -> ClientApp:
    """A ClientApp; its config comes with each train message."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return training_index_reply(message, training_index(context))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return client_node(read_node_config(message), training_index(context)).solve(message)

    return app


app = make_client_app()  # for flwr run: [tool.flwr.app.components] clientapp
