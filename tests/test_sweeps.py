"""Every sweep of conf/sweep/ sweeps real config keys, and a configuration sampled from it trains
through the very command line a W&B agent would run."""

from __future__ import annotations

import itertools
import math
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from wandb.sdk.launch.sweeps import utils as wandb_sweep_utils

from mglightning import sweep
from mglightning.analysis import finished_runs
from mglightning.build import compose_config
from mglightning.run.identity import fingerprint
from mglightning.run.io import write_json

SWEEPS = sorted(path.stem for path in sweep.SWEEP_DIR.glob("*.yaml"))
MAIN_SWEEP = "metagater_fmnist"  # `make sweep`'s default: sweeps every tuned key
TUNED_KEYS = {  # the hyperparameters the sweeps exist for
    "method.server.prox_lambda",
    "method.server.beta",
    "method.local.lr",
    "method.adaptation.lr",
    "method.regularizer.gamma",
    "method.local.steps",
    "method.clients_per_round",
}
# Keeps a sampled run to seconds: these replace the sampled values of the same keys.
TINY_VALUES = {"dataset": "synthetic", "rounds": 2, "method.clients_per_round": 4}
TINY_EXTRAS = [
    "logger=none",
    "eval_every=0",
    "progress_bar=false",
    "checkpoint.every_n_rounds=2",
    "hydra.output_subdir=.hydra",  # the composed config lands in the run folder
]


def sample(spec: dict, rng: random.Random):
    """One draw from a W&B parameter spec, as the sweep controller would make."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    low, high = spec["min"], spec["max"]
    distribution = spec.get("distribution", "uniform")
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if distribution == "int_uniform":
        return rng.randint(low, high)
    assert distribution == "uniform", distribution
    return rng.uniform(low, high)


def agent_command(definition: dict, values: dict) -> list[str]:
    """The W&B agent's substitution of its macros (wandb/wandb_agent.py), ``python`` being
    this interpreter: ``${env}`` → /usr/bin/env, ``${args_no_hyphens}`` → key=value."""
    command = wandb_sweep_utils.create_sweep_command([str(c) for c in definition["command"]])
    macros = wandb_sweep_utils.create_sweep_command_args(
        {"args": {key: {"value": value} for key, value in values.items()}}
    )
    macros |= {"env": ["/usr/bin/env"], "interpreter": [sys.executable]}
    expanded = []
    for item in command:
        if sweep.is_macro(item):
            expanded += macros.get(item[2:-1]) or []
        else:
            expanded.append(item)
    return expanded


def compose_with(overrides: list[str]) -> DictConfig:
    return compose_config(overrides)


def test_the_sweeps_cover_the_hyperparameters_that_matter():
    swept = {key for name in SWEEPS for key in sweep.load_sweep(name)["parameters"]}
    assert TUNED_KEYS <= swept


@pytest.mark.parametrize("name", SWEEPS)
def test_every_swept_key_exists_and_takes_its_values(name):
    definition = sweep.load_sweep(name)
    assert definition["name"] == name and "${args_no_hyphens}" in definition["command"]
    assert definition["metric"]["name"].startswith("table/")
    fixed = [f"{key}={spec['value']}" for key, spec in definition["parameters"].items()
             if "value" in spec]  # e.g. the method whose keys the others set
    defaults = compose_with(fixed)
    for key, spec in definition["parameters"].items():
        assert OmegaConf.select(defaults, key, default=KeyError) is not KeyError, key
        for value in sweep.grid_values(spec):
            cfg = compose_with([*fixed, f"{key}={value}"])
            chosen = OmegaConf.select(cfg, key)
            assert (chosen.name if isinstance(chosen, DictConfig) else chosen) == value, key


@pytest.mark.parametrize(
    "name",
    [name if name == MAIN_SWEEP else pytest.param(name, marks=pytest.mark.slow) for name in SWEEPS],
)
def test_a_sampled_configuration_trains_through_the_agents_command(name, tmp_path):
    """A subprocess of ~10 s each: the main sweep's by default, the others with ``make
    test-all``."""
    definition = sweep.load_sweep(name)
    rng = random.Random(0)
    values = {key: sample(spec, rng) for key, spec in definition["parameters"].items()}
    values |= {key: value for key, value in TINY_VALUES.items() if key in values}
    extras = [f"{key}={value}" for key, value in TINY_VALUES.items() if key not in values]
    command = agent_command(definition, values) + extras + TINY_EXTRAS
    environment = os.environ | {"WANDB_RUN_ID": "sampled0", "WANDB_MODE": "disabled"}
    finished = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    (run_dir,) = [path.parent for path in tmp_path.rglob("summary.json")]
    assert run_dir.name == "sampled0"  # run_name from the agent's WANDB_RUN_ID
    cfg = OmegaConf.load(run_dir / "config.yaml")
    for key, value in values.items():
        chosen = OmegaConf.select(cfg, key)
        chosen = chosen.name if isinstance(chosen, DictConfig) else chosen
        assert chosen == (pytest.approx(value) if isinstance(value, float) else value), key


@pytest.fixture
def without_wandb_key(tmp_path, monkeypatch):
    """Offline, with finished runs (none yet) read from ``tmp_path/runs``."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv(finished_runs.RUNS_DIR_VARIABLE, str(tmp_path / "runs"))
    return monkeypatch


