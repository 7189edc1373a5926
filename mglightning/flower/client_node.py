"""A training node's solves for a Flower node: the torch side of the ClientApp.

Its shard (:mod:`.shard`), the node built from the config parts the ServerApp sends
(:func:`~mglightning.federated.training_node.build_training_node`, as the in-process learner
builds its node) and the flat parameters its solves run on, kept per process for the config
they were built from: a new config (another run, changed data) builds a new node, never
reusing a stale one. Two processes hold it: the ClientApp itself, when its node has no worker
(a Ray actor of the simulation keeps it across messages), and the node's worker
(:mod:`.node_worker`), which keeps it across the SuperNode's ClientApp processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch

from mglightning.federated.flat import FlatParameters
from mglightning.federated.training_node import TrainingNode, build_training_node
from mglightning.flower.protocol import NodeResult, TrainTask
from mglightning.flower.shard import NodeShard, load_node_shard


@dataclass
class ClientNode:
    """A training node as a Flower node's process holds it: its shard, the node built for it
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

    def solve(self, task: TrainTask) -> NodeResult:
        """The local solve of ``task`` from its x_md, as the in-process learner's client at
        that round and position."""
        result = self.node.solve(self.flat, torch.from_numpy(task.x_md), self.shard.client,
                                 self.seed, task.round_index, task.position)
        return NodeResult(result.node_id, result.params.detach().cpu().numpy(),
                          result.num_samples, float(result.loss))


@lru_cache(maxsize=4)
def client_node(node_config_json: str, training_index: int) -> ClientNode:
    """The node of ``training_index`` for the config parts ``node_config_json`` (the train
    message's JSON, whole: the cache key), built at its first solve in this process."""
    return ClientNode.build(json.loads(node_config_json), training_index)
