"""One node builder (mglightning/federated/training_node.py): the learner's node and a node built,
as a Flower ClientApp builds it, from the config parts the ServerApp sends (as JSON) solve
alike, bit for bit, over rounds whose gate noise and τ change, with the drill's faults."""

import json

import torch

from mglightning.build import build_datamodule, build_learner
from mglightning.federated.faults import FaultInjection
from mglightning.federated.flat import FlatParameters
from mglightning.federated.training_node import build_training_node, node_config

ROUNDS = 3


def sent_config(cfg) -> dict:
    """The node's config parts as a train message carries them."""
    return json.loads(json.dumps(node_config(cfg), sort_keys=True))


def test_the_learner_and_a_node_from_the_sent_config_solve_alike(tiny_config):
    base = tiny_config(f"rounds={ROUNDS}")
    datamodule = build_datamodule(base)
    failing = datamodule.train_clients[1]
    cfg = tiny_config(f"rounds={ROUNDS}", "method.gate_noise=annealed", "model.temperature=2.0",
                      "method.temperature_end=0.5", "method.local.gate_lr=0.3",
                      f"faults.inject.clients=[{failing.node_id}]", "faults.inject.kind=nan",
                      "faults.inject.rounds=[2]")
    learner = build_learner(cfg, datamodule)
    node = build_training_node(sent_config(cfg), datamodule.input_shape, datamodule.num_classes)
    assert torch.equal(torch.nn.utils.parameters_to_vector(node.network.parameters()),
                       learner.x)  # the same x_0
    assert isinstance(node.local_solver, FaultInjection) and node.local_solver.solver.gate_lr == 0.3
    flat = FlatParameters(node.network, node.network.is_gate_parameter)
    x_md = learner.x + 0.01
    for round_index in range(1, ROUNDS + 1):
        learner.network.temperature = learner.temperature(round_index)  # as plan_round sets it
        for position, client in enumerate(datamodule.train_clients[:2]):
            expected = learner.solve_client(x_md, client, round_index, position)
            result = node.solve(flat, x_md, client, cfg.seed, round_index, position)
            torch.testing.assert_close(result.params, expected.params, rtol=0, atol=0,
                                       equal_nan=True)
            assert torch.equal(result.loss, expected.loss)
            nan = client is failing and round_index == 2
            assert result.params.isnan().all() == nan
        assert flat.module.temperature == node.temperature(round_index)
    assert [node.gate_noise(r) for r in (1, 2, 3)] == [1.0, 0.5, 0.0]
    assert [node.temperature(r) for r in (1, 2, 3)] == [2.0, 1.25, 0.5]


def test_a_method_without_gates_builds_a_node_without_gates(tiny_config):
    cfg = tiny_config("method=fedavg")
    datamodule = build_datamodule(cfg)
    node = build_training_node(sent_config(cfg), datamodule.input_shape, datamodule.num_classes)
    assert node.network.gated_layers == [] and not isinstance(node.local_solver, FaultInjection)
    assert node.gate_noise(1) == 0.0
