"""The per-round gate noise scale and temperature (METHOD.md §1), and that each round uses them."""

import pytest

from mglightning.build import build_datamodule, build_learner
from mglightning.federated.schedules import (
    LinearSchedule,
    gate_noise_schedule,
    temperature_schedule,
)


def test_annealed_noise_goes_from_one_at_round_one_to_zero_at_the_last():
    schedule = gate_noise_schedule("annealed", rounds=5)
    assert [schedule(t) for t in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert schedule(9) == 0.0  # held after the last round (a run resumed with more rounds)


def test_logistic_and_none_are_constant():
    assert {gate_noise_schedule("logistic", 7)(t) for t in range(1, 8)} == {1.0}
    assert {gate_noise_schedule("none", 7)(t) for t in range(1, 8)} == {0.0}
    with pytest.raises(ValueError, match="method.gate_noise='gumbel'"):
        gate_noise_schedule("gumbel", 7)


def test_temperature_schedule_is_linear_or_constant():
    assert temperature_schedule(2.0, 0.5, rounds=4)(1) == 2.0
    assert temperature_schedule(2.0, 0.5, rounds=4)(4) == 0.5
    assert temperature_schedule(2.0, None, rounds=4)(3) == 2.0
    assert LinearSchedule(1.0, 0.0, rounds=1)(1) == 1.0  # one round: the start value


class RecordingSolver:
    """Wraps a local solver, recording the noise scale and τ the network has in each call."""

    def __init__(self, solver):
        self.solver, self.seen = solver, []

    def __call__(self, flat, start, client, generator, round_index):
        self.seen.append((flat.module.gate_noise, flat.module.temperature))
        return self.solver(flat, start, client, generator, round_index)


def test_each_round_solves_with_its_noise_scale_and_temperature(tiny_config):
    cfg = tiny_config("rounds=3", "method.clients_per_round=1", "method.gate_noise=annealed",
                      "model.temperature=2.0", "method.temperature_end=1.0")
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    learner.local_solver = recorder = RecordingSolver(learner.local_solver)
    for _ in range(3):
        learner.run_round(datamodule.train_clients)
    assert recorder.seen == [(1.0, 2.0), (0.5, 1.5), (0.0, 1.0)]
    assert learner.network.gate_noise == 0.0  # off between rounds
    assert learner.meta_network().temperature == 1.0  # adaptation: the last round's τ