def offline_multirun(name: str, capsys) -> tuple[str, list]:
    """What ``make sweep SWEEP=<name>`` prints offline, and its command's parsed overrides."""
    sweep.main([name])
    printed = capsys.readouterr().out
    words = shlex.split(printed.strip().splitlines()[-1])
    assert words[:4] == [sys.executable, "-m", "mglightning.train", "-m"]  # the project's python
    return printed, OverridesParser.create().parse_overrides(words[4:])


@pytest.mark.parametrize("name", SWEEPS)
def test_offline_prints_the_same_space_as_a_hydra_multirun(name, without_wandb_key, capsys):
    printed, parsed = offline_multirun(name, capsys)
    assert "offline (no W&B API key)" in printed
    assert f"multirun of {sweep.count_runs(sweep.load_sweep(name))} points" in printed
    overrides = {override.key_or_group: override for override in parsed}
    for key, spec in sweep.load_sweep(name)["parameters"].items():
        override = overrides[key]
        swept = override.is_sweep_override()
        tried = list(override.sweep_iterator()) if swept else [override.value()]
        assert tried == sweep.grid_values(spec), key
        if spec.get("distribution") in ("uniform", "log_uniform_values"):
            low, middle, high = tried
            assert (low, high) == (spec["min"], spec["max"])
            geometric = spec["distribution"] == "log_uniform_values"
            expected_middle = math.sqrt(low * high) if geometric else (low + high) / 2
            assert middle == pytest.approx(expected_middle, rel=5e-3)
    assert "run_name" not in overrides  # the default: named by the point's config
    method = sweep.compose_point(sweep.first_point(sweep.load_sweep(name))).method.name
    assert f"no finished fmnist-cnn4-{method} run" in printed and "run one point first" in printed


def point_dirs(parsed: list, points: int = 6) -> list[str]:
    """The output folders of up to ``points`` points of the multirun, evenly spread, each
    composed as the multirun's job composes it."""
    fixed = [f"{o.key_or_group}={o.value()}" for o in parsed if not o.is_sweep_override()]
    swept = [
        [f"{o.key_or_group}={value}" for value in o.sweep_iterator()]
        for o in parsed
        if o.is_sweep_override()
    ]
    grid = list(itertools.product(*swept))
    dirs = []
    for point in grid[:: max(1, len(grid) // points)]:
        cfg = compose_with([*point, *fixed])
        assert cfg.output_dir.endswith(f"-seed{cfg.seed}-{fingerprint(cfg)}")
        dirs.append(cfg.output_dir)
    return dirs


@pytest.mark.parametrize("name", SWEEPS)
def test_a_point_keeps_its_folder_in_every_multirun(name, without_wandb_key, capsys):
    first = point_dirs(offline_multirun(name, capsys)[1])
    second = point_dirs(offline_multirun(name, capsys)[1])
    assert first == second  # a finished point is found again, and skipped
    assert len(set(first)) == len(first)  # every point a folder of its own


def write_finished_run(run_dir: Path, dataset: str, seconds_per_round: float, learning: float):
    summary = {"rounds": 10, "training_seconds": 10 * seconds_per_round, "num_tasks": 20}
    write_json(run_dir / "summary.json", summary | {"learning_seconds_mean": learning / 20})
    config = {"seed": 0, "dataset": {"name": dataset}, "model": {"name": "cnn4"}}
    OmegaConf.save(config | {"method": {"name": "metagater"}}, run_dir / "config.yaml")


def test_offline_time_is_estimated_from_finished_runs_of_the_same_setup(
    without_wandb_key, tmp_path, capsys
):
    runs = tmp_path / "runs"
    write_finished_run(runs / "a", "fmnist", seconds_per_round=2.0, learning=1.0)
    write_finished_run(runs / "b", "fmnist", seconds_per_round=4.0, learning=3.0)
    write_finished_run(runs / "c", "fmnist", seconds_per_round=3.5, learning=2.0)
    write_finished_run(runs / "d", "synthetic", seconds_per_round=100.0, learning=50.0)  # ignored
    printed, _ = offline_multirun("gating_tradeoff_fmnist", capsys)
    point_seconds = 100 * 3.5 + 2.0  # rounds × median s/round + median adaptation
    points = sweep.count_runs(sweep.load_sweep("gating_tradeoff_fmnist"))
    assert f"{point_seconds:.0f} s a point" in printed and "medians of 3 finished" in printed
    assert f"about {sweep.duration(points * point_seconds)} in one process" in printed


def test_online_creates_the_sweep_and_runs_an_agent_with_this_python(
    without_wandb_key, monkeypatch
):
    without_wandb_key.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored after the test
    calls = {}

    def create_sweep(sweep, project):
        calls["sweep"] = (sweep, project)
        return "abc123"

    def run_agent(sweep_id, project, count):
        calls["agent"] = (sweep_id, project, count)

    monkeypatch.setattr(wandb, "sweep", create_sweep)
    monkeypatch.setattr(wandb, "agent", run_agent)
    sweep.main([MAIN_SWEEP, "--count", "2"])
    definition = sweep.load_sweep(MAIN_SWEEP)
    assert calls["sweep"] == (definition, definition["project"])
    assert calls["agent"] == ("abc123", definition["project"], 2)
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
