"""The floor's ServerApp: our ServerApp's rounds with nothing in them.

Round after round it sends each of ``num-nodes`` SuperNodes one train message holding a float32
array of ``parameters`` entries (our x_md's size) and its position in the round, and takes the
mean of the arrays sent back (:mod:`floor_client`) as the next round's, through the same loop as
ours (a ``FedAvg``'s ``start``, no evaluation) and the same reply polling
(:class:`~mglightning.flower.strategy.PromptGrid`). A round is timed as ours is, from building
its messages to aggregating its replies; ``output`` receives the times as a CSV with our
``flower/rounds.csv``'s columns ``round`` and ``round-seconds``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from mglightning.flower.strategy import PromptGrid

ARRAYS, CONFIG = "arrays", "config"
CONNECT_TIMEOUT_SECONDS = 600.0  # for the nodes to connect, and for each round's replies


class EchoRounds(FedAvg):
    """Each round, the current arrays to every node in ``node_ids``; their replies' mean back."""

    def __init__(self, node_ids: list[int]) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=len(node_ids),
                         min_available_nodes=len(node_ids))
        self.node_ids = node_ids
        self.started = 0.0
        self.seconds: list[float] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.started = time.perf_counter()
        return [Message(content=RecordDict({ARRAYS: arrays,
                                            CONFIG: ConfigRecord({"position": position})}),
                        message_type=MessageType.TRAIN, dst_node_id=node_id)
                for position, node_id in enumerate(self.node_ids)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, None]:
        replies = list(replies)
        errors = [reply.error.reason for reply in replies if reply.has_error()]
        if errors or len(replies) != len(self.node_ids):
            raise RuntimeError(f"round {server_round}: {len(replies)} of {len(self.node_ids)} "
                               f"replies, errors: {errors}")
        records = [reply.content[ARRAYS] for reply in replies]
        mean = ArrayRecord({name: Array(np.mean([record[name].numpy() for record in records],
                                                axis=0, dtype=np.float32))
                            for name in records[0]})
        self.seconds.append(time.perf_counter() - self.started)
        return mean, None


def connected_nodes(grid: Grid, num_nodes: int) -> list[int]:
    """The ids of ``num_nodes`` connected SuperNodes, once that many are."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
    while len(node_ids := sorted(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(node_ids)} of {num_nodes} nodes connected after "
                               f"{CONNECT_TIMEOUT_SECONDS:.0f} s")
        time.sleep(1.0)
    return node_ids[:num_nodes]


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    strategy = EchoRounds(connected_nodes(grid, int(config["num-nodes"])))
    x_md = np.random.default_rng(0).standard_normal(int(config["parameters"]), np.float32)
    strategy.start(PromptGrid(grid), ArrayRecord({"x_md": Array(x_md)}),
                   num_rounds=int(config["rounds"]), timeout=CONNECT_TIMEOUT_SECONDS)
    if config["output"]:
        with open(str(config["output"]), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["round", "round-seconds"])
            writer.writerows(enumerate(strategy.seconds, start=1))
