"""The ClientApp: one training node (``partition-id`` in its node config) running our local
solver on its own data shard.

A node answers a query with its partition-id and a train message with its local solve from
x_md, drawn from the streams of (seed, round, position) — the same solve, through the same
:func:`~mglightning.federated.client_solve.solve_client`, as the in-process learner's client
at that position, with the round's gate noise scale and τ. A solve that raises becomes
Flower's error reply, which the server counts and leaves out.

A SuperNode starts a process per message, so this module imports what a node needs and no
more: torch, flwr, the network, the solver and the shard reader; no Hydra, no Lightning, no
W&B, no entry point (a test checks). The node's config comes resolved in the message
(:mod:`.node_setup`); its network, solver and shard are built once per process, which a Ray
actor of the simulation keeps across messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from mglightning.errors import ConfigError
from mglightning.federated.client_solve import solve_client
from mglightning.federated.faults import FaultInjection
from mglightning.federated.flat import FlatParameters
from mglightning.federated.schedules import (
    LinearSchedule,
    gate_noise_schedule,
    temperature_schedule,
)
from mglightning.federated.server import ClientResult
from mglightning.flower.node_setup import NodeSetup
from mglightning.flower.protocol import (
    PARTITION_ID,
    partition_reply,
    read_node_setup,
    read_train_message,
    result_reply,
)
from mglightning.flower.shard import NodeShard, load_node_shard
from mglightning.targets import bind


@dataclass
class TrainingNode:
    """A node's network (as flat parameters), local solver, round schedules and data."""

    setup: NodeSetup
    shard: NodeShard
    flat: FlatParameters
    local_solver: Callable[..., ClientResult]
    gate_noise: LinearSchedule
    temperature: LinearSchedule
    round_index: int = 0  # the round under way, for fault injection (faults.inject.rounds)

    @classmethod
    def build(cls, setup: NodeSetup, partition_id: int) -> TrainingNode:
        shard = load_node_shard(setup, partition_id)
        network = bind(setup.network)(shard.input_shape, shard.num_classes)
        node = cls(setup, shard, FlatParameters(network, network.is_gate_parameter),
                   bind(setup.local_solver)(),
                   gate_noise_schedule(setup.gate_noise, setup.rounds),
                   temperature_schedule(network.temperature, setup.temperature_end,
                                        setup.rounds))
        faults = setup.faults
        if faults["clients"]:
            node.local_solver = FaultInjection(
                node.local_solver, set(faults["clients"]), faults["kind"],
                None if faults["rounds"] is None else set(faults["rounds"]),
                lambda: node.round_index)
        return node

    def solve(self, message: Message) -> Message:
        task = read_train_message(message)
        self.round_index = task.round_index
        self.flat.module.temperature = self.temperature(task.round_index)
        result = solve_client(self.local_solver, self.flat, task.x_md, self.shard.client,
                              self.setup.seed, task.round_index, task.position,
                              self.gate_noise(task.round_index))
        return result_reply(message, task, result)


@lru_cache(maxsize=4)
def training_node(setup_json: str, partition_id: int) -> TrainingNode:
    return TrainingNode.build(NodeSetup.from_json(setup_json), partition_id)


def partition_id(context: Context) -> int:
    if PARTITION_ID not in context.node_config:
        raise ConfigError(f"node config has no {PARTITION_ID}: start the SuperNode with "
                          f"--node-config {PARTITION_ID}=<training node index>")
    return int(context.node_config[PARTITION_ID])


def make_client_app() -> ClientApp:
    """A ClientApp; its config comes with each train message."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return partition_reply(message, partition_id(context))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return training_node(read_node_setup(message), partition_id(context)).solve(message)

    return app


app = make_client_app()  # for flwr run: [tool.flwr.app.components] clientapp
