"""Tables and figures of a reproduced experiment, from finished runs' files only.

Every number comes from a run's ``summary.json``, ``curve.csv`` or ``tasks.csv``; across
seeds we report mean ± sample standard deviation (SPEC §6: each figure is the mean over
target tasks, repeated over seeds).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no display backend, no global state

from mglightning.io import atomic_write_text, write_csv

METHOD_TITLES = {
    "fedavg": "FedAvg",
    "perfedavg_fo": "Per-FedAvg (FO)",
    "perfedavg_hf": "Per-FedAvg (HF)",
    "metagater_nogate": "MetaGater w/o gating",
    "metasnip": "MetaSNIP",
    "metagater": "MetaGater w/ gating",
}
# (column, summary.json key, scale for display, header)
COLUMNS = [
    ("accuracy", "accuracy_mean", 100.0, "target accuracy (%)"),
    ("sparsity", "sparsity_mean", 100.0, "sparsity (%)"),
    ("training_seconds", "training_seconds", 1.0, "training time (s)"),
    ("learning_seconds", "learning_seconds_mean", 1000.0, "learning time (ms/task)"),
    ("task_sparsity_spread", "sparsity_std", 100.0, "per-task sparsity std (%)"),
]
SPARSE_METHODS = ("metagater", "metasnip")


@dataclass(frozen=True)
class MethodRuns:
    """One row of a table: a method with m local updates, and its run folder per seed."""

    method: str
    local_steps: int
    run_dirs: tuple[Path, ...]

    @property
    def title(self) -> str:
        return METHOD_TITLES.get(self.method, self.method)

    @property
    def label(self) -> str:
        return f"{self.title}, m={self.local_steps}"

    def summaries(self) -> list[dict]:
        return [json.loads((run_dir / "summary.json").read_text()) for run_dir in self.run_dirs]


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table_rows(rows: list[MethodRuns]) -> list[dict]:
    """One dict per method: mean and std over seeds of every column (raw units)."""
    table = []
    for row in rows:
        summaries = row.summaries()
        entry = {"method": row.method, "local_steps": row.local_steps, "seeds": len(summaries)}
        for column, key, _, _ in COLUMNS:
            mean, std = _spread([float(summary[key]) for summary in summaries])
            entry |= {f"{column}_mean": mean, f"{column}_std": std}
        table.append(entry)
    return table


def markdown_table(table: list[dict]) -> str:
    header = ["Method", "local updates", "seeds"] + [title for _, _, _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [METHOD_TITLES.get(entry["method"], entry["method"])]
        cells += [str(entry["local_steps"]), str(entry["seeds"])]
        for column, _, scale, _ in COLUMNS:
            mean, std = scale * entry[f"{column}_mean"], scale * entry[f"{column}_std"]
            cells.append(f"{mean:.2f} ± {std:.2f}" if scale != 1.0 else f"{mean:.1f} ± {std:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_curves(rows: list[MethodRuns]) -> pd.DataFrame:
    """Target accuracy against rounds, mean and std over seeds, one block per method."""
    frames = []
    for row in rows:
        paths = [run_dir / "curve.csv" for run_dir in row.run_dirs]
        if not all(path.exists() for path in paths):
            continue  # MetaSNIP trains nothing of its own: no curve
        runs = pd.concat([pd.read_csv(path)[["round", "accuracy_mean"]] for path in paths])
        stats = runs.groupby("round")["accuracy_mean"].agg(["mean", "std"]).reset_index()
        frames.append(stats.assign(method=row.method, local_steps=row.local_steps))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_convergence(rows: list[MethodRuns], curves: pd.DataFrame, path: Path) -> None:
    """Paper Fig. 4: target accuracy against communication rounds, one line per method."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for row in rows:
        curve = curves[(curves.method == row.method) & (curves.local_steps == row.local_steps)]
        if curve.empty:
            continue
        style = "-" if row.local_steps == 1 else "--"
        mean, std = 100 * curve["mean"], 100 * curve["std"].fillna(0.0)
        (line,) = axes.plot(curve["round"], mean, style, marker="o", label=row.label)
        band = (mean - std, mean + std)
        axes.fill_between(curve["round"], *band, color=line.get_color(), alpha=0.15)
    axes.set(xlabel="communication round", ylabel="target accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, path)


def plot_sparsity_histogram(rows: list[MethodRuns], path: Path) -> bool:
    """Per-task sparsity after adaptation (all seeds pooled): the "sparsity diversity" of
    SPEC §4 for MetaGater, against MetaSNIP's. False when the experiment has neither."""
    sparse = [row for row in rows if row.method in SPARSE_METHODS]
    if not sparse:
        return False
    sparsity = {
        row.label: 100 * pd.concat([pd.read_csv(d / "tasks.csv") for d in row.run_dirs])["sparsity"]
        for row in sparse
    }
    pooled = pd.concat(list(sparsity.values()))
    low, high = max(0.0, pooled.min() - 2), min(100.0, pooled.max() + 2)
    bins = [low + (high - low) * i / 40 for i in range(41)]  # shared, fine enough to show spread
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for label, values in sparsity.items():
        axes.hist(values, bins=bins, alpha=0.6, label=label)
    axes.set(xlabel="per-task sparsity (%)", ylabel="target tasks (all seeds)")
    axes.legend(fontsize=8)
    _save(figure, path)
    return True


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_results(rows: list[MethodRuns], output_dir: Path) -> dict[str, Path]:
    """table.md, table.csv, curve.csv, convergence.png and sparsity_histogram.png."""
    table = table_rows(rows)
    paths = {"table_md": output_dir / "table.md", "table_csv": output_dir / "table.csv"}
    atomic_write_text(paths["table_md"], markdown_table(table))
    write_csv(paths["table_csv"], table)
    curves = mean_curves(rows)
    if not curves.empty:
        paths["curve_csv"] = output_dir / "curve.csv"
        write_csv(paths["curve_csv"], curves.to_dict("records"))
        paths["convergence"] = output_dir / "convergence.png"
        plot_convergence(rows, curves, paths["convergence"])
    histogram = output_dir / "sparsity_histogram.png"
    if plot_sparsity_histogram(rows, histogram):
        paths["sparsity_histogram"] = histogram
    return paths
