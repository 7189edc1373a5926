"""Reliability: client faults survived, non-finite states never saved, checkpoints
written whole, a killed run resumed to the same result, data errors in one line."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_cli
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mglightning.build import build_datamodule, build_learner
from mglightning.config import CONF_DIR
from mglightning.federated.faults import FaultInjection, InjectedFault
from mglightning.federated.learner import FederatedMetaLearner, TrainingFault
from mglightning.federated.server import AcceleratedProximalStep, ClientResult
from mglightning.federated.streams import round_generator
from mglightning.run.checkpoint import AtomicCheckpointIO, CheckpointError
from mglightning.train import run

REPO_ROOT = CONF_DIR.parent
TINY_CLI = ["dataset=synthetic", "logger=none", "progress_bar=false", "method.clients_per_round=4",
            "checkpoint.every_n_rounds=1", "trainer.accelerator=cpu"]
TIMING_KEYS = {"training_seconds", "rounds_per_second"}


# --- client faults --------------------------------------------------------------------------


class Node:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


def constant_solver(flat, start, client, generator, round_index) -> ClientResult:
    return ClientResult(client.node_id, start + client.node_id, 10, 0.5)


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_fault_injection_fails_only_the_chosen_nodes_at_the_chosen_rounds(kind):
    solver = FaultInjection(constant_solver, {3}, kind, {2})
    start = torch.zeros(4)
    for round_index, node_id in [(1, 3), (2, 0), (3, 3)]:
        assert torch.equal(solver(None, start, Node(node_id), None, round_index).params,
                           start + node_id)
    if kind == "raise":
        with pytest.raises(InjectedFault, match="node 3, round 2"):
            solver(None, start, Node(3), None, 2)
    else:
        assert solver(None, start, Node(3), None, 2).params.isnan().all()


def learner_pair(tiny_config):
    """The tiny federation and two learners with the same x_0: the twin runs fault-free."""
    cfg = tiny_config()
    datamodule = build_datamodule(cfg)
    learners = [build_learner(cfg, datamodule) for _ in range(2)]
    return datamodule.train_clients, *learners


def inject_faults(learner: FederatedMetaLearner, clients: set[int], kind: str,
                  rounds: set[int] | None) -> None:
    """Make nodes ``clients`` fail at ``rounds`` (None: all), as ``faults.inject`` does."""
    learner.local_solver = FaultInjection(learner.local_solver, clients, kind, rounds)


def record_results(learner: FederatedMetaLearner) -> list[ClientResult]:
    """Wrap the learner's solver so that every ClientResult it hands back is kept."""
    recorded, solver = [], learner.local_solver

    def recording(*args):
        recorded.append(solver(*args))
        return recorded[-1]

    learner.local_solver = recording
    return recorded


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_failing_clients_are_left_out_and_the_round_goes_on(tiny_config, kind):
    clients, learner, twin = learner_pair(tiny_config)
    chosen = learner.sample_clients(len(clients), round_generator(learner.seed, 1))
    failing = {clients[i].node_id for i in chosen[:2]}
    inject_faults(learner, failing, kind, rounds=None)
    twin_results = record_results(twin)
    x, x_ag = learner.x.clone(), learner.x_ag.clone()
    x_md = learner.server_step.configure(x, x_ag, 1)

    stats = learner.run_round(clients)
    twin.run_round(clients)

    kept = [result for result in twin_results if result.node_id not in failing]
    assert len(kept) == len(chosen) - 2 and stats["failed_clients"] == 2
    expected_x, expected_x_ag = learner.server_step.aggregate(x, x_ag, x_md, kept, 1)
    torch.testing.assert_close(learner.x_ag, expected_x_ag, rtol=0, atol=0)
    torch.testing.assert_close(learner.x, expected_x, rtol=0, atol=0)
    assert stats["train_loss"] == pytest.approx(float(sum(r.loss for r in kept)) / len(kept))
    assert not torch.equal(learner.x_ag, twin.x_ag)  # the faults did change the round


