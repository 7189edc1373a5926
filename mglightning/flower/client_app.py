"""The ClientApp: one training node (``partition-id`` in its node config) running our local
solver on its own data shard.

A node answers a query with its partition-id and a train message with its local solve from
x_md, drawn from the streams of (seed, round, position) — the same solve, through the same
``FederatedMetaLearner.solve_client``, as the in-process learner's client at that position. A
solve that raises becomes Flower's error reply, which the server counts and leaves out.
The node's learner (network, local solver, its shard) is built once per process: a Ray actor
of the simulation keeps it across messages; a SuperNode starts a process per message, which
then loads the node's shard alone (:mod:`.shard`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from mglightning.build import build_learner
from mglightning.config import ConfigError
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.flower.protocol import (
    PARTITION_ID,
    partition_reply,
    read_train_message,
    result_reply,
)
from mglightning.flower.run_config import compose_config, run_overrides
from mglightning.flower.shard import NodeShard, load_node_shard


@dataclass
class TrainingNode:
    """A node's learner (for its network, solver and streams) and its data."""

    learner: FederatedMetaLearner
    shard: NodeShard

    def solve(self, message: Message) -> Message:
        task = read_train_message(message)
        # The round under way, for the learner's fault injection (faults.inject.rounds).
        self.learner.rounds_done.fill_(task.round_index - 1)
        result = self.learner.solve_client(task.x_md, self.shard.client, task.round_index,
                                           task.position)
        return result_reply(message, task, result)


@lru_cache(maxsize=4)
def training_node(overrides: str, partition_id: int) -> TrainingNode:
    cfg = compose_config(overrides)
    shard = load_node_shard(cfg, partition_id)
    return TrainingNode(build_learner(cfg, shard), shard)


def partition_id(context: Context) -> int:
    if PARTITION_ID not in context.node_config:
        raise ConfigError(f"node config has no {PARTITION_ID}: start the SuperNode with "
                          f"--node-config {PARTITION_ID}=<training node index>")
    return int(context.node_config[PARTITION_ID])


def make_client_app(overrides: str | None = None) -> ClientApp:
    """A ClientApp for the config ``overrides`` (None: the run config's ``overrides``)."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return partition_reply(message, partition_id(context))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        node = training_node(run_overrides(overrides, context.run_config), partition_id(context))
        return node.solve(message)

    return app


app = make_client_app()  # for flwr run: [tool.flwr.app.components] clientapp
