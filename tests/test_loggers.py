"""W&B run organization, and the CSV fallback that keeps a run going when W&B cannot start."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from mglightning.build import build_logger
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.run.checkpoint import RunInterrupted
from mglightning.run.loggers import (
    LIGHTNING_INFO,
    drop_advertisements,
    flat_config,
    has_wandb_credentials,
    quiet_lightning,
    table_summary,
)
from mglightning.train import run

WANDB_CLI = str(Path(sys.executable).parent / "wandb")
UNREACHABLE = "http://127.0.0.1:9"  # discard port on loopback: refused at once, nothing leaves


@pytest.fixture
def isolated_wandb(tmp_path, monkeypatch):
    """No key, no netrc, no W&B settings from this machine, a server nothing listens on."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for variable in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    return monkeypatch


def logger_warnings(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "mglightning.run.loggers" and r.levelno >= logging.WARNING
    ]


def test_flat_config_holds_every_leaf_under_its_dotted_key(tiny_config):
    cfg = tiny_config()
    flat = flat_config(cfg)
    assert flat["method.local.lr"] == cfg.method.local.lr
    assert flat["dataset.partition.size_range"] == list(cfg.dataset.partition.size_range)
    container = OmegaConf.to_container(cfg, resolve=True)

    def leaves(node) -> int:
        return sum(map(leaves, node.values())) if isinstance(node, dict) else 1

    assert len(flat) == leaves(container)
    for key, value in flat.items():
        assert OmegaConf.select(cfg, key) == value, key


def test_table_summary_is_in_the_papers_units():
    summary = {
        "accuracy_mean": 0.8125,
        "accuracy_std": 0.05,
        "sparsity_mean": 0.25,
        "sparsity_std": 0.1,
        "sparsity_min": 0.0,
        "sparsity_max": 0.5,
        "flops_skipped_mean": 0.125,
        "training_seconds": 12.5,
        "learning_seconds_mean": 0.75,
    }
    assert table_summary(summary) == {
        "table/accuracy": 81.25,
        "table/accuracy_std": 5.0,
        "table/sparsity": 25.0,
        "table/sparsity_std": 10.0,
        "table/sparsity_min": 0.0,
        "table/sparsity_max": 50.0,
        "table/flops_skipped": 12.5,
        "table/training_seconds": 12.5,
        "table/learning_seconds": 0.75,
    }


def test_credentials_come_from_the_key_or_the_netrc_entry_of_the_host_in_use(
    isolated_wandb, tmp_path
):
    assert not has_wandb_credentials()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine 127.0.0.1 login user password secret\n")
    (home / ".netrc").chmod(0o600)
    assert has_wandb_credentials()
    isolated_wandb.delenv("WANDB_BASE_URL")  # the default host has no entry
    assert not has_wandb_credentials()
    isolated_wandb.setenv("WANDB_API_KEY", "k" * 40)
    assert has_wandb_credentials()


@pytest.mark.parametrize(
    "overrides, api_key",
    [
        (["logger.mode=online"], None),  # refused before wandb.init: it could prompt for a key
        (["logger.mode=sideways"], None),  # wandb.init rejects the mode
        (["logger.mode=online", "logger.init_timeout=1"], "k" * 40),  # server refuses, timeout
    ],
    ids=["online-without-key", "invalid-mode", "server-unreachable"],
)
def test_misconfigured_wandb_falls_back_to_csv_with_one_warning(
    overrides, api_key, isolated_wandb, tiny_config, caplog
):
    if api_key:
        isolated_wandb.setenv("WANDB_API_KEY", api_key)
    cfg = tiny_config("logger=wandb", *overrides)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        logger = build_logger(cfg)
    assert isinstance(logger, CSVLogger)
    assert len(logger_warnings(caplog)) == 1
    assert time.monotonic() - started < 60  # init_timeout=1: wandb gives up within seconds


def test_wandb_init_gets_no_anonymous_setting(isolated_wandb, tiny_config, monkeypatch):
    """W&B warns on every run that the ``anonymous`` Lightning always passes has no effect."""
    received = {}

    def recording_init(**kwargs):
        received.update(kwargs)
        raise RuntimeError("recorded")  # and the run falls back to CSV

    monkeypatch.setattr(wandb, "init", recording_init)
    build_logger(tiny_config("logger=wandb", "logger.mode=offline"))
    assert received["mode"] == "offline" and "anonymous" not in received


