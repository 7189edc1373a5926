"""Federated meta-learning as a LightningModule: one training step is one round (METHOD.md §3).

The Trainer runs with manual optimization and one "epoch" per communication round, so that
checkpointing, resuming, logging and callbacks are Lightning's own public machinery. The
meta state (x, x_ag, rounds done) lives in buffers and so in every checkpoint. Round t chooses
its clients from a generator seeded by (seed, t), and the client at position k draws from its
own streams seeded by (seed, t, k) (:mod:`mglightning.federated.streams`): the round counter
is the whole RNG state, and a resumed run draws exactly what an uninterrupted one would.

A round has one seam, shaped like Flower's configure → aggregate: ``plan_round`` starts it
(x_md, the chosen clients, τ, the noise scale) and ``finish_round`` ends it from the clients'
results (the non-finite ones left out, the server step, the failed-round count, x_ag loaded,
the timings). The loop (``run_round``, in one process or several), the Flower strategy and the
batched rounds the bench studies (``benchmarks/batched.py``) differ only in between.

Faults: a node whose local solve fails on its own account (a :class:`ClientError`, such as a
drill's :class:`InjectedFault`, or a :class:`DataError`) or returns non-finite parameters is
left out of its round (and counted); any other exception (a device error, CUDA running out of
memory, a bug) is no client's doing and propagates. A round in which every node failed leaves
the server state as it was; ``max_failed_rounds`` such rounds in a row, or a non-finite server
state, stop training with a :class:`TrainingFault` before anything is written, so the last
checkpoint stays the last good one.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lightning as L
import torch

from mglightning.data.datasets import DataError
from mglightning.devices import device_clock
from mglightning.errors import one_line
from mglightning.federated.client_solve import solve_client
from mglightning.federated.distributed import gather_results, own_positions
from mglightning.federated.faults import ClientError
from mglightning.federated.flat import FlatParameters
from mglightning.federated.schedules import gate_noise_schedule, temperature_schedule
from mglightning.federated.server import ClientResult
from mglightning.federated.streams import round_generator
from mglightning.models.network import GatedNetwork

log = logging.getLogger(__name__)

# What a client can do wrong on its own: the round goes on without it. Nothing broader: a
# device error, an out-of-memory error or a bug would fail every client alike, and hiding it
# as "client failures" would only end the run later with the wrong reason.
CLIENT_ERRORS = (ClientError, DataError)


class TrainingFault(RuntimeError):
    """Training cannot go on (every client failing, a non-finite server state); the message
    says why. Raised before the round's state is committed, so no checkpoint holds it."""


@dataclass
class RoundPlan:
    """A round as configured (METHOD.md §3 steps 1-2): what its clients solve from. ``chosen``
    holds the round's clients (or their indices) in position order: the k-th draws from the
    streams (seed, ``index``, k) (:mod:`~mglightning.federated.streams`)."""

    index: int
    x_md: torch.Tensor
    chosen: list
    temperature: float
    noise_scale: float
    start: float  # device clock when the round began


def finite_results(results: list[ClientResult]) -> tuple[list[ClientResult], list[str]]:
    """The results whose parameters are all finite, in their order, and a line for each one
    left out. Finiteness is read back once for the whole round, not once per client."""
    if not results:
        return [], []
    finite = torch.stack([result.params.isfinite().all() for result in results]).tolist()
    return ([result for result, ok in zip(results, finite, strict=True) if ok],
            [f"node {result.node_id}: non-finite parameters"
             for result, ok in zip(results, finite, strict=True) if not ok])


