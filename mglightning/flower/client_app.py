"""The ClientApp: one training node (Flower's ``partition-id`` in its node config) running our
local solver on its own data shard.

A node answers a query with its training index and a train message with its local solve from
x_md, drawn from the streams of (seed, round, position) — the same solve, by the same node
(:func:`~mglightning.federated.training_node.build_training_node`), as the in-process
learner's client at that position. A solve that raises becomes Flower's error reply, which the
server counts and leaves out.

A SuperNode starts a process per message, so this module imports numpy, flwr and the torch-free
:mod:`.protocol` and :mod:`.wire`, and nothing that imports torch (a test checks). Where the
node config names a worker (``worker-socket``, :mod:`.node_worker`), the worker solves: it
imported torch and built the node once, for all the node's messages. Without one, the
ClientApp solves itself (:mod:`.client_node`), importing torch and the node builder at its
first train message, but never Hydra, Lightning or W&B; a Ray actor of the simulation keeps
that node across messages. Either way the node's config parts come resolved in the message.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from mglightning.errors import ConfigError
from mglightning.flower.protocol import (
    NodeResult,
    TrainTask,
    read_node_config,
    read_train_message,
    result_reply,
    training_index_reply,
)
from mglightning.flower.wire import solve_on_worker

PARTITION_ID = "partition-id"  # Flower's node config key for a node's training index
WORKER_SOCKET = "worker-socket"  # node config key: the node worker's socket, if it has one


def training_index(context: Context) -> int:
    """The node's training index, which Flower's node config names ``partition-id``."""
    if PARTITION_ID not in context.node_config:
        raise ConfigError(f"node config has no {PARTITION_ID}: start the SuperNode with "
                          f"--node-config {PARTITION_ID}=<training node index>")
    return int(context.node_config[PARTITION_ID])


def solve(node_config: str, training_index: int, task: TrainTask, context: Context
          ) -> NodeResult:
    """``task`` solved by the node's worker if it has one, else in this process."""
    if WORKER_SOCKET in context.node_config:
        return solve_on_worker(str(context.node_config[WORKER_SOCKET]), node_config,
                               training_index, task)
    from mglightning.flower.client_node import client_node  # torch: only without a worker

    return client_node(node_config, training_index).solve(task)


def make_client_app() -> ClientApp:
    """A ClientApp; its config comes with each train message."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return training_index_reply(message, training_index(context))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        task = read_train_message(message)
        result = solve(read_node_config(message), training_index(context), task, context)
        return result_reply(message, task, result)

    return app


app = make_client_app()  # for flwr run: [tool.flwr.app.components] clientapp
