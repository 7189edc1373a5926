"""Finished run folders under a results root: found, filtered, and grouped so that seeds of one
config are the only runs ever averaged together.

A run folder is any folder holding ``summary.json`` (with ``tasks.csv`` and ``curve.csv``
beside it), at any depth under the root: ``outputs/<experiment>/<run_name>/`` of the entry
point and ``results/<runs_group>/runs/...`` of the reproduce command both work.

A group is a run's identity without the seed (:mod:`mglightning.run.identity`): data set, model,
method, every hyperparameter the method reads, and the fingerprint of the data it loaded. Its
label names the method and the keys whose values differ among the selected runs of that data
set, model and method, e.g. ``metagater (method.server.beta=0.5)``; the data set and model go
in front when the selection holds several.
A run without a config file (made before run folders held one) is grouped by its folder name
without the seed, and never with a run that has one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from mglightning.config import SOURCE_CONF_DIR
from mglightning.run.folder import RunFolder
from mglightning.run.identity import DATA_KEY, flatten, identity

RUNS_DIR_VARIABLE = "MG_RUNS_DIR"
DEFAULT_RUNS_DIR = "outputs"
# A relative root is read from the source checkout, where `make train` writes; from an
# installed wheel (no checkout beside the package), from the working folder.
PROJECT_ROOT = SOURCE_CONF_DIR.parent if SOURCE_CONF_DIR.is_dir() else Path.cwd()
CONFIG_FILES = (RunFolder.CONFIG, ".hydra/config.yaml")  # ours; Hydra's in older folders
LABELS = ("experiment", "group", "method", "dataset", "model", "seed", "run")
LABEL_FILTERS = ("experiment", "dataset", "model", "method", "seed")
# The entry point's run name before runs held a config (legacy folders): labels from the name.
LEGACY_RUN_NAME = re.compile(
    r"^(?P<dataset>[^-]+)-(?P<model>[^-]+)-(?P<method>.+)-seed(?P<seed>\d+)$"
)
SEED_SUFFIX = re.compile(r"-seed\d+$")
# Keys that `make reproduce` sets from another run of the same seed, by the `reproduce.runs`
# entry of the run's own config (MetaSNIP adapts the w/o-gating meta-model of its seed at that
# seed's MetaGater sparsity, METHOD.md §5; a partner at equal MACs gets the width or keep
# fraction of that seed's MACs, §7.4): they vary with the seed inside one setup, not between
# setups.
SEED_DERIVED_KEYS = {
    "meta_from": ("method.meta_checkpoint",),
    "sparsity_from": ("method.adaptation.keep_fraction",),
    "macs_from": ("model.width", "method.adaptation.keep_fraction"),
}
ABSENT = "<absent>"  # the value of a key a run's config lacks, as identity.differing_keys shows it
HOW_TO_MAKE_RUNS = (
    "make some with `make train` (writes outputs/), or `make reproduce EXP=table1_fmnist` "
    f"(writes results/; then set {RUNS_DIR_VARIABLE}=results)"
)


class RunSelectionError(LookupError):
    """No run to show, said in one line: IPython prints this line instead of a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


@dataclass(frozen=True)
class Run:
    """A run folder, its labels, and its config's identity as dotted keys (None: no config)."""

    path: Path
    labels: dict
    config: dict | None


def runs_dir(default: str = DEFAULT_RUNS_DIR) -> Path:
    """The results root: ``$MG_RUNS_DIR``, else ``default``; relative to the project root."""
    return project_path(os.environ.get(RUNS_DIR_VARIABLE, default))


def project_path(path: str | Path) -> Path:
    """``path``, a relative one taken from the project root (a notebook's kernel runs in
    ``notebooks/``, the entry points in the project root)."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root``, in path order."""
    return sorted(path.parent for path in root.rglob(RunFolder.SUMMARY))


def seed_derived_keys(cfg) -> set[str]:
    """The :data:`SEED_DERIVED_KEYS` the run's ``reproduce.runs`` entry says were derived."""
    method = OmegaConf.select(cfg, "method.name")
    steps = OmegaConf.select(cfg, "method.local.steps")
    keys: set[str] = set()
    for spec in OmegaConf.select(cfg, "reproduce.runs", default=None) or []:
        if spec.get("method") == method and spec.get("local_steps") == steps:
            keys |= {key for field, derived in SEED_DERIVED_KEYS.items() if spec.get(field)
                     for key in derived}
    return keys


