"""Finished runs as tables and figures, for the notebooks in ``notebooks/``.

A run folder is any folder holding ``summary.json`` (with ``tasks.csv`` and ``curve.csv``
beside it), at any depth under the root: ``outputs/<experiment>/<run_name>/`` of the entry
point and ``results/<experiment>/runs/...`` of the reproduce command both work. A run is
labelled from its ``config.yaml`` (written by every run; or Hydra's
``.hydra/config.yaml``) when one is there, else from the entry point's default run name
``<dataset>-<model>-<method>-seed<seed>``, else by its folder name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf

from mglightning.config import RUN_CONFIG

RUNS_DIR_VARIABLE = "MG_RUNS_DIR"
DEFAULT_RUNS_DIR = "outputs"
RUN_NAME_PATTERN = re.compile(
    r"^(?P<dataset>[^-]+)-(?P<model>[^-]+)-(?P<method>.+)-seed(?P<seed>\d+)$"
)
CONFIG_FILES = (RUN_CONFIG, ".hydra/config.yaml")
LABELS = ("experiment", "method", "dataset", "model", "seed", "local_steps", "run")
STATISTICS = ("mean", "std", "min", "max")
ROUND_TIMINGS = ("round_seconds", "local_seconds", "server_seconds")  # logged each round


def runs_dir(default: str = DEFAULT_RUNS_DIR) -> Path:
    """The results root: ``$MG_RUNS_DIR``, else ``default``."""
    return Path(os.environ.get(RUNS_DIR_VARIABLE, default))


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder under ``root``, in path order."""
    return sorted(path.parent for path in Path(root).rglob("summary.json"))


def run_labels(run_dir: Path, root: Path) -> dict:
    """experiment, method, dataset, model, seed, local steps and run (the folder relative to
    the root) of one run."""
    relative = run_dir.relative_to(root)
    labels = dict.fromkeys(LABELS) | {
        "experiment": relative.parts[0] if len(relative.parts) > 1 else root.name,
        "method": run_dir.name,
        "run": str(relative),
    }
    config = next((run_dir / name for name in CONFIG_FILES if (run_dir / name).exists()), None)
    if config is not None:
        cfg = OmegaConf.load(config)
        experiment = OmegaConf.select(cfg, "experiment")
        labels |= {
            "experiment": experiment if isinstance(experiment, str) else labels["experiment"],
            "method": OmegaConf.select(cfg, "method.name", default=labels["method"]),
            "dataset": OmegaConf.select(cfg, "dataset.name"),
            "model": OmegaConf.select(cfg, "model.name"),
            "seed": OmegaConf.select(cfg, "seed"),
            "local_steps": OmegaConf.select(cfg, "method.local.steps"),
        }
    elif match := RUN_NAME_PATTERN.match(run_dir.name):
        labels |= match.groupdict() | {"seed": int(match["seed"])}
    return labels


def labelled_runs(root: str | Path) -> list[tuple[Path, dict]]:
    """Every run with its labels; a method run with several numbers of local steps m is
    split into ``<method>-m<m>`` (the rows of Table 1)."""
    root = Path(root)
    runs = [(run_dir, run_labels(run_dir, root)) for run_dir in find_runs(root)]
    steps_by_method: dict[str, set] = {}
    for _, labels in runs:
        if labels["local_steps"] is not None:
            steps_by_method.setdefault(labels["method"], set()).add(labels["local_steps"])
    for _, labels in runs:
        if len(steps_by_method.get(labels["method"], ())) > 1 and labels["local_steps"]:
            labels["method"] = f"{labels['method']}-m{labels['local_steps']}"
    return runs


def _per_run_table(root: str | Path, file_name: str) -> pd.DataFrame:
    return runs_table(labelled_runs(root), file_name)


def runs_table(runs: list[tuple[Path, dict]], file_name: str) -> pd.DataFrame:
    """``file_name`` (a CSV) of every run that has one, with the run's labels in front."""
    frames = [
        pd.read_csv(run_dir / file_name).assign(**labels)
        for run_dir, labels in runs
        if (run_dir / file_name).exists()
    ]
    if not frames:
        return pd.DataFrame(columns=list(LABELS))
    table = pd.concat(frames, ignore_index=True)
    return table[[*LABELS, *(c for c in table.columns if c not in LABELS)]]


def load_summaries(root: str | Path) -> pd.DataFrame:
    """One row per run: its labels and ``summary.json``."""
    rows = [
        labels | json.loads((run_dir / "summary.json").read_text())
        for run_dir, labels in labelled_runs(root)
    ]
    return pd.DataFrame(rows, columns=None if rows else list(LABELS))


def load_tasks(root: str | Path) -> pd.DataFrame:
    """One row per target task of every run (``tasks.csv``)."""
    return _per_run_table(root, "tasks.csv")


def load_curves(root: str | Path) -> pd.DataFrame:
    """One row per evaluation round of every run (``curve.csv``)."""
    return _per_run_table(root, "curve.csv")


def gated_layer_columns(tasks: pd.DataFrame) -> list[str]:
    """The per-gated-layer sparsity columns, ``sparsity_layer<k>`` (SPEC §1)."""
    return sorted(c for c in tasks.columns if c.startswith("sparsity_layer"))


def sparsity_diversity(tasks: pd.DataFrame, column: str = "sparsity") -> pd.DataFrame:
    """Mean, std, min and max over target tasks (all seeds pooled) of per-task sparsity in %,
    one row per method: the "sparsity diversity" of SPEC §4. std is the population std, as
    in ``summarize_tasks``."""
    present = tasks.dropna(subset=[column])  # a layer's column is empty for runs without it
    grouped = (100 * present[column]).groupby(present["method"])
    table = grouped.agg(["mean", lambda v: v.std(ddof=0), "min", "max", "count"])
    table.columns = [*STATISTICS, "tasks"]
    return table


