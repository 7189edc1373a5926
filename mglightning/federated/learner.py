"""Federated meta-learning as a LightningModule: one training step is one round (SPEC §3).

The Trainer runs with manual optimization and one "epoch" per communication round, so that
checkpointing, resuming, logging and callbacks are Lightning's own public machinery. The
meta state (x, x_ag, rounds done) lives in buffers and so in every checkpoint. Every random
choice of round t comes from a generator seeded by (seed, t): the round counter is the whole
RNG state, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import copy
import time

import lightning as L
import torch

from mglightning.federated.flat import FlatParameters
from mglightning.models.network import GatedNetwork


def round_generator(seed: int, round_index: int) -> torch.Generator:
    """The generator of round ``round_index``: client choice, batches and gate noise."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round_index)


class FederatedMetaLearner(L.LightningModule):
    """Holds the network and the server state; ``training_step`` runs one round."""

    def __init__(
        self,
        network: GatedNetwork,
        strategy,
        local_solver,
        clients_per_round: int,
        seed: int,
        gate_noise: bool = True,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.network = network
        self.strategy, self.local_solver = strategy, local_solver
        self.clients_per_round, self.seed, self.gate_noise = clients_per_round, seed, gate_noise
        self.flat = FlatParameters(network, network.is_gate_parameter)
        self.register_buffer("x", self.flat.vector.clone())
        self.register_buffer("x_ag", self.flat.vector.clone())
        self.register_buffer("rounds_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("training_seconds", torch.zeros((), dtype=torch.float64))
        self.last_round: dict[str, float] = {}

    def on_fit_start(self) -> None:
        self.flat = FlatParameters(self.network, self.network.is_gate_parameter)  # on final device

    def configure_optimizers(self):
        return None

    def sample_clients(self, num_clients: int, generator: torch.Generator) -> list[int]:
        if self.clients_per_round > num_clients:
            raise ValueError(
                f"method.clients_per_round={self.clients_per_round} exceeds the "
                f"{num_clients} training nodes"
            )
        return torch.randperm(num_clients, generator=generator)[: self.clients_per_round].tolist()

    def training_step(self, batch, batch_idx: int) -> None:
        clients = self.trainer.datamodule.train_clients
        self.last_round = self.run_round(clients)

    def run_round(self, clients) -> dict[str, float]:
        """Algorithm 1, one round: configure, local solves on K sampled nodes, aggregate."""
        round_index = int(self.rounds_done) + 1
        generator = round_generator(self.seed, round_index)
        start = time.perf_counter()
        x_md = self.strategy.configure_fit(self.x, self.x_ag, round_index)
        chosen = self.sample_clients(len(clients), generator)
        self.network.set_gate_noise(self.gate_noise, generator)
        results = [self.local_solver(self.flat, x_md, clients[i], generator) for i in chosen]
        self.network.set_gate_noise(False)
        local_done = time.perf_counter()
        x, x_ag = self.strategy.aggregate_fit(self.x, self.x_ag, x_md, results, round_index)
        self.x.copy_(x)
        self.x_ag.copy_(x_ag)
        self.rounds_done += 1
        end = time.perf_counter()
        self.training_seconds += end - start
        return {
            "round": round_index,
            "train_loss": sum(result.loss for result in results) / len(results),
            "local_seconds": local_done - start,
            "server_seconds": end - local_done,
            "round_seconds": end - start,
        }

    def meta_network(self) -> GatedNetwork:
        """A detached copy of the network carrying the meta-model x_ag (SPEC §3 step 6)."""
        network = copy.deepcopy(self.network)
        torch.nn.utils.vector_to_parameters(self.x_ag.clone(), network.parameters())
        return network