def test_rounds_where_every_client_fails_change_nothing_until_too_many_in_a_row(tiny_config):
    clients, learner, _ = learner_pair(tiny_config)
    learner.max_failed_rounds = 3
    inject_faults(learner, {client.node_id for client in clients}, "nan", rounds={2, 3, 5, 6, 7})
    learner.run_round(clients)
    after_round_1 = learner.x_ag.clone()
    for expected_in_a_row in (1, 2):
        assert learner.run_round(clients)["failed_clients"] == learner.clients_per_round
        assert int(learner.failed_rounds_in_a_row) == expected_in_a_row
        assert torch.equal(learner.x_ag, after_round_1)
    assert learner.run_round(clients)["failed_clients"] == 0  # round 4: the count restarts
    assert int(learner.failed_rounds_in_a_row) == 0 and not torch.equal(learner.x_ag,
                                                                        after_round_1)
    learner.run_round(clients)
    learner.run_round(clients)
    with pytest.raises(TrainingFault, match=r"every client failed in 3 rounds in a row "
                                            r"\(rounds 5-7.*non-finite parameters"):
        learner.run_round(clients)
    assert int(learner.rounds_done) == 6 and int(learner.failed_rounds_in_a_row) == 2


def read_checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=False)["state_dict"]


def test_cli_stops_after_failed_rounds_logs_them_and_keeps_the_last_good_checkpoint(
    tiny_config, tmp_path, capsys
):
    """Every training node fails from round 3 on: rounds 3 and 4 leave the state alone and
    are logged with their failures; round 5 is the third in a row: stop, exit 1, one line."""
    train_ids = [client.node_id for client in build_datamodule(tiny_config()).train_clients]
    with pytest.raises(SystemExit) as exited:
        train_cli([*TINY_CLI, "logger=csv", "rounds=8", "eval_every=0", f"output_root={tmp_path}",
                   f"faults.inject.clients={train_ids}", "faults.inject.rounds=[3,4,5,6,7,8]",
                   "faults.inject.kind=raise"])
    error = capsys.readouterr().err
    assert exited.value.code == 1, error
    last_line = error.strip().splitlines()[-1]
    assert last_line.startswith("error: every client failed in 3 rounds in a row (rounds 3-5")
    assert "InjectedFault" in last_line and "Traceback" not in error
    state = read_checkpoint(next(tmp_path.rglob("last.ckpt")))
    assert int(state["rounds_done"]) == 4 and int(state["failed_rounds_in_a_row"]) == 2
    assert torch.isfinite(state["x_ag"]).all()
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("train/failed_clients")]
    assert [float(row["train/failed_clients"]) for row in logged] == [0, 0, 4, 4]


def test_non_finite_server_state_stops_and_leaves_the_checkpoint_alone(tiny_config, monkeypatch):
    aggregate = AcceleratedProximalStep.aggregate

    def diverging(self, x, x_ag, x_md, results, round_index):
        new_x, new_x_ag = aggregate(self, x, x_ag, x_md, results, round_index)
        return (new_x, new_x_ag * float("inf")) if round_index == 3 else (new_x, new_x_ag)

    monkeypatch.setattr(AcceleratedProximalStep, "aggregate", diverging)
    cfg = tiny_config("rounds=5", "eval_every=0", "checkpoint.every_n_rounds=1")
    with pytest.raises(TrainingFault, match="server state became non-finite at round 3"):
        run(cfg)
    state = read_checkpoint(Path(cfg.output_dir) / "checkpoints" / "last.ckpt")
    assert int(state["rounds_done"]) == 2
    assert all(tensor.isfinite().all() for tensor in state.values() if tensor.is_floating_point())


# --- checkpoints ----------------------------------------------------------------------------


def checkpoint_with(value: float, epoch: int = 0) -> dict:
    return {"state_dict": {"x_ag": torch.full((1000,), value)}, "epoch": epoch}