def sparse_methods(tasks: pd.DataFrame) -> list[str]:
    """Methods with some nonzero sparsity (a model without gates has none): the ones a
    sparsity histogram shows."""
    return sorted(tasks.loc[tasks["sparsity"] > 0, "method"].unique())


def plot_sparsity_histograms(tasks: pd.DataFrame, bins: int = 12) -> Figure:
    """Histograms of per-task sparsity (%), one panel for the gated layers together and one
    per gated layer, the sparse methods overlaid on shared bins."""
    columns = ["sparsity", *gated_layer_columns(tasks)]
    figure, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 3.5), squeeze=False)
    shown = tasks[tasks["method"].isin(sparse_methods(tasks))]
    for axis, column in zip(axes[0], columns, strict=True):
        values = 100 * shown[column].dropna()
        edges = np.histogram_bin_edges(values, bins) if len(values) else bins
        for method, group in shown.dropna(subset=[column]).groupby("method"):
            axis.hist(100 * group[column], bins=edges, alpha=0.6, label=method)
        axis.set_title("gated layers together" if column == "sparsity" else f"gated {column[9:]}")
        axis.set_xlabel("per-task sparsity (%)")
        axis.set_ylabel("target tasks")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_accuracy_vs_sparsity(tasks: pd.DataFrame) -> Figure:
    """Each target task as a point: adapted accuracy against sparsity, one colour a method."""
    figure, axis = plt.subplots(figsize=(5, 4))
    for method, group in tasks.groupby("method"):
        axis.scatter(100 * group["sparsity"], 100 * group["accuracy"], label=method, alpha=0.7)
    axis.set_xlabel("sparsity (%)")
    axis.set_ylabel("accuracy after adaptation (%)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def accuracy_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Target accuracy (%) against rounds per method: mean and sample std over seeds of the
    mean over target tasks (SPEC §6, Fig. 4; the std of the tables, empty for one seed)."""
    accuracy = (100 * curves["accuracy_mean"]).groupby([curves["method"], curves["round"]])
    table = accuracy.agg(["mean", "std", "count"])
    table.columns = ["accuracy", "accuracy_std", "seeds"]
    return table.reset_index()


def plot_accuracy_curves(curves: pd.DataFrame) -> Figure:
    """Paper Fig. 4: target accuracy against rounds, one line a method, ± one std band."""
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for method, group in accuracy_curves(curves).groupby("method"):
        axis.plot(group["round"], group["accuracy"], marker="o", label=method)
        spread = group["accuracy_std"].fillna(0.0)
        axis.fill_between(
            group["round"], group["accuracy"] - spread, group["accuracy"] + spread, alpha=0.2
        )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("communication round")
    axis.set_ylabel("target accuracy (%)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def round_seconds(curves: pd.DataFrame) -> pd.DataFrame:
    """Seconds per round over each interval between evaluations, from the training time the
    curve records at every evaluation round (the first interval starts at round 0)."""
    rows = []
    for labels, group in curves.sort_values("round").groupby(["method", "run"]):
        rounds = group["round"].diff().fillna(group["round"])
        seconds = group["training_seconds"].diff().fillna(group["training_seconds"])
        rows.append(
            pd.DataFrame(
                {
                    "method": labels[0],
                    "run": labels[1],
                    "round": group["round"].to_numpy(),
                    "seconds_per_round": (seconds / rounds).to_numpy(),
                }
            )
        )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def load_round_metrics(root: str | Path) -> pd.DataFrame:
    """Per-round timings of the runs logged with the CSV logger (``logger=csv``, or the W&B
    fallback): one row per run and round, with the ``ROUND_TIMINGS`` columns."""
    metrics = _per_run_table(root, "csv/metrics.csv")
    metrics.columns = [c.removeprefix("train/") for c in metrics.columns]
    if "round_seconds" in metrics:
        metrics = metrics.dropna(subset=["round_seconds"]).rename(columns={"step": "round"})
    columns = [*LABELS, "round", *ROUND_TIMINGS]
    return metrics.reindex(columns=columns).reset_index(drop=True)


def timing_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per method, mean over runs: training time (s), rounds per second and the learning
    time per target task (s): the time columns of the paper's tables."""
    columns = ["training_seconds", "rounds", "rounds_per_second", "learning_seconds_mean"]
    table = summaries.groupby("method")[columns].mean()
    return table.assign(runs=summaries.groupby("method").size())


def plot_round_timings(curves: pd.DataFrame) -> Figure:
    """Cumulative training seconds against rounds, one line a run."""
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for (method, run), group in curves.sort_values("round").groupby(["method", "run"]):
        axis.plot(group["round"], group["training_seconds"], marker=".", label=f"{method} ({run})")
    axis.set_xlabel("communication round")
    axis.set_ylabel("training time (s)")
    axis.legend(fontsize="x-small")
    figure.tight_layout()
    return figure


def wandb_summaries(project: str, entity: str | None = None) -> pd.DataFrame:
    """The finished runs of a W&B project (online only): labels and ``table/*`` summaries."""
    import wandb

    path = f"{entity}/{project}" if entity else project
    rows = []
    for run in wandb.Api().runs(path, filters={"state": "finished"}):
        rows.append(
            {
                "experiment": run.group,
                "method": run.job_type,
                "dataset": run.config.get("dataset.name"),
                "seed": run.config.get("seed"),
                "run": run.name,
                **{k: v for k, v in run.summary.items() if k.startswith("table/")},
            }
        )
    return pd.DataFrame(rows)
