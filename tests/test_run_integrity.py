"""Runs you can trust: a run folder belongs to one config, a finished run is left
alone, a signal stops a run with a checkpoint and no results, evaluation is shown and not
done twice."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FINISHED_RUN, TINY, compose_config, train_cli

from mglightning.adaptation.module import FastAdaptation
from mglightning.config import CONF_DIR
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.run.checkpoint import RunInterrupted
from mglightning.run.identity import differing_keys, fingerprint
from mglightning.run.loggers import wandb_run_identity
from mglightning.train import run

REPO_ROOT = CONF_DIR.parent
TINY_CLI = ["dataset=synthetic", "logger=none", "progress_bar=false",
            "method.clients_per_round=4", "checkpoint.every_n_rounds=1"]
COMPARED = ("accuracy", "accuracy_meta", "sparsity", "flops_skipped", "executed_macs")
STOP_SETTINGS = ["rounds=3", "checkpoint.every_n_rounds=10"]
TARGETS = compose_config([], "unused").dataset.num_target_nodes  # tasks of an evaluation


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def run_folders(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.rglob("config.yaml"))


def task_values(folder: Path) -> list[tuple]:
    with open(folder / "tasks.csv") as handle:
        return [tuple(row[key] for key in COMPARED) for row in csv.DictReader(handle)]


# --- identity -------------------------------------------------------------------------------


def test_fingerprint_covers_results_not_where_or_how_a_run_logs(tiny_config):
    base = tiny_config()
    assert fingerprint(tiny_config("logger=csv", "progress_bar=true", "output_root=/elsewhere",
                                   "checkpoint.every_n_rounds=5")) == fingerprint(base)
    for changed in ("method.server.beta=0.5", "rounds=7", "seed=1", "model=cnn7",
                    "method.regularizer.gamma=0.5", "dataset.num_target_nodes=3"):
        assert fingerprint(tiny_config(changed)) != fingerprint(base), changed
    assert differing_keys(base, tiny_config("method.server.beta=0.5")) == [
        f"method.server.beta: {base.method.server.beta} -> 0.5"]
    assert base.run_name.endswith(f"-seed0-{fingerprint(base)}")


def test_changed_key_gets_its_own_folder_a_finished_run_is_left_alone(finished_run_copy,
                                                                      tmp_path, capsys):
    """The trap: a changed hyperparameter must never reuse (or rewrite) the old
    run; re-running a finished run touches nothing; a pinned folder of another config is
    refused in one line."""
    (old,) = run_folders(tmp_path)  # the finished run of the command below, under tmp_path
    assert old == Path(finished_run_copy.output_dir)
    before = snapshot(old)
    command = [*TINY, *FINISHED_RUN, f"output_root={tmp_path}"]

    train_cli([*command, "method.server.beta=0.5"])
    assert len(run_folders(tmp_path)) == 2
    assert snapshot(old) == before

    capsys.readouterr()
    train_cli(command)
    printed = capsys.readouterr().out
    assert "target accuracy" in printed and "nothing to do" in printed
    assert snapshot(old) == before

    if not torch.cuda.is_available():  # a finished run too: the setting is checked first
        with pytest.raises(SystemExit) as machine:
            train_cli([*command, "trainer.accelerator=gpu"])
        assert machine.value.code == 2 and capsys.readouterr().err.startswith("error: trainer.")

    with pytest.raises(SystemExit) as pinned:
        train_cli([*TINY, *FINISHED_RUN, "rounds=20", "method.server.beta=0.5",
                   f"output_dir={old}"])
    error = capsys.readouterr().err
    assert pinned.value.code == 2
    assert error.count("\n") == 1 and error.startswith("error: ")
    rounds = finished_run_copy.rounds
    assert "method.server.beta: 2.0 -> 0.5" in error
    assert f"rounds: {rounds} -> 20" in error
    assert snapshot(old) == before


@pytest.mark.parametrize("eval_every", [0, 1])
def test_reevaluate_adapts_a_finished_run_again_to_the_same_results(tiny_config, eval_every):
    """Its results are rewritten, equal; its checkpoint and curve, the record of its rounds,
    stay as they were."""
    settings = ["rounds=2", f"eval_every={eval_every}"]
    cfg = tiny_config(*settings)
    run(cfg)
    folder = Path(cfg.output_dir)
    stamp = (folder / "tasks.csv").stat().st_mtime_ns
    record = {name: (folder / name).read_bytes() for name in ("checkpoints/last.ckpt",
                                                              "curve.csv", "config.yaml")
              if (folder / name).exists()}
    values = task_values(folder)
    run(tiny_config(*settings, "reevaluate=true"))
    assert (folder / "tasks.csv").stat().st_mtime_ns != stamp
    assert task_values(folder) == values
    assert {name: (folder / name).read_bytes() for name in record} == record


def test_wandb_run_id_follows_the_run_folder_one_run_an_attempt(tiny_config, tmp_path,
                                                                 monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    cfg = tiny_config()
    wandb_dir = tmp_path / "wandb"
    first = wandb_run_identity(cfg, wandb_dir)
    assert first == wandb_run_identity(tiny_config("progress_bar=true"), wandb_dir)
    assert first != wandb_run_identity(tiny_config("seed=1"), wandb_dir)
    assert first["id"].endswith("-1") and first["name"] == cfg.run_name
    (wandb_dir / f"offline-run-20260101_000000-{first['id']}").mkdir(parents=True)
    second = wandb_run_identity(cfg, wandb_dir)
    assert second["id"] == first["id"][:-1] + "2" and second["config"] == {"wandb_attempt": 2}
    assert second["name"] == f"{cfg.run_name}-attempt2"
    monkeypatch.setenv("WANDB_RUN_ID", "from-agent")  # a sweep agent's id is W&B's to use
    assert wandb_run_identity(cfg, wandb_dir) == {}


# --- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_the_round_with_a_checkpoint_and_no_results(
    tiny_config, tmp_path, monkeypatch, signum
):
    """The signal arrives in round 4 (here sent by the process to itself); the round ends,
    is checkpointed, nothing final is written; the same config then resumes and ends exactly
    as an uninterrupted run, curve included."""
    settings = ["rounds=6", "eval_every=3"]
    straight_cfg = tiny_config(*settings, f"output_root={tmp_path / 'straight'}")
    straight = run(straight_cfg)
    cfg = tiny_config(*settings, f"output_root={tmp_path / 'stopped'}")
    run_round = FederatedMetaLearner.run_round

    def signalled_in_round_4(self, clients):
        if self.current_round() == 4:
            os.kill(os.getpid(), signum)
        return run_round(self, clients)

    with monkeypatch.context() as patch:
        patch.setattr(FederatedMetaLearner, "run_round", signalled_in_round_4)
        with pytest.raises(RunInterrupted) as stopped:
            run(cfg)
    assert stopped.value.exit_code == 128 + signum
    folder = Path(cfg.output_dir)
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(state["rounds_done"]) == 4
    assert not (folder / "summary.json").exists() and not (folder / "tasks.csv").exists()
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # restored

    resumed = run(cfg)
    for key in ("accuracy_mean", "accuracy_meta_mean", "sparsity_mean", "rounds"):
        assert resumed[key] == straight[key], key
    assert curve(folder) == curve(Path(straight_cfg.output_dir))


@dataclass(frozen=True)
class Stop:
    """Where the signals reach a run of ``rounds=3`` (the evaluations every ``eval_every``
    rounds, checkpoints every 10): ``signals`` of them, sent by the run to itself when target
    task ``task`` is adapted (counted over the run's evaluations, the final adaptation last),
    or else in round ``round`` after its first client. Then the checkpoint must hold
    ``rounds_saved`` rounds, and the stopped run must have adapted ``adapted`` tasks."""

    eval_every: int
    signum: int
    signals: int
    rounds_saved: int
    adapted: int
    task: int | None = None
    round: int | None = None


STOPS = {
    "evaluation, one signal": Stop(2, signal.SIGTERM, 1, 2, 1, task=0),
    "evaluation, two signals": Stop(2, signal.SIGINT, 2, 2, 1, task=0),
    "last round's evaluation": Stop(2, signal.SIGINT, 1, 3, 1, task=TARGETS),
    "final adaptation": Stop(0, signal.SIGINT, 2, 3, 1, task=0),
    "mid-round, two signals": Stop(2, signal.SIGTERM, 2, 1, 0, round=2),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, tuple[dict, list]]:
    """eval_every -> the summary and curve of a run of the stop tests' settings, not stopped."""
    runs = {}
    for eval_every in sorted({stop.eval_every for stop in STOPS.values()}):
        cfg = compose_config([*STOP_SETTINGS, f"eval_every={eval_every}"],
                             tmp_path_factory.mktemp("uninterrupted"))
        folder = Path(cfg.output_dir)
        runs[eval_every] = (run(cfg), curve(folder) if eval_every else [])
    return runs


def signalled(stop: Stop, patch: pytest.MonkeyPatch) -> list[int]:
    """Send ``stop``'s signals where it says; the task index of every adaptation after it."""
    adapted, adapt_and_evaluate = [], FastAdaptation.adapt_and_evaluate
    solve_client = FederatedMetaLearner.solve_client

    def send() -> None:
        for _ in range(stop.signals):
            os.kill(os.getpid(), stop.signum)

    def adapting(self, client, task_index, measure_gating=True):
        adapted.append(task_index)
        if len(adapted) - 1 == stop.task:
            send()
        return adapt_and_evaluate(self, client, task_index, measure_gating)

    def solving(self, x_md, client, round_index, position):
        if (round_index, position) == (stop.round, 1):
            send()
        return solve_client(self, x_md, client, round_index, position)

    patch.setattr(FastAdaptation, "adapt_and_evaluate", adapting)
    patch.setattr(FederatedMetaLearner, "solve_client", solving)
    return adapted


@pytest.mark.parametrize("where", list(STOPS))
def test_a_stop_anywhere_keeps_the_finished_rounds_and_resumes_to_the_same_results(
    where, tmp_path, monkeypatch, uninterrupted
):
    """One signal stops at the end of the round or before the next target task; a second
    stops at once. Either way: exit 130/143, the finished rounds checkpointed (an evaluation
    cut short is done when the run resumes), no results; then the same config resumes and
    ends exactly as an uninterrupted run, curve included."""
    stop = STOPS[where]
    cfg = compose_config([*STOP_SETTINGS, f"eval_every={stop.eval_every}"], tmp_path)
    with monkeypatch.context() as patch:
        adapted = signalled(stop, patch)
        with pytest.raises(RunInterrupted) as stopped:
            run(cfg)
    folder = Path(cfg.output_dir)
    assert stopped.value.exit_code == 128 + stop.signum
    assert f"after round {stop.rounds_saved}; checkpoint" in str(stopped.value)
    assert len(adapted) == (stop.task or 0) + stop.adapted
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["rounds_done"]) == stop.rounds_saved
    assert not (folder / "summary.json").exists() and not (folder / "tasks.csv").exists()
    assert signal.getsignal(stop.signum) in (signal.SIG_DFL, signal.default_int_handler)

    resumed = run(cfg)
    summary, straight_curve = uninterrupted[stop.eval_every]
    for key in ("accuracy_mean", "accuracy_meta_mean", "sparsity_mean", "rounds"):
        assert resumed[key] == summary[key], key
    assert (curve(folder) if stop.eval_every else []) == straight_curve