class FederatedMetaLearner(L.LightningModule):
    """Holds the network and the server state; ``training_step`` runs one round."""

    def __init__(
        self,
        network: GatedNetwork,
        server_step,
        local_solver,
        clients_per_round: int,
        seed: int,
        gate_noise: Callable[[int], float] | None = None,
        temperature: Callable[[int], float] | None = None,
        max_failed_rounds: int = 3,
    ) -> None:
        """``gate_noise`` and ``temperature`` map a round to the gate noise scale and τ of its
        local steps (:mod:`~mglightning.federated.schedules`); None: no noise, and the
        network's own τ in every round."""
        super().__init__()
        self.automatic_optimization = False
        self.network = network
        self.server_step, self.local_solver = server_step, local_solver
        self.clients_per_round, self.seed = clients_per_round, seed
        self.gate_noise = gate_noise or gate_noise_schedule("none", 1)
        self.temperature = temperature or temperature_schedule(network.temperature, None, 1)
        self.max_failed_rounds = max_failed_rounds
        self.flat = FlatParameters(network, network.is_gate_parameter)
        self.register_buffer("x", self.flat.vector.clone())
        self.register_buffer("x_ag", self.flat.vector.clone())
        self.register_buffer("rounds_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("training_seconds", torch.zeros((), dtype=torch.float64))
        # Rounds in a row, up to now, in which every client failed; a checkpoint carries it.
        self.register_buffer("failed_rounds_in_a_row", torch.zeros((), dtype=torch.long))
        self.last_round: dict[str, float] = {}

    def on_fit_start(self) -> None:
        self.flat = FlatParameters(self.network, self.network.is_gate_parameter)  # on final device

    def configure_optimizers(self) -> list:
        return []  # no torch optimizer: the step updates the parameters itself

    def sample_clients(self, num_clients: int, generator: torch.Generator) -> list[int]:
        """K of the ``num_clients`` training nodes; that there are K is the federation's own
        check (:func:`~mglightning.data.datamodule.node_split`)."""
        order = torch.randperm(num_clients, generator=generator, device=generator.device)
        return order[: self.clients_per_round].tolist()

    def round_clients(self, num_clients: int, round_index: int) -> list[int]:
        """The indices, among ``num_clients`` training nodes, that round ``round_index``
        chooses: a function of (seed, round) alone, so every caller chooses alike."""
        return self.sample_clients(num_clients, round_generator(self.seed, round_index))

    def training_step(self, batch, batch_idx: int) -> None:
        clients = self.trainer.datamodule.train_clients
        self.last_round = self.run_round(clients)

    def current_round(self) -> int:
        """The round under way (1-based): the next one between rounds."""
        return int(self.rounds_done) + 1

    def plan_round(self, clients: Sequence) -> RoundPlan:
        """The start of the next round, Flower's configure step: x_md from the server state,
        the round's choice among ``clients`` (the clients, or just ``range(N)`` where they
        live elsewhere), and the network set to the round's τ."""
        index = self.current_round()
        start = device_clock(self.x.device)
        x_md = self.server_step.configure(self.x, self.x_ag, index)
        chosen = [clients[i] for i in self.round_clients(len(clients), index)]
        self.network.temperature = self.temperature(index)
        return RoundPlan(index, x_md, chosen, self.network.temperature, self.gate_noise(index),
                         start)

    def finish_round(
        self, plan: RoundPlan, results: list[ClientResult], failures: list[str],
        solved_at: float | None = None, clients_per_result: int = 1,
    ) -> dict[str, float]:
        """The end of round ``plan``, Flower's aggregate step: the server step over
        ``results`` (in position order) less the non-finite ones, or, if none is left, a
        failed round counted; the round counted, the network left holding x_ag. ``failures``
        describe the clients that failed on their own account; ``solved_at`` (device clock),
        when given, splits gathering from solving in the timings; ``clients_per_result``: how
        many chosen clients a result stands for (all of them for a round that sends one mean
        model). Returns the round's metrics."""
        local_done = device_clock(self.x.device)
        results, non_finite = finite_results(results)
        failures = [*failures, *non_finite]
        for failure in failures:
            log.warning("round %d: %s; left out of the round", plan.index, failure)
        if results:
            self.commit(*self.server_step.aggregate(self.x, self.x_ag, plan.x_md, results,
                                                     plan.index), plan.index)
        else:
            self.count_failed_round(failures, plan.index)
        self.rounds_done += 1
        self.flat.load(self.x_ag)  # between rounds the network holds the meta-model
        end = device_clock(self.x.device)
        self.training_seconds += end - plan.start
        return {
            "round": plan.index,
            "train_loss": (float(torch.stack([result.loss for result in results]).mean())
                           if results else float("nan")),
            "failed_clients": len(plan.chosen) - clients_per_result * len(results),
            "local_seconds": local_done - plan.start,
            # with several processes: waits included
            "gather_seconds": 0.0 if solved_at is None else local_done - solved_at,
            "server_seconds": end - local_done,
            "round_seconds": end - plan.start,
        }

    def run_round(self, clients) -> dict[str, float]:
        """Algorithm 1, one round: configure, local solves on K sampled nodes (this process's
        share of them, :mod:`~mglightning.federated.distributed`), aggregate over the nodes
        that did not fail."""
        plan = self.plan_round(clients)
        own = [(position, plan.chosen[position]) for position in own_positions(len(plan.chosen))]
        solved, failures = self.solve_clients(own, plan.x_md, plan.index)
        solved_at = device_clock(self.x.device)
        results = gather_results(self, solved, [client.node_id for client in plan.chosen],
                                 plan.x_md)
        return self.finish_round(plan, results, failures, solved_at)

    def solve_clients(
        self, chosen, x_md: torch.Tensor, round_index: int
    ) -> tuple[list[tuple[int, ClientResult]], list[str]]:
        """Local solves of the (position, client) pairs ``chosen``, each from its own streams
        (so any order, or any subset, gives each client the same result): (position, result)
        pairs; a node that fails on its own account is left out, and its failure described."""
        results, failures = [], []
        for position, client in chosen:
            try:
                results.append((position, self.solve_client(x_md, client, round_index, position)))
            except CLIENT_ERRORS as error:  # the client's own failure: the round goes on
                log.debug("node %d failed", client.node_id, exc_info=error)
                message = one_line(error)
                failures.append(f"node {client.node_id}: {type(error).__name__}: {message}")
        return results, failures

    def solve_client(
        self, x_md: torch.Tensor, client, round_index: int, position: int
    ) -> ClientResult:
        """The local solve of ``client``, the ``position``-th chosen in round ``round_index``."""
        return solve_client(self.local_solver, self.flat, x_md, client, self.seed, round_index,
                            position, self.gate_noise(round_index))

    def commit(self, x: torch.Tensor, x_ag: torch.Tensor, round_index: int) -> None:
        """Take the new server state, unless it is non-finite: then stop, keeping the old."""
        if not (torch.isfinite(x).all() and torch.isfinite(x_ag).all()):
            raise TrainingFault(f"the server state became non-finite at round {round_index}: "
                                "stopped; the last checkpoint holds the last good state")
        self.x.copy_(x)
        self.x_ag.copy_(x_ag)
        self.failed_rounds_in_a_row.zero_()

    def count_failed_round(self, failures: list[str], round_index: int) -> None:
        """A round in which every client failed changes nothing; too many in a row stop."""
        in_a_row = int(self.failed_rounds_in_a_row) + 1
        if in_a_row >= self.max_failed_rounds:
            last = failures[-1] if failures else "in another process"
            raise TrainingFault(
                f"every client failed in {in_a_row} rounds in a row (rounds "
                f"{round_index - in_a_row + 1}-{round_index}; faults.max_failed_rounds="
                f"{self.max_failed_rounds}; last: {last}): stopped; the last "
                "checkpoint holds the last good state")
        self.failed_rounds_in_a_row += 1

    def meta_network(self) -> GatedNetwork:
        """A detached copy of the network carrying the meta-model x_ag (METHOD.md §3 step 6), and
        the τ of the last round done, with which fast adaptation's gradients are taken."""
        network = copy.deepcopy(self.network)
        network.temperature = self.temperature(int(self.rounds_done))
        torch.nn.utils.vector_to_parameters(self.x_ag.clone(), network.parameters())
        return network