def write_half_then_fail(self, checkpoint, path, storage_options=None):
    """A save killed half-way: the first half of the real bytes reach ``path``, then it dies."""
    torch.save(checkpoint, path)
    content = Path(path).read_bytes()
    Path(path).write_bytes(content[: len(content) // 2])
    raise OSError("simulated kill mid-write")


@pytest.mark.parametrize("checkpoint_io, survives", [(AtomicCheckpointIO(), True),
                                                     (TorchCheckpointIO(), False)])
def test_interrupted_checkpoint_write_keeps_the_previous_one(
    tmp_path, monkeypatch, checkpoint_io, survives
):
    """The atomic writer keeps last.ckpt loadable; the plain one, under the same fault, does not
    (so the fault is real)."""
    last = tmp_path / "last.ckpt"
    checkpoint_io.save_checkpoint(checkpoint_with(1.0), last)
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", write_half_then_fail)
    with pytest.raises(OSError, match="simulated kill"):
        checkpoint_io.save_checkpoint(checkpoint_with(2.0), last)
    if survives:
        assert torch.equal(torch.load(last)["state_dict"]["x_ag"], torch.full((1000,), 1.0))
        assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]
    else:
        with pytest.raises(Exception):  # noqa: B017 - whatever torch raises on a torn file
            torch.load(last)


def test_stale_garbage_in_the_temporary_file_is_overwritten(tmp_path):
    last = tmp_path / "last.ckpt"
    (tmp_path / ".last.ckpt.tmp").write_bytes(b"garbage from a killed write")
    AtomicCheckpointIO().save_checkpoint(checkpoint_with(3.0, epoch=3), last)
    assert torch.load(last)["epoch"] == 3 and not (tmp_path / ".last.ckpt.tmp").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_state_is_never_written_over_a_good_checkpoint(tmp_path, bad):
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint_with(1.0, epoch=1), last)
    with pytest.raises(CheckpointError, match=r"non-finite values in \['x_ag'\]"):
        AtomicCheckpointIO().save_checkpoint(checkpoint_with(bad, epoch=2), last)
    assert torch.load(last)["epoch"] == 1


# --- crash and resume -----------------------------------------------------------------------


def comparable(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key not in TIMING_KEYS
            and not key.startswith("learning_seconds")}


def test_run_crashed_mid_training_resumes_to_the_same_result(tiny_config, tmp_path, monkeypatch):
    """In-process stand-in for the SIGKILL test below: round 3 dies after the checkpoint of
    round 2 was written; the rerun resumes there and ends exactly as an unbroken run."""
    # Kept small (the curve is checked in the slow test): 3 rounds, 2 target nodes to adapt.
    settings = ["rounds=3", "eval_every=0", "checkpoint.every_n_rounds=1",
                "dataset.num_target_nodes=2"]
    straight = run(tiny_config(*settings, f"output_root={tmp_path / 'straight'}"))
    crashed_cfg = tiny_config(*settings, f"output_root={tmp_path / 'crashed'}")
    run_round = FederatedMetaLearner.run_round

    def crash_at_round_3(self, clients):
        if self.current_round() == 3:
            raise RuntimeError("simulated crash")
        return run_round(self, clients)

    with monkeypatch.context() as patch:
        patch.setattr(FederatedMetaLearner, "run_round", crash_at_round_3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(crashed_cfg)
    checkpoint = Path(crashed_cfg.output_dir) / "checkpoints" / "last.ckpt"
    assert int(read_checkpoint(checkpoint)["rounds_done"]) == 2
    resumed = run(crashed_cfg)
    assert comparable(resumed) == comparable(straight)


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_same_result(tiny_config, tmp_path):
    """A real process killed with SIGKILL mid-training; the same command then resumes from
    last.ckpt and ends with exactly the summary and curve of an uninterrupted run."""
    rounds = 10
    overrides = [*TINY_CLI, f"rounds={rounds}", "eval_every=5"]
    straight_cfg = tiny_config(*overrides, f"output_root={tmp_path / 'straight'}")
    killed_dir = Path(tiny_config(*overrides, f"output_root={tmp_path / 'killed'}").output_dir)
    checkpoint = killed_dir / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "mglightning.train", *overrides,
               f"output_root={tmp_path / 'killed'}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    rounds_at_kill = wait_for_checkpoint(checkpoint, process, min_rounds=3)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (killed_dir / "summary.json").exists()
    assert rounds_at_kill <= int(read_checkpoint(checkpoint)["rounds_done"]) < rounds

    resumed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    straight = run(straight_cfg)
    assert comparable(json.loads((killed_dir / "summary.json").read_text())) == \
        comparable(straight)
    assert curve_accuracies(killed_dir) == curve_accuracies(Path(straight_cfg.output_dir))


def wait_for_checkpoint(path: Path, process: subprocess.Popen, min_rounds: int) -> int:
    """Poll until the running process's last.ckpt holds ``min_rounds`` rounds (renamed into
    place whole, so reading it while the run goes on is safe)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        if path.exists():
            rounds_done = int(read_checkpoint(path)["rounds_done"])
            if rounds_done >= min_rounds:
                return rounds_done
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {min_rounds} rounds")


def curve_accuracies(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "curve.csv") as handle:
        return [(row["round"], row["accuracy_mean"]) for row in csv.DictReader(handle)]