def test_two_ctrl_c_at_an_evaluation_end_the_command_with_130_in_one_line(tmp_path, capsys,
                                                                          monkeypatch):
    argv = [*TINY, f"output_root={tmp_path}", *STOP_SETTINGS, "eval_every=2"]
    with monkeypatch.context() as patch:
        signalled(STOPS["evaluation, two signals"], patch)
        with pytest.raises(SystemExit) as exited:
            train_cli(argv)
    error = capsys.readouterr().err
    assert exited.value.code == 130, error
    assert error.splitlines()[-1].startswith("interrupted: stopped by SIGINT after round 2; ")
    assert "Traceback" not in error and "KeyboardInterrupt" not in error
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    assert int(torch.load(checkpoint, weights_only=True)["state_dict"]["rounds_done"]) == 2


def curve(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "curve.csv") as handle:
        return [(row["round"], row["accuracy_mean"]) for row in csv.DictReader(handle)]


def test_sigterm_to_the_cli_exits_143_with_a_checkpoint_and_no_summary(tmp_path):
    """A real process: SIGTERM mid-training ends it with 143, not success, and the same
    command then resumes (the in-process test above checks what a resumed run ends with)."""
    command = [sys.executable, "-m", "mglightning.train", *TINY_CLI, "rounds=400",
               "eval_every=0", f"output_root={tmp_path}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = 120
    while not list(tmp_path.rglob("last.ckpt")):
        assert process.poll() is None, process.communicate()[1]
        deadline -= 0.05
        assert deadline > 0, "no checkpoint appeared"
        subprocess.run(["sleep", "0.05"])
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "interrupted: stopped by SIGTERM" in stderr
    (folder,) = run_folders(tmp_path)
    assert not (folder / "summary.json").exists()
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert 1 <= int(state["rounds_done"]) < 400


# --- evaluation -----------------------------------------------------------------------------


@pytest.fixture
def adapted_tasks(monkeypatch) -> list[int]:
    """The task index of every adaptation from here on, in order."""
    calls = []
    adapt_and_evaluate = FastAdaptation.adapt_and_evaluate

    def counted(self, client, task_index, measure_gating=True):
        calls.append(task_index)
        return adapt_and_evaluate(self, client, task_index, measure_gating)

    monkeypatch.setattr(FastAdaptation, "adapt_and_evaluate", counted)
    return calls


def test_evaluations_are_shown_and_the_last_round_is_not_adapted_twice(
    tiny_config, tmp_path, adapted_tasks, caplog
):
    calls = adapted_tasks
    with caplog.at_level("INFO", logger="mglightning.callbacks.evaluation"):
        evaluated = tiny_config("rounds=6", "eval_every=3", f"output_root={tmp_path / 'a'}")
        run(evaluated)
    tasks = evaluated.dataset.num_target_nodes
    assert len(calls) == 2 * tasks  # rounds 3 and 6; the final adaptation reuses round 6
    lines = [record.getMessage() for record in caplog.records
             if record.name == "mglightning.callbacks.evaluation"]
    assert [line.split(":")[0] for line in lines] == ["round 3", "round 6"]
    assert all("target accuracy" in line and "sparsity" in line for line in lines)

    calls.clear()
    tested = tiny_config("rounds=6", "eval_every=0", f"output_root={tmp_path / 'b'}")
    run(tested)
    assert len(calls) == tasks  # the final adaptation, through trainer.test
    assert task_values(Path(tested.output_dir)) == task_values(Path(evaluated.output_dir))
    summary = json.loads((Path(evaluated.output_dir) / "summary.json").read_text())
    assert summary["num_tasks"] == tasks
    # The gating measures are taken where they are reported: the final results, not round 3.
    with open(Path(evaluated.output_dir) / "curve.csv") as handle:
        curve_rows = list(csv.DictReader(handle))
    assert not curve_rows[0]["task_jaccard_layer3"] and curve_rows[1]["task_jaccard_layer3"]
    assert "task_jaccard_layer3" in summary


@pytest.mark.parametrize("rounds, curve_rounds", [(4, ["3", "4"]), (2, ["2"])])
def test_the_curve_ends_at_the_last_round_at_no_extra_cost(tiny_config, tmp_path, adapted_tasks,
                                                           rounds, curve_rounds):
    """eval_every=3: rounds 4 and 2 are not multiples, yet the curve ends with them; their
    evaluation is the final adaptation's (no task adapted twice), so the results equal those
    of a run without a curve."""
    calls = adapted_tasks
    evaluated = tiny_config(f"rounds={rounds}", "eval_every=3", f"output_root={tmp_path / 'a'}")
    run(evaluated)
    assert [row[0] for row in curve(Path(evaluated.output_dir))] == curve_rounds
    assert len(calls) == len(curve_rounds) * evaluated.dataset.num_target_nodes
    plain = tiny_config(f"rounds={rounds}", "eval_every=0", f"output_root={tmp_path / 'b'}")
    run(plain)
    assert task_values(Path(plain.output_dir)) == task_values(Path(evaluated.output_dir))
