"""A training node's side of a round, built from the run's resolved config in one place.

The in-process learner (:func:`mglightning.build.build_learner`) and a Flower ClientApp
(:mod:`mglightning.flower.client_app`) both build their node here: the network with the gates
the method has, the local solver (with the drill's faults, ``faults.inject``), and the round
schedules of gate noise and τ (METHOD.md §1, §3 step 3). So a node solves alike on either side,
and an option a node reads is wired once.

Everything here reads the plain resolved config (:func:`node_config`: the top-level parts
:data:`NODE_PARTS`, as dicts), which the ServerApp sends its nodes whole: a new option of a part
(``method.local.*``, ``model.*``) reaches both sides with its class and its YAML alone. Light on
purpose (torch alone, no Hydra, Lightning or W&B): a SuperNode starts a ClientApp process for
every message, and that process imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

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
from mglightning.models.network import GatedNetwork
from mglightning.run.identity import DATA_KEY
from mglightning.targets import bind

# The top-level parts of the config a node reads: its shard (seed, dataset, data_root), its
# network (model, method.gating), its local solver and schedules (method, rounds) and its
# drill (faults). The ServerApp sends them resolved (mglightning.flower.protocol).
NODE_PARTS = ("seed", "rounds", "data_root", "dataset", "model", "method", "faults")

LocalSolver = Callable[..., ClientResult]  # (flat, start, client, generator, round) -> result


def node_config(cfg, data: str | None = None) -> dict:
    """The parts :data:`NODE_PARTS` of a composed config, resolved against the whole config,
    as plain JSON values; with ``data``, the fingerprint of the pooled data the nodes' shards
    must be cut from (``data_fingerprint``, as a run folder records it), which a Flower node
    checks and files its shard under."""
    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    parts = {part: plain(cfg[part]) for part in NODE_PARTS}
    return parts if data is None else parts | {DATA_KEY: data}


@dataclass
class TrainingNode:
    """A node's network, its local solver and the per-round gate noise scale and τ."""

    network: GatedNetwork
    local_solver: LocalSolver
    gate_noise: LinearSchedule
    temperature: LinearSchedule

    def solve(self, flat: FlatParameters, x_md: torch.Tensor, client, seed: int,
              round_index: int, position: int) -> ClientResult:
        """The local solve of ``client``, the ``position``-th chosen in round ``round_index``,
        on ``flat`` (over :attr:`network`) at the round's τ and gate noise scale."""
        flat.module.temperature = self.temperature(round_index)
        return solve_client(self.local_solver, flat, x_md, client, seed, round_index, position,
                            self.gate_noise(round_index))


def build_network(config: Mapping, input_shape: Sequence[int], num_classes: int) -> GatedNetwork:
    """The backbone ``model``, gated unless ``method.gating`` is false; its initialization is
    x_0, a function of the seed alone."""
    gated_layers = list(config["model"]["gated_layers"]) if config["method"]["gating"] else []
    backbone = bind(config["model"])
    with torch.random.fork_rng():
        torch.manual_seed(config["seed"])
        return backbone(input_shape, num_classes, gated_layers=gated_layers)


def build_local_solver(config: Mapping, network: GatedNetwork) -> LocalSolver:
    """``method.local`` for ``network``, failing at the nodes and rounds of
    ``faults.inject`` (none: as it is)."""
    method = config["method"]
    local_solver = bind(method["local"])()
    if getattr(local_solver, "sparsity_off", None) is not None and not network.gated_layers:
        raise ConfigError(f"method.local.sparsity_off={local_solver.sparsity_off}: a sparsity "
                          f"budget needs gates, and method={method['name']} has none; "
                          "set it to null or use method=metagater")
    if getattr(local_solver, "gate_loss", None) is not None and not network.gated_layers:
        raise ConfigError(f"method.local.gate_loss: a gate loss needs gates, and "
                          f"method={method['name']} has none; set it to null or use "
                          "method=metagater")
    faults = config["faults"]["inject"]
    if not faults["clients"]:
        return local_solver
    return FaultInjection(local_solver, set(faults["clients"]), faults["kind"],
                          None if faults["rounds"] is None else set(faults["rounds"]))


def build_training_node(config: Mapping, input_shape: Sequence[int],
                        num_classes: int) -> TrainingNode:
    """The node of the resolved ``config`` (:func:`node_config`) for data of ``input_shape``
    and ``num_classes``: network at x_0, local solver, gate noise and τ over the rounds."""
    network = build_network(config, input_shape, num_classes)
    method, rounds = config["method"], config["rounds"]
    return TrainingNode(
        network,
        build_local_solver(config, network),
        gate_noise_schedule(method.get("gate_noise", "none"), rounds),
        temperature_schedule(network.temperature, method.get("temperature_end"), rounds),
    )
