"""Device-correct by construction, checked without a GPU.

The model and data live on the CPU while the default device is ``meta``: a tensor made without
an explicit ``device=`` (the bug that crashes on CUDA) then lands on ``meta``, and mixing it
with the CPU tensors raises, or it shows up in the outputs. Every method's round, the server
step, both proxes, ``forward_cost`` and the adaptation of one target run this way.
"""

from functools import partial
from types import SimpleNamespace

import pytest
import torch

from mglightning.adaptation.module import FastAdaptation
from mglightning.adaptation.snip import snip
from mglightning.adaptation.steps import one_step, two_stage
from mglightning.build import build_datamodule, build_learner
from mglightning.federated.faults import InjectedFault
from mglightning.federated.prox import L1, GroupLasso
from mglightning.federated.server import AcceleratedProximalStep, ClientResult
from mglightning.models import build_network, forward_cost

METHODS = ["metagater", "fedavg", "perfedavg_fo", "perfedavg_hf", "metagater_nogate"]
CPU = torch.device("cpu")


def defaults_to_meta():
    """Factory calls without ``device=`` make meta tensors inside this context."""
    return torch.device("meta")


def tiny_learner(tiny_config, method: str):
    cfg = tiny_config(f"method={method}", "method.clients_per_round=2", "method.local.steps=2")
    datamodule = build_datamodule(cfg)
    return cfg, datamodule, build_learner(cfg, datamodule)


@pytest.mark.parametrize("method", METHODS)
def test_a_round_makes_every_tensor_on_the_parameters_device(tiny_config, method):
    _, datamodule, learner = tiny_learner(tiny_config, method)
    clients = datamodule.train_clients
    learner.run_round(clients)  # away from x_0: x ≠ x_ag, the server's prox term non-zero
    with defaults_to_meta():
        stats = learner.run_round(clients)
    assert stats["failed_clients"] == 0 and stats["train_loss"] == stats["train_loss"]
    for name, buffer in learner.named_buffers():
        assert buffer.device == CPU, name
    assert learner.flat.vector.device == CPU


def test_regularizers_and_weighted_mean_make_tensors_on_the_vectors_device(tiny_config):
    _, _, learner = tiny_learner(tiny_config, "metagater")
    pairs = [(f"blocks.{i}.gate.out.weight", f"blocks.{i}.gate.out.bias")
             for i in learner.network.gated_layers]
    vector = learner.flat.vector.clone()
    results = [ClientResult(i, vector + i, 10 * (i + 1), torch.zeros(())) for i in range(3)]
    with defaults_to_meta():
        group_ids, num_groups = learner.flat.group_index(pairs)
        assert group_ids.device == CPU
        for regularizer in (GroupLasso(0.1, group_ids, num_groups),
                            L1(0.1, learner.flat.gate_mask)):
            server_step = AcceleratedProximalStep(1.0, 0.5, weighted=True,
                                                   regularizer=regularizer)
            x, x_ag = server_step.aggregate(vector, vector, vector, results, round_index=2)
            assert x.device == x_ag.device == CPU
            assert regularizer.value(x).device == CPU


@pytest.mark.parametrize("gated_layers", [[3], []])
def test_forward_cost_counts_on_the_networks_device(gated_layers):
    network = build_network("cnn4", (1, 16, 16), 4, gated_layers=gated_layers)
    masks = network.forward_with_masks(torch.randn(5, 1, 16, 16)).masks
    with defaults_to_meta():
        cost = forward_cost(network, masks)
    assert cost.executed_macs.device == cost.gated_sparsity.device == CPU


@pytest.mark.parametrize("rule,options", [(two_stage, {}), (one_step, {}),
                                          (snip, {"keep_fraction": 0.5})])
def test_adapting_one_target_makes_every_tensor_on_the_networks_device(tiny_config, rule,
                                                                        options):
    _, datamodule, learner = tiny_learner(tiny_config, "metagater")
    adapter = FastAdaptation(partial(rule, lr=0.05, **options))
    adapter.set_meta_network(learner.meta_network())
    with defaults_to_meta():
        row = adapter.adapt_and_evaluate(datamodule.target_clients[0], 0)
    assert 0.0 <= row["accuracy"] <= 1.0 and row["learning_seconds"] >= 0.0


def test_the_federation_moves_to_the_trainers_device_once(tiny_config):
    """Lightning's setup puts the pooled data and every node's index views on the Trainer's
    device (meta here: a device the CPU is not), all nodes sharing one moved data set."""
    _, datamodule, _ = tiny_learner(tiny_config, "metagater")
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    datamodule.setup("fit")
    clients = datamodule.train_clients + datamodule.target_clients
    assert datamodule.data.images.is_meta and datamodule.data.labels.is_meta
    for client in clients:
        assert client.data is datamodule.data
        assert client.support_idx.is_meta and client.query_idx.is_meta
    images, labels = clients[0].sample_support_batch(4, torch.Generator().manual_seed(0))
    assert images.is_meta and labels.is_meta and images.shape[0] == 4


def failing_solver(error: Exception):
    def solve(flat, start, client, generator, round_index):
        raise error
    return solve


@pytest.mark.parametrize("error", [
    RuntimeError("Expected all tensors to be on the same device, but found at least two "
                 "devices, cuda:0 and cpu!"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    AttributeError("'NoneType' object has no attribute 'grad'"),
])
def test_device_and_programming_errors_in_a_local_solve_propagate(tiny_config, error):
    """Not the client's doing: counting them as client failures would hide them."""
    _, datamodule, learner = tiny_learner(tiny_config, "metagater")
    learner.local_solver = failing_solver(error)
    with pytest.raises(type(error), match=str(error)[:20]):
        learner.run_round(datamodule.train_clients)


def test_a_clients_own_failure_is_still_counted(tiny_config):
    _, datamodule, learner = tiny_learner(tiny_config, "metagater")
    learner.local_solver = failing_solver(InjectedFault("drill"))
    stats = learner.run_round(datamodule.train_clients)
    assert stats["failed_clients"] == learner.clients_per_round