def read_run(run_dir: Path, root: Path) -> Run:
    """A run's labels (experiment, method, dataset, model, seed, run: its folder relative to
    the root) and identity, from its config; a run without one is labelled from its name."""
    relative = run_dir.relative_to(root)
    labels = dict.fromkeys(LABELS) | {
        "experiment": relative.parts[0] if len(relative.parts) > 1 else root.name,
        "method": run_dir.name,
        "run": str(relative),
    }
    config_path = next((run_dir / name for name in CONFIG_FILES if (run_dir / name).exists()), None)
    if config_path is None:
        if match := LEGACY_RUN_NAME.match(run_dir.name):
            labels |= match.groupdict() | {"seed": int(match["seed"])}
        return Run(run_dir, labels, None)
    cfg = OmegaConf.load(config_path)
    config = flatten(identity(cfg))
    if DATA_KEY in cfg:  # runs of one config on other data are not seeds of one group
        config[DATA_KEY] = cfg[DATA_KEY]
    for key in seed_derived_keys(cfg):
        config.pop(key, None)
    experiment = OmegaConf.select(cfg, "experiment")
    labels |= {
        "experiment": experiment if isinstance(experiment, str) else labels["experiment"],
        "method": config.get("method.name", labels["method"]),
        "dataset": config.get("dataset.name"),
        "model": config.get("model.name"),
        "seed": config.get("seed"),
    }
    return Run(run_dir, labels, config)


def run_value(run: Run, key: str):
    """A label (:data:`LABEL_FILTERS`) or a dotted config key of one run."""
    if key in LABEL_FILTERS:
        return run.labels[key]
    return (run.config or {}).get(key, ABSENT)


def matches(run: Run, filters: Mapping) -> bool:
    """Whether the run has every filter's value (a list or tuple: any of its values)."""
    for key, wanted in filters.items():
        accepted = wanted if isinstance(wanted, list | tuple | set | frozenset) else [wanted]
        if run_value(run, key) not in accepted:
            return False
    return True


def check_filter_keys(runs: list[Run], filters: Mapping, root: Path) -> None:
    known = {key for run in runs for key in run.config or {}}
    for key in filters:
        if key not in LABEL_FILTERS and key not in known:
            raise RunSelectionError(
                f"filter key {key!r} is in no run's config under {root}: use one of "
                f"{', '.join(LABEL_FILTERS)} or a dotted config key such as method.server.beta"
            )


def varying_keys(configs: list[dict]) -> list[str]:
    """The dotted keys whose value is not the same in every config (a key some lack counts)."""
    keys = dict.fromkeys(key for config in configs for key in config)
    return [
        key
        for key in keys
        if len({json.dumps(c.get(key, ABSENT), default=str, sort_keys=True) for c in configs}) > 1
    ]


def label_groups(runs: list[Run]) -> None:
    """Set every run's ``group`` label (see the module docstring)."""
    configured = [run for run in runs if run.config is not None]
    shown_in_front = [
        label
        for label in ("dataset", "model")
        if len({run.labels[label] for run in configured}) > 1
    ]
    setups: dict[tuple, list[Run]] = {}
    for run in configured:
        setup = tuple(run.labels[label] for label in ("dataset", "model", "method"))
        setups.setdefault(setup, []).append(run)
    for setup_runs in setups.values():
        keys = [key for key in varying_keys([run.config for run in setup_runs]) if key != "seed"]
        for run in setup_runs:
            name = "-".join(str(run.labels[label]) for label in [*shown_in_front, "method"])
            details = ", ".join(f"{key}={run.config.get(key, ABSENT)}" for key in keys)
            run.labels["group"] = f"{name} ({details})" if details else name
    for run in runs:
        if run.config is None:
            setup = SEED_SUFFIX.sub("", run.labels["run"])
            run.labels["group"] = f"{setup} (no {RunFolder.CONFIG})"


def select_runs(root: str | Path, filters: Mapping | None = None) -> list[tuple[Path, dict]]:
    """The runs under ``root`` that pass ``filters`` (labels of :data:`LABEL_FILTERS` or dotted
    config keys → a value or a list of values), each with its labels, grouped among
    themselves. Raises :class:`RunSelectionError` when there is none."""
    root = project_path(root)
    runs = [read_run(run_dir, root) for run_dir in find_runs(root)]
    if not runs:
        raise RunSelectionError(f"no runs were found under {root}: {HOW_TO_MAKE_RUNS}")
    filters = dict(filters or {})
    check_filter_keys(runs, filters, root)
    selected = [run for run in runs if matches(run, filters)]
    if not selected:
        raise RunSelectionError(
            f"none of the {len(runs)} runs under {root} passes the filters {filters}"
        )
    label_groups(selected)
    return [(run.path, run.labels) for run in selected]


def seed_list(seeds: pd.Series) -> str:
    """``"0, 1"``; ``?`` for a run whose seed is unknown (a folder without a config or the
    entry point's name)."""
    return ", ".join("?" if pd.isna(seed) else str(int(seed)) for seed in seeds)


def group_table(runs: list[tuple[Path, dict]]) -> pd.DataFrame:
    """Which runs each group holds: one row a group, with its seeds and run folders."""
    labels = pd.DataFrame([labels for _, labels in runs])
    grouped = labels.sort_values(["group", "seed", "run"]).groupby("group", sort=True)
    return pd.DataFrame({
        "seeds": grouped.size(),
        "seed": grouped["seed"].agg(seed_list),
        "runs": grouped["run"].agg(", ".join),
    })
