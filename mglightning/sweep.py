"""Hyperparameter sweeps from ``conf/sweep/NAME.yaml``: a W&B sweep and agent when online, the
same search space as a Hydra multirun command when offline.

    python -m mglightning.sweep metagater_fmnist [--count 20]

Offline, continuous distributions become a grid of ``GRID_POINTS`` values: both ends and the
middle (the geometric middle for log distributions), rounded to 3 significant digits. Each
point keeps the entry point's default run name, fingerprinted by its config
(:mod:`mglightning.run.identity`), so a point has the same folder in every multirun and a re-run
skips the finished ones. The time it would take is estimated from finished runs of the same
data set, model and method, never guessed.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from mglightning.analysis.finished_runs import RunSelectionError, runs_dir, select_runs
from mglightning.analysis.tables import load_summaries
from mglightning.build import compose_config
from mglightning.config import CONF_DIR
from mglightning.run.loggers import has_wandb_credentials, wandb_mode

SWEEP_DIR = CONF_DIR / "sweep"
GRID_POINTS = 3
WANDB_RUN_ID_REFERENCE = "${oc.env:WANDB_RUN_ID}"  # the agent's run name: offline, the default
SETUP_KEYS = {"dataset": "dataset.name", "model": "model.name", "method": "method.name"}


def load_sweep(name: str) -> dict:
    """The sweep definition as W&B reads it (YAML, macros such as ``${args_no_hyphens}`` kept)."""
    path = SWEEP_DIR / f"{name}.yaml"
    if not path.exists():
        choices = ", ".join(sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")))
        raise SystemExit(f"no sweep {name!r} in {SWEEP_DIR}: choose one of {choices}")
    return yaml.safe_load(path.read_text())


def is_macro(item: str) -> bool:
    """A whole-item W&B agent macro such as ``${env}`` or ``${args_no_hyphens}``."""
    return item.startswith("${") and item.endswith("}")


def grid_values(spec: dict) -> list:
    """The values a Hydra multirun tries for one W&B parameter spec."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    low, high = spec["min"], spec["max"]
    distribution = spec.get("distribution")
    if distribution is None:  # W&B infers it from the bounds' types
        distribution = (
            "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
        )
    if distribution == "int_uniform":
        return sorted({low, (low + high) // 2, high})
    if distribution == "uniform":
        points = [low + (high - low) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
    elif distribution == "log_uniform_values":
        ratio = math.log(high / low)
        points = [low * math.exp(ratio * i / (GRID_POINTS - 1)) for i in range(GRID_POINTS)]
    else:
        raise ValueError(f"distribution {distribution!r} has no offline grid: use values")
    return [float(f"{point:.3g}") for point in points]


def entry_point(sweep: dict) -> tuple[str, list[str]]:
    """The module the sweep command runs, and its fixed overrides: the command's items after
    the module, without the agent's macros and run name."""
    command = [str(item) for item in sweep["command"]]
    module_at = command.index("-m") + 1
    fixed = [
        item
        for item in command[module_at + 1 :]
        if not is_macro(item) and WANDB_RUN_ID_REFERENCE not in item
    ]
    return command[module_at], fixed


def multirun_command(sweep: dict) -> list[str]:
    """This interpreter's ``-m <entry point> -m`` with one ``key=v1,v2,...`` sweep override
    per parameter and the sweep command's fixed overrides."""
    module, fixed = entry_point(sweep)
    swept = [
        f"{key}={','.join(str(value) for value in grid_values(spec))}"
        for key, spec in sweep["parameters"].items()
    ]
    return [sys.executable, "-m", module, "-m", *swept, *fixed]


def first_point(sweep: dict) -> list[str]:
    """The overrides of the multirun's first point (a single run of the entry point)."""
    _, fixed = entry_point(sweep)
    return [f"{key}={grid_values(spec)[0]}" for key, spec in sweep["parameters"].items()] + fixed


def compose_point(overrides: list[str]) -> DictConfig:
    """A point's config, composed as the multirun composes each of its jobs."""
    return compose_config(overrides)


def count_runs(sweep: dict) -> int:
    return math.prod(len(grid_values(spec)) for spec in sweep["parameters"].values())


def duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def time_estimate(sweep: dict, root: Path) -> str:
    """The sweep's time in one process, from the finished runs under ``root`` of the first
    point's data set, model and method: per point, the median training seconds per round
    times the point's rounds, plus the median time adapting every target
    (learning seconds per task times tasks)."""
    point = compose_point(first_point(sweep))
    setup = {label: OmegaConf.select(point, key) for label, key in SETUP_KEYS.items()}
    name = "-".join(setup.values())
    try:
        summaries = load_summaries(select_runs(root, setup))
    except RunSelectionError:  # no run under the root, or none of this setup
        summaries = load_summaries([])
    timed = summaries[summaries["rounds"] > 0] if len(summaries) else summaries  # MetaSNIP: 0
    if timed.empty:
        command = shlex.join([sys.executable, "-m", entry_point(sweep)[0], *first_point(sweep)])
        return f"no finished {name} run under {root} to time; run one point first:\n  {command}"
    round_seconds = (timed["training_seconds"] / timed["rounds"]).median()
    learning = (timed["learning_seconds_mean"] * timed["num_tasks"]).median()
    point_seconds = point.rounds * round_seconds + learning
    return (
        f"about {duration(count_runs(sweep) * point_seconds)} in one process: "
        f"{point_seconds:.0f} s a point = {point.rounds} rounds x {round_seconds:.2f} s + "
        f"{learning:.1f} s adapting the targets (medians of {len(timed)} finished {name} runs "
        f"under {root}; points with more nodes a round or local steps take longer)"
    )


def start_wandb_sweep(sweep: dict, count: int | None) -> None:
    """Create the sweep on W&B and run an agent here; its runs call ``python`` from PATH, so
    this interpreter's folder goes first."""
    import wandb

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    sweep_id = wandb.sweep(sweep=sweep, project=sweep.get("project"))
    wandb.agent(sweep_id, project=sweep.get("project"), count=count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a file of conf/sweep/ without .yaml")
    parser.add_argument("--count", type=int, default=None, help="runs for this agent")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.name)
    if wandb_mode(None) == "online" and has_wandb_credentials():
        start_wandb_sweep(sweep, args.count)
        return
    reason = "no W&B API key" if not has_wandb_credentials() else f"W&B mode {wandb_mode(None)}"
    print(
        f"W&B is offline ({reason}): no sweep created. The same search space as a Hydra multirun "
        f"of {count_runs(sweep)} points (continuous ranges as {GRID_POINTS}-point grids), each "
        "in a folder named by its config: run again, it skips the finished points."
    )
    print(f"Time: {time_estimate(sweep, runs_dir())}\n")
    print(shlex.join(multirun_command(sweep)))


if __name__ == "__main__":
    main()
