"""Hyperparameter sweeps from ``conf/sweep/NAME.yaml``: a W&B sweep and agent when online, the
same search space as a Hydra multirun command when offline.

    python -m mglightning.sweep metagater_fmnist [--count 20]

Offline, continuous distributions become a grid of ``GRID_POINTS`` values: both ends and the
middle (the geometric middle for log distributions), rounded to 3 significant digits.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

import yaml

from mglightning.loggers import has_wandb_credentials, wandb_mode

SWEEP_DIR = Path(__file__).resolve().parents[1] / "conf" / "sweep"
GRID_POINTS = 3
WANDB_RUN_ID_REFERENCE = "${oc.env:WANDB_RUN_ID}"
MULTIRUN_RUN_NAME = "${now:%Y%m%d-%H%M%S}-${hydra:job.num}"  # unique, never resumes another


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


def multirun_command(sweep: dict) -> list[str]:
    """``python -m <entry point> -m`` with the sweep command's fixed overrides and one
    ``key=v1,v2,...`` sweep override per parameter."""
    command = [str(item) for item in sweep["command"]]
    module_at = command.index("-m") + 1
    fixed = [
        item.replace(WANDB_RUN_ID_REFERENCE, MULTIRUN_RUN_NAME)
        for item in command[module_at + 1 :]
        if not is_macro(item)
    ]
    swept = [
        f"{key}={','.join(str(value) for value in grid_values(spec))}"
        for key, spec in sweep["parameters"].items()
    ]
    return ["python", "-m", command[module_at], "-m", *swept, *fixed]


def count_runs(sweep: dict) -> int:
    return math.prod(len(grid_values(spec)) for spec in sweep["parameters"].values())


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
        f"({count_runs(sweep)} runs; continuous ranges as {GRID_POINTS}-point grids):\n"
    )
    print(shlex.join(multirun_command(sweep)))


if __name__ == "__main__":
    main()