def test_a_run_with_wandb_unreachable_finishes_with_csv_metrics(
    isolated_wandb, tiny_config, caplog
):
    cfg = tiny_config("logger=wandb", "logger.mode=online", "rounds=2", "eval_every=0")
    with caplog.at_level(logging.WARNING):
        summary = run(cfg)
    assert summary["rounds"] == 2
    assert len(logger_warnings(caplog)) == 1
    with open(Path(cfg.output_dir) / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"train/round_seconds", "final/accuracy_mean"} <= set(rows[0])
    assert not (Path(cfg.output_dir) / "wandb").exists()


def leet_inspect(run_dir: Path, *options: str) -> str:
    result = subprocess.run(
        [WANDB_CLI, "leet", "inspect", *options, str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_offline_run_is_written_organized_and_read_back(isolated_wandb, tiny_config):
    cfg = tiny_config("logger=wandb", "logger.mode=offline", "rounds=2", "eval_every=0")
    summary = run(cfg)
    (run_dir,) = (Path(cfg.output_dir) / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("run-*.wandb"))
    state = json.loads(leet_inspect(run_dir, "--summary", "--json"))
    assert state["state"] == "finished" and state["project"] == cfg.logger.project
    assert state["summary"]["table/accuracy"] == pytest.approx(100 * summary["accuracy_mean"])
    assert state["summary"]["table/sparsity"] == pytest.approx(100 * summary["sparsity_mean"])
    assert state["summary"]["final/rounds"] == 2
    assert state["config"]["method.local.lr"] == cfg.method.local.lr
    assert state["config"]["method.regularizer.gamma"] == cfg.method.regularizer.gamma
    assert state["tags"] == [cfg.dataset.name, f"seed{cfg.seed}"]
    records = [json.loads(line) for line in leet_inspect(run_dir, "--json").splitlines()]
    (run_record,) = [record["run"] for record in records if record["type"] == "run"]
    assert run_record["run_group"] == cfg.experiment
    assert run_record["job_type"] == cfg.method.name
    assert run_record["display_name"] == cfg.run_name


def test_a_quiet_run_drops_lightning_advertisements_but_not_its_news(caplog):
    quiet_lightning()
    quiet_lightning()  # idempotent: one filter each
    with caplog.at_level(logging.INFO, logger=LIGHTNING_INFO.name):
        LIGHTNING_INFO.info("💡 Tip: try installing something")
        LIGHTNING_INFO.info("`Trainer.fit` stopped: `max_epochs=2` reached.")
    assert [record.getMessage() for record in caplog.records] == [
        "`Trainer.fit` stopped: `max_epochs=2` reached."]
    assert LIGHTNING_INFO.filters == [drop_advertisements]


def test_a_resumed_offline_run_is_one_wandb_run_an_attempt_that_sync_cannot_lose(
    isolated_wandb, tiny_config
):
    """Stopped in round 2 and resumed: two offline runs with ids of their own, the second
    named as an attempt of the first, together logging every round once or more, each round
    at its step (``trainer/global_step``), so that syncing both replaces nothing."""
    cfg = tiny_config("logger=wandb", "logger.mode=offline", "rounds=3", "eval_every=0")
    run_round = FederatedMetaLearner.run_round

    def stopped_in_round_2(self, clients):
        if self.current_round() == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return run_round(self, clients)

    with isolated_wandb.context() as patch:
        patch.setattr(FederatedMetaLearner, "run_round", stopped_in_round_2)
        with pytest.raises(RunInterrupted):
            run(cfg)
    wandb.finish()  # as the stopped process's end would
    run(cfg)
    runs = {}
    for run_dir in sorted((Path(cfg.output_dir) / "wandb").glob("offline-run-*")):
        records = [json.loads(line) for line in leet_inspect(run_dir, "--json").splitlines()]
        (run_record,) = [record["run"] for record in records if record["type"] == "run"]
        rounds = [record["history"]["item"]["trainer/global_step"] for record in records
                  if "train/round_seconds" in record.get("history", {}).get("item", {})]
        runs[run_record["run_id"]] = (run_record["display_name"], rounds)
    first_id, second_id = sorted(runs)
    assert second_id == first_id[:-1] + "2"
    assert runs[first_id][0] == cfg.run_name
    assert runs[second_id][0] == f"{cfg.run_name}-attempt2"
    assert runs[first_id][1] == [1, 2] and runs[second_id][1] == [3]  # resumed after round 2
