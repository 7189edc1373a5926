"""Rounds split across processes (``trainer.devices=2``, gloo on this CPU): the same results,
bit for bit, as one process, also for a run checkpointed on one device and resumed on two.
Lightning relaunches the command line for the second process, so the runs are subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mglightning.config import CONF_DIR
from mglightning.federated.distributed import gather_results, own_positions, world
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.federated.server import ClientResult
from mglightning.run.checkpoint import RunInterrupted
from mglightning.train import run

REPO_ROOT = CONF_DIR.parent
SETTINGS = ["dataset=synthetic", "logger=none", "progress_bar=false", "rounds=6", "eval_every=3",
            "method.clients_per_round=5", "checkpoint.every_n_rounds=1"]


def cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mglightning.train", *SETTINGS, *overrides],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # each rank one thread, as the 1-process run
    )


@pytest.fixture
def one_thread():
    """The in-process run at the subprocess ranks' thread count (float sums depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def final_state(cfg) -> dict[str, torch.Tensor]:
    path = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    return torch.load(path, weights_only=False)["state_dict"]


def test_without_a_process_group_one_process_takes_every_position():
    assert world() == (0, 1)
    assert list(own_positions(4)) == [0, 1, 2, 3]
    results = [(2, ClientResult(7, torch.ones(3), 5, 0.1)), (0, ClientResult(9, torch.zeros(3),
                                                                               4, 0.2))]
    gathered = gather_results(None, results, [9, 8, 7], torch.zeros(3))
    assert [result.node_id for result in gathered] == [9, 7]  # position order, failures out


def test_two_processes_give_one_process_results_bit_for_bit(tiny_config, tmp_path, one_thread):
    """K = 5 clients over 2 ranks (3 + 2) and 4 target tasks (2 + 2)."""
    one = tiny_config(*SETTINGS, f"output_root={tmp_path / 'one'}")
    run(one)
    two = tiny_config(*SETTINGS, f"output_root={tmp_path / 'two'}")
    finished = cli(f"output_root={tmp_path / 'two'}", "trainer.devices=2", "logger=wandb")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr  # the second process, whose code is not the CLI's
    assert finished.stdout.count("target accuracy") == 1 + 2  # rank 0 alone prints
    for key in ("x", "x_ag", "rounds_done"):
        assert torch.equal(final_state(two)[key], final_state(one)[key]), key
    tasks = [(Path(cfg.output_dir) / "tasks.csv").read_text().splitlines() for cfg in (one, two)]
    assert len(tasks[1]) == 1 + one.dataset.num_target_nodes  # every task once
    columns = tasks[0][0].split(",")
    kept = [i for i, name in enumerate(columns) if name != "learning_seconds"]
    assert [[row.split(",")[i] for i in kept] for row in tasks[0]] == \
        [[row.split(",")[i] for i in kept] for row in tasks[1]]


def test_a_run_checkpointed_on_one_device_resumes_on_two_and_ends_equal(
    tiny_config, tmp_path, monkeypatch, one_thread
):
    straight = tiny_config(*SETTINGS, f"output_root={tmp_path / 'straight'}")
    run(straight)
    cfg = tiny_config(*SETTINGS, f"output_root={tmp_path / 'moved'}")
    run_round = FederatedMetaLearner.run_round

    def stopped_in_round_2(self, clients):
        if self.current_round() == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return run_round(self, clients)

    monkeypatch.setattr(FederatedMetaLearner, "run_round", stopped_in_round_2)
    with pytest.raises(RunInterrupted):
        run(cfg)
    assert int(final_state(cfg)["rounds_done"]) == 2
    resumed = cli(f"output_root={tmp_path / 'moved'}", "trainer.devices=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key in ("x", "x_ag", "rounds_done"):
        assert torch.equal(final_state(cfg)[key], final_state(straight)[key]), key
