"""Our server step behind a Flower strategy (flwr 1.41 Message API): the in-process round,
split at the network.

:class:`FederatedRoundStrategy` keeps the server state in a :class:`FederatedMetaLearner`
(x, x_ag, rounds done, failed rounds in a row) and runs its ``server_step``
(:class:`~mglightning.federated.server.AcceleratedProximalStep` or
:class:`~mglightning.federated.server.FedAvgStep`) through the learner's round seam, as
``FederatedMetaLearner.run_round`` does: ``configure_train`` is the learner's ``plan_round``
(x_md and its choice of K nodes) sent as messages, ``aggregate_train`` its ``finish_round`` on
the replies that did not fail (non-finite ones left out there, the server step, or a failed
round counted).

Node choice: it subclasses Flower's ``FedAvg`` with ``fraction_train = K / N`` (what it does)
but does not let it sample: ``FedAvg`` samples with Python's ``random``, unseeded. Instead the
learner's ``round_clients`` (from ``round_generator(seed, round)``) chooses K training
indices, and the message for the k-th goes to the Flower node holding that training node
(``node_ids[training_index]``, found once by a query round, :func:`discover_nodes`). Replies
come back in any order; they are put back into position order before aggregating, because the
in-process learner sums the clients in that order and float sums depend on it.

Rounds are numbered by the learner (``rounds_done + 1``), not by Flower's ``server_round``: a
server restored from its saved state (:class:`ServerState`) starts Flower's loop at 1 again
but continues our rounds where they stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from mglightning.config import ConfigError
from mglightning.federated.learner import FederatedMetaLearner, RoundPlan
from mglightning.federated.server import ClientResult
from mglightning.flower.protocol import (
    NodeResult,
    TrainTask,
    query_message,
    read_result,
    read_training_index,
    train_message,
)
from mglightning.run.checkpoint import AtomicCheckpointIO

log = logging.getLogger(__name__)

NODE_POLL_SECONDS = 1.0
REPLY_POLL_SECONDS = 0.05  # how often a round asks the SuperLink for its replies


class PromptGrid:
    """A Grid whose ``send_and_receive`` asks for the replies every ``poll_seconds`` instead
    of every 3 s (flwr 1.41's ``Grid.send_and_receive`` sleeps 3 s between pulls), so that a
    round ends once its last reply is in. Built on the Grid's public ``push_messages`` and
    ``pull_messages``; everything else is the wrapped Grid's."""

    def __init__(self, grid: Grid, poll_seconds: float = REPLY_POLL_SECONDS) -> None:
        self._grid, self.poll_seconds = grid, poll_seconds

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push ``messages``, then pull until every reply is in or ``timeout`` s have passed
        (None: no limit), as Flower's method does."""
        waiting = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            pulled = list(self._grid.pull_messages(waiting))
            replies += pulled
            waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                return replies
            time.sleep(self.poll_seconds)


@dataclass
class ServerState:
    """The learner's state (x, x_ag, rounds done, …) saved every ``every_n_rounds`` rounds and
    after the last, atomically, so that a killed ServerApp resumes where it was."""

    path: Path
    every_n_rounds: int

    def restore(self, learner: FederatedMetaLearner) -> None:
        if self.path.exists():
            learner.load_state_dict(torch.load(self.path, weights_only=True)["state_dict"])
            log.info("resumed from %s after %d rounds", self.path, int(learner.rounds_done))

    def save(self, learner: FederatedMetaLearner) -> None:
        AtomicCheckpointIO().save_checkpoint({"state_dict": learner.state_dict()}, self.path)

    def due(self, rounds_done: int, last_round: int) -> bool:
        return rounds_done % self.every_n_rounds == 0 or rounds_done == last_round


class FederatedRoundStrategy(FedAvg):
    """A Flower strategy running ``learner``'s rounds on the Flower nodes ``node_ids``
    (``node_ids[i]`` holds the training node of index i); ``state`` (optional) saves the
    learner."""

    def __init__(self, learner: FederatedMetaLearner, node_ids: list[int],
                 last_round: int, state: ServerState | None = None) -> None:
        num_nodes, per_round = len(node_ids), learner.clients_per_round
        super().__init__(fraction_train=per_round / num_nodes, fraction_evaluate=0.0,
                         min_train_nodes=per_round, min_available_nodes=num_nodes)
        self.learner, self.node_ids = learner, node_ids
        self.training_index_of = {node_id: index for index, node_id in enumerate(node_ids)}
        self.last_round, self.state = last_round, state
        self.plan: RoundPlan | None = None  # the round under way

    def state_arrays(self) -> ArrayRecord:
        """The server state as Flower's "global model": x and x_ag."""
        return ArrayRecord({"x": self.learner.x.clone(), "x_ag": self.learner.x_ag.clone()})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        plan = self.plan = self.learner.plan_round(range(len(self.node_ids)))
        x_md = plan.x_md.detach().cpu().numpy()
        return [train_message(TrainTask(x_md, plan.index, position, training_index),
                              self.node_ids[training_index], config)
                for position, training_index in enumerate(plan.chosen)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        learner = self.learner
        results, failures = self.sorted_results(list(replies))
        stats = learner.finish_round(self.plan, results, failures)
        if self.state is not None and self.state.due(int(learner.rounds_done), self.last_round):
            self.state.save(learner)
        metrics = MetricRecord({"round": stats["round"], "train-loss": stats["train_loss"],
                                "failed-clients": stats["failed_clients"],
                                "round-seconds": stats["round_seconds"]})
        return self.state_arrays(), metrics

    def sorted_results(self, replies: list[Message]) -> tuple[list, list[str]]:
        """The results of the replies without error, in position order; a line for each node
        that failed or did not answer."""
        by_position, failures = {}, []
        for reply in replies:
            training_index = self.training_index_of.get(reply.metadata.src_node_id)
            if reply.has_error():
                failures.append(f"training node {training_index}: {reply.error.reason}")
                continue
            position, result = read_result(reply)
            by_position[position] = client_result(result)
        missing = self.learner.clients_per_round - len(replies)
        if missing > 0:
            failures.append(f"{missing} node(s) sent no reply")
        return [by_position[position] for position in sorted(by_position)], failures


def client_result(result: NodeResult) -> ClientResult:
    """A node's reply as the server step takes it: torch parameters, and the loss a float64
    tensor as the in-process learner's."""
    return ClientResult(result.node_id, torch.from_numpy(result.params), result.num_samples,
                        torch.tensor(result.loss, dtype=torch.float64))


def discover_nodes(grid: Grid, num_nodes: int, timeout: float) -> list[int]:
    """The Flower node id of each training node, in training-index order: wait for
    ``num_nodes`` nodes, ask each its training index (its node config's ``partition-id``), and
    check that they are 0..num_nodes-1, once each."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(node_ids)} of {num_nodes} nodes connected after "
                               f"{timeout:.0f} s")
        time.sleep(NODE_POLL_SECONDS)
    replies = grid.send_and_receive([query_message(node_id) for node_id in node_ids],
                                    timeout=max(deadline - time.monotonic(), 1.0))
    holders = {}  # training index -> the Flower nodes holding it
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} did not say its "
                               f"partition-id: {reply.error.reason}")
        holders.setdefault(read_training_index(reply), []).append(reply.metadata.src_node_id)
    if sorted(holders) != list(range(num_nodes)) or len(replies) != num_nodes:
        raise ConfigError(f"node config partition-id: the {len(node_ids)} nodes hold "
                          f"{sorted(holders)}; the config has {num_nodes} training nodes, "
                          f"each must be held by one node with partition-id 0..{num_nodes - 1}")
    return [holders[index][0] for index in range(num_nodes)]
