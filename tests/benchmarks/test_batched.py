"""The batched rounds against the loop: the same server state from the same start (up to the
order of float sums), the loop's bookkeeping (they finish at the learner's round seam), and a
refusal of what they cannot compute."""

import pytest
import torch

from benchmarks.batched import ConcatenatedRound, VmappedRound
from mglightning.build import build_datamodule, build_learner

CPU = torch.device("cpu")


def learner_on(cfg, device: torch.device = CPU):
    """A fresh learner at x_0 on ``device``, its federation moved there; and its clients."""
    datamodule = build_datamodule(cfg)
    datamodule.to_device(device)
    return (build_learner(cfg, datamodule, device),
            datamodule.train_clients)


def server_state(learner) -> torch.Tensor:
    return torch.cat([learner.x, learner.x_ag]).clone()


def loop_and_batched_states(learner, clients, candidate) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, x_ag) after one more loop round and, from the same start, after ``candidate``'s."""
    start = {name: value.clone() for name, value in learner.state_dict().items()}
    learner.run_round(clients)
    loop = server_state(learner)
    learner.load_state_dict(start)
    candidate(learner, clients)()
    return loop, server_state(learner)


@pytest.mark.parametrize("candidate, overrides, tolerance", [
    # m = 1, one pass over the K batches concatenated: the clients' (weighted) mean model
    (ConcatenatedRound, ("method=metagater", "method.local.steps=1"), 1e-7),  # accelerated prox
    (ConcatenatedRound, ("method=metagater", "method.local.steps=1",
                         "method.local.gate_lr=0.3"), 1e-7),                 # per-entry steps
    (ConcatenatedRound, ("method=fedavg", "method.local.steps=1"), 1e-7),     # size-weighted
    # the K clients' m steps together (vmap over their parameter rows, grouped convolutions)
    (VmappedRound, ("method=metagater", "method.local.steps=2"), 1e-6),      # prox at step 2
    (VmappedRound, ("method=metagater", "method.local.steps=3",
                    "method.local.gate_lr=0.3"), 1e-6),
    (VmappedRound, ("method=fedavg", "method.local.steps=2"), 1e-6),
    (VmappedRound, ("method=metagater", "method.local.steps=1", "model=cnn7"), 1e-6),  # 2 gates
    # 3 input channels: a channels-last copy differs from NCHW, which vmap needs
    (VmappedRound, ("method.local.steps=2", "+dataset.source.shape=[3,16,16]"), 1e-6),
])
def test_a_batched_round_leaves_the_server_state_a_loop_round_does(tiny_config, candidate,
                                                                   overrides, tolerance):
    """Each client's model, or the mean the server reads of them, is what its own solve gives,
    so the new (x, x_ag) equal run_round's up to float summation order."""
    learner, clients = learner_on(tiny_config("method.gate_noise=none", *overrides))
    learner.run_round(clients)  # x ≠ x_ag from here on
    start = {name: value.clone() for name, value in learner.state_dict().items()}
    loop, batched = loop_and_batched_states(learner, clients, candidate)
    assert (loop - batched).abs().max() < tolerance
    assert learner.network.channels_last  # the layout is given back
    learner.load_state_dict(start)
    learner.seed += 1  # other clients and batches: the comparison must notice
    candidate(learner, clients)()
    assert (server_state(learner) - loop).abs().max() > 1e-4


@pytest.mark.parametrize("candidate, steps", [(ConcatenatedRound, 1), (VmappedRound, 2)])
def test_a_batched_round_is_counted_as_a_loop_round_is(tiny_config, candidate, steps):
    """The seam's bookkeeping: the round counted and timed, the failed-round count reset, the
    network left holding x_ag, the loop's metrics."""
    learner, clients = learner_on(tiny_config("method.gate_noise=none",
                                              f"method.local.steps={steps}"))
    loop_metrics = learner.run_round(clients)
    learner.failed_rounds_in_a_row.fill_(1)
    seconds = float(learner.training_seconds)
    metrics = candidate(learner, clients)()
    assert set(metrics) == set(loop_metrics) and metrics["round"] == 2
    assert metrics["failed_clients"] == 0
    assert int(learner.rounds_done) == 2 and int(learner.failed_rounds_in_a_row) == 0
    assert float(learner.training_seconds) > seconds
    assert torch.equal(learner.flat.vector, learner.x_ag)


def test_a_batched_round_with_a_non_finite_result_counts_a_failed_round(tiny_config):
    """The non-finite check is the seam's: a NaN model is left out, as in the loop."""
    learner, clients = learner_on(tiny_config("method.gate_noise=none",
                                              "method.local.steps=1"))
    learner.local_solver.lr = float("nan")
    x_ag = learner.x_ag.clone()
    metrics = ConcatenatedRound(learner, clients)()
    assert metrics["failed_clients"] == learner.clients_per_round  # the one mean result, gone
    assert int(learner.failed_rounds_in_a_row) == 1 and torch.equal(learner.x_ag, x_ag)


@pytest.mark.parametrize("candidate, overrides, refusal", [
    (ConcatenatedRound, ("method.local.steps=2",), "m = 1"),
    (ConcatenatedRound, ("method=perfedavg_fo", "method.local.steps=1"), "m = 1"),
    (ConcatenatedRound, ("method.local.steps=1", "method.gate_noise=logistic"), "gate_noise=none"),
    (VmappedRound, ("method=perfedavg_fo",), "proximal-SGD"),
    (VmappedRound, ("method.gate_noise=logistic",), "gate_noise=none"),
    (VmappedRound, ("dataset.batch_size=64",), "batch full"),  # tiny nodes: 30-60 support images
    (ConcatenatedRound, ("method.local.steps=1", "+method/local/gate_loss=target_rate"),
     "no gate loss"),
    (VmappedRound, ("+method/local/gate_loss=target_rate",), "no gate loss"),
])
def test_a_batched_round_refuses_what_it_cannot_compute(tiny_config, candidate, overrides,
                                                       refusal):
    learner, clients = learner_on(tiny_config(*overrides))
    with pytest.raises(ValueError, match=refusal):
        candidate(learner, clients)()


@pytest.mark.parametrize("candidate, steps", [(ConcatenatedRound, 1), (VmappedRound, 2)])
@pytest.mark.parametrize("method", ["metagater", "fedavg"])
def test_a_batched_round_makes_every_tensor_on_the_parameters_device(tiny_config, method,
                                                                     candidate, steps):
    """Device-correct by construction: a tensor made without ``device=`` would
    land on ``meta`` and fail, or show in the server state."""
    learner, clients = learner_on(tiny_config(f"method={method}", "method.clients_per_round=2",
                                              f"method.local.steps={steps}",
                                              "method.gate_noise=none"))
    learner.run_round(clients)
    with torch.device("meta"):
        candidate(learner, clients)()
    assert learner.x.device == learner.x_ag.device == learner.flat.vector.device
    assert learner.x.device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.parametrize("candidate, steps", [(ConcatenatedRound, 1), (VmappedRound, 2)])
@pytest.mark.parametrize("method", ["metagater", "fedavg"])
def test_a_batched_round_on_the_gpu_leaves_the_loops_server_state(tiny_config, monkeypatch,
                                                                  method, candidate, steps):
    """The candidates make gpu-check times compute the loop's round there too, up to the
    order of float sums."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    learner, clients = learner_on(tiny_config(f"method={method}", f"method.local.steps={steps}",
                                              "method.gate_noise=none"), torch.device("cuda"))
    learner.run_round(clients)
    loop, batched = loop_and_batched_states(learner, clients, candidate)
    assert (loop - batched).abs().max() < 1e-6
