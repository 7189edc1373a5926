"""The same code path on a GPU: run by ``make gpu-check``, skipped without CUDA.

``make gpu-check`` also sets ``MG_CUDA_SYNC_DEBUG=warn`` (tests/conftest.py), so every host sync
these tests hit shows in pytest's warnings summary.
"""

import csv
import time

import pytest
import torch

from mglightning.adaptation.module import FastAdaptation
from mglightning.build import build_datamodule, build_learner
from mglightning.devices import device_clock
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.train import run

pytestmark = pytest.mark.cuda
METHODS = ["metagater", "fedavg", "perfedavg_fo", "perfedavg_hf", "metagater_nogate"]


def final_state(cfg) -> dict:
    return torch.load(f"{cfg.output_dir}/checkpoints/last.ckpt", weights_only=False)["state_dict"]


def task_rows(cfg) -> list[dict]:
    """tasks.csv without its timings."""
    with open(f"{cfg.output_dir}/tasks.csv") as handle:
        return [{key: value for key, value in row.items() if "seconds" not in key}
                for row in csv.DictReader(handle)]


def record_devices(monkeypatch) -> dict[str, set[str]]:
    """The device types the rounds and the target adaptations ran on, recorded as they run.
    (Lightning moves the model back to the CPU when fit ends: the checkpoint cannot tell.)"""
    seen = {"rounds": set(), "adaptation": set()}
    run_round, adapt = FederatedMetaLearner.run_round, FastAdaptation.adapt

    def recording_round(self, clients):
        seen["rounds"].add(self.x.device.type)
        return run_round(self, clients)

    def recording_adapt(self, client):
        seen["adaptation"].add(next(self.meta_network.parameters()).device.type)
        return adapt(self, client)

    monkeypatch.setattr(FederatedMetaLearner, "run_round", recording_round)
    monkeypatch.setattr(FastAdaptation, "adapt", recording_adapt)
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_adapts_on_the_gpu(tiny_config, monkeypatch, method):
    seen = record_devices(monkeypatch)
    cfg = tiny_config(f"method={method}", "trainer.accelerator=gpu", "rounds=2",
                      "eval_every=2")
    summary = run(cfg)
    assert seen == {"rounds": {"cuda"}, "adaptation": {"cuda"}}
    assert len(task_rows(cfg)) == cfg.dataset.num_target_nodes
    assert 0.0 <= summary["accuracy_mean"] <= 1.0 and summary["training_seconds"] > 0


def test_metasnip_adapts_a_gpu_trained_meta_model_on_the_gpu(tiny_config, monkeypatch,
                                                               tmp_path):
    """MetaSNIP trains nothing: its learner is never moved, the tester moves the adapter."""
    nogate = tiny_config("method=metagater_nogate", "trainer.accelerator=gpu", "rounds=2",
                         "eval_every=0")
    run(nogate)
    seen = record_devices(monkeypatch)
    snip = tiny_config("method=metasnip", "trainer.accelerator=gpu",
                       f"method.meta_checkpoint={nogate.output_dir}/checkpoints/last.ckpt",
                       f"output_dir={tmp_path / 'snip'}")
    assert 0.0 <= run(snip)["accuracy_mean"] <= 1.0
    assert seen == {"rounds": set(), "adaptation": {"cuda"}}


def test_deterministic_gpu_runs_repeat_bit_for_bit(tiny_config, tmp_path):
    configs = [tiny_config("trainer.accelerator=gpu", "deterministic=true", "rounds=3",
                           "eval_every=0", f"output_dir={tmp_path / str(i)}") for i in range(2)]
    for cfg in configs:
        run(cfg)
    first, second = (final_state(cfg) for cfg in configs)
    assert torch.equal(first["x_ag"], second["x_ag"]) and torch.equal(first["x"], second["x"])
    assert task_rows(configs[0]) == task_rows(configs[1])


def learner_on(cfg, device: torch.device):
    """A fresh learner at x_0 on ``device``, its federation moved there."""
    datamodule = build_datamodule(cfg)
    datamodule.to_device(device)
    return build_learner(cfg, datamodule, device), datamodule


def test_a_gpu_round_computes_the_cpu_round(tiny_config, monkeypatch):
    """Without gate noise (the one stream a CUDA generator draws differently) and without TF32,
    a round on the GPU is the CPU's round up to float32 rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cfg = tiny_config("method=fedavg")
    states = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        learner, datamodule = learner_on(cfg, device)
        learner.run_round(datamodule.train_clients)
        states.append(learner.x_ag.cpu())
    torch.testing.assert_close(states[1], states[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["metagater", "perfedavg_hf"])
def test_a_local_solve_never_waits_for_the_gpu(tiny_config, method):
    """Batches are drawn on the CPU and copied without a sync, losses summed on the device:
    a client's whole solve queues without one host sync."""
    cfg = tiny_config(f"method={method}", "method.local.steps=3")
    learner, datamodule = learner_on(cfg, torch.device("cuda"))
    x_md = learner.server_step.configure(learner.x, learner.x_ag, 1)
    client = datamodule.train_clients[0]
    learner.solve_client(x_md, client, round_index=1, position=0)  # cuDNN autotuning first
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = learner.solve_client(x_md, client, round_index=1, position=1)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert result.params.is_cuda and result.loss.is_cuda


def test_device_clock_waits_for_the_gpus_work():
    device = torch.device("cuda")
    start = device_clock(device)
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles, queued at once
    launched = time.perf_counter()
    finished = device_clock(device)
    assert finished - start > 0.03 and launched - start < 0.5 * (finished - start)
