"""Finished runs as tables and figures, for the notebooks in ``notebooks/``.

The runs come from :func:`mglightning.analysis.finished_runs.select_runs`, each labelled with its
``group``: every table and figure keeps groups apart, and averages over the seeds of one
group only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mglightning.analysis.finished_runs import LABELS
from mglightning.analysis.spread import sample_std
from mglightning.run.folder import RunFolder

MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # one a group, beside its colour


def _legend_below(figure: Figure, fontsize: str = "small") -> None:
    """One legend for the whole figure, below its axes (the figure is made with
    ``layout="constrained"``): it never covers bars, points, ticks or axis labels."""
    entries = {}
    for axis in figure.axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        figure.legend(list(entries.values()), list(entries), loc="outside lower center",
                      fontsize=fontsize, frameon=False)

STATISTICS = ("mean", "std", "min", "max")
ROUND_TIMINGS = ("round_seconds", "local_seconds", "server_seconds")  # logged each round


def runs_table(runs: list[tuple[Path, dict]], file_name: str) -> pd.DataFrame:
    """``file_name`` (a CSV) of every run that has one, with the run's labels in front (joined
    as one frame: a wide file, such as the metrics of every logged key, read back in many
    pieces, would be fragmented by a column at a time)."""
    frames = []
    for run_dir, labels in runs:
        if (run_dir / file_name).exists():
            frame = pd.read_csv(run_dir / file_name).drop(columns=list(labels), errors="ignore")
            frames.append(pd.concat([pd.DataFrame(labels, index=frame.index), frame], axis=1))
    if not frames:
        return pd.DataFrame(columns=list(LABELS))
    table = pd.concat(frames, ignore_index=True)
    return table[[*LABELS, *(c for c in table.columns if c not in LABELS)]]


def load_summaries(runs: list[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per run: its labels and ``summary.json``."""
    rows = [labels | RunFolder(run_dir).read_summary() for run_dir, labels in runs]
    return pd.DataFrame(rows, columns=None if rows else list(LABELS))


def load_tasks(runs: list[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per target task of every run (``tasks.csv``)."""
    return runs_table(runs, RunFolder.TASKS)


def load_curves(runs: list[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per evaluation round of every run (``curve.csv``)."""
    return runs_table(runs, RunFolder.CURVE)


def gated_layer_columns(tasks: pd.DataFrame) -> list[str]:
    """The per-gated-layer sparsity columns, ``sparsity_layer<k>`` (METHOD.md §1)."""
    return sorted(c for c in tasks.columns if c.startswith("sparsity_layer"))


def sparsity_diversity(tasks: pd.DataFrame, column: str = "sparsity") -> pd.DataFrame:
    """Mean, std, min and max over target tasks (all seeds pooled) of per-task sparsity in %,
    one row per group: the "sparsity diversity" of METHOD.md §4. std is :func:`sample_std`, as in
    ``summarize_tasks``."""
    present = tasks.dropna(subset=[column])  # a layer's column is empty for runs without it
    grouped = (100 * present[column]).groupby(present["group"])
    table = grouped.agg(["mean", sample_std, "min", "max", "count"])
    table.columns = [*STATISTICS, "tasks"]
    return table


def sparse_groups(tasks: pd.DataFrame) -> list[str]:
    """Groups with some nonzero sparsity (a model without gates has none): the ones a
    sparsity histogram shows."""
    return sorted(tasks.loc[tasks["sparsity"] > 0, "group"].unique())


def plot_sparsity_histograms(tasks: pd.DataFrame, bins: int = 12) -> Figure:
    """Histograms of per-task sparsity (%), one panel for the gated layers together and one
    per gated layer, the sparse groups side by side in each of the shared bins (one colour a
    group in every panel)."""
    columns = ["sparsity", *gated_layer_columns(tasks)]
    figure, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 3.5), squeeze=False,
                                layout="constrained")
    colours = {label: f"C{index}" for index, label in enumerate(sparse_groups(tasks))}
    shown = tasks[tasks["group"].isin(colours)]
    for axis, column in zip(axes[0], columns, strict=True):
        values = 100 * shown[column].dropna()
        edges = np.histogram_bin_edges(values, bins) if len(values) else bins
        groups = dict(list(shown.dropna(subset=[column]).groupby("group")))
        if groups:
            axis.hist([100 * group[column] for group in groups.values()], bins=edges,
                      label=list(groups), color=[colours[label] for label in groups])
        axis.set_title("gated layers together" if column == "sparsity" else f"gated {column[9:]}")
        axis.set_xlabel("per-task sparsity (%)")
        axis.set_ylabel("target tasks")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_below(figure)
    return figure


def plot_accuracy_vs_sparsity(tasks: pd.DataFrame) -> Figure:
    """Each target task as a point: adapted accuracy against sparsity, one colour and marker a
    group, hollow so that points on top of each other stay visible without blending."""
    figure, axis = plt.subplots(figsize=(5, 4.5), layout="constrained")
    for index, (label, group) in enumerate(tasks.groupby("group")):
        axis.scatter(100 * group["sparsity"], 100 * group["accuracy"], label=label,
                     marker=MARKERS[index % len(MARKERS)], facecolors="none",
                     edgecolors=f"C{index}")
    axis.set_xlabel("sparsity (%)")
    axis.set_ylabel("accuracy after adaptation (%)")
    _legend_below(figure)
    return figure


def plot_accuracy_vs_macs(table: pd.DataFrame) -> Figure:
    """The accuracy–sparsity front: each row of a reproduced table (columns
    ``method``, ``settings``, ``accuracy_*`` and ``macs_skipped_*``, as fractions) as a point,
    target accuracy against the share of the dense network's MACs skipped, ± one std over
    seeds on both axes; one colour a method, each point labelled by its settings' values."""
    figure, axis = plt.subplots(figsize=(7, 5.5), layout="constrained")
    for method, rows in table.groupby("method", sort=False):
        axis.errorbar(100 * rows["macs_skipped_mean"], 100 * rows["accuracy_mean"],
                      xerr=100 * rows["macs_skipped_std"], yerr=100 * rows["accuracy_std"],
                      fmt="o", capsize=3, label=method)
        for row in rows.itertuples():
            if row.settings:  # "regularizer.gamma=0.002, gate_noise=none" → "0.002, none"
                values = ", ".join(item.split("=")[-1] for item in row.settings.split(", "))
                axis.annotate(values, (100 * row.macs_skipped_mean, 100 * row.accuracy_mean),
                              fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set_xlabel("MACs skipped (% of the dense network)")
    axis.set_ylabel("target accuracy (%)")
    _legend_below(figure)
    return figure


def accuracy_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Target accuracy (%) against rounds per group: mean and std (:func:`sample_std`, 0 for
    one seed) over its seeds of the mean over target tasks (METHOD.md §6, Fig. 4)."""
    accuracy = (100 * curves["accuracy_mean"]).groupby([curves["group"], curves["round"]])
    table = accuracy.agg(["mean", sample_std, "count"])
    table.columns = ["accuracy", "accuracy_std", "seeds"]
    return table.reset_index()


def plot_accuracy_curves(curves: pd.DataFrame) -> Figure:
    """Paper Fig. 4: target accuracy against rounds, one line a group, ± one std over seeds as
    error bars (bands of several groups would overlap and blend)."""
    figure, axis = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for index, (label, group) in enumerate(accuracy_curves(curves).groupby("group")):
        axis.errorbar(group["round"], group["accuracy"], yerr=group["accuracy_std"],
                      marker=MARKERS[index % len(MARKERS)], capsize=3, label=label)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("communication round")
    axis.set_ylabel("target accuracy (%)")
    _legend_below(figure)
    return figure


def round_seconds(curves: pd.DataFrame) -> pd.DataFrame:
    """Seconds per round over each interval between evaluations, from the training time the
    curve records at every evaluation round (the first interval starts at round 0)."""
    rows = []
    for labels, group in curves.sort_values("round").groupby(["group", "run"]):
        rounds = group["round"].diff().fillna(group["round"])
        seconds = group["training_seconds"].diff().fillna(group["training_seconds"])
        rows.append(
            pd.DataFrame(
                {
                    "group": labels[0],
                    "run": labels[1],
                    "round": group["round"].to_numpy(),
                    "seconds_per_round": (seconds / rounds).to_numpy(),
                }
            )
        )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def load_round_metrics(runs: list[tuple[Path, dict]]) -> pd.DataFrame:
    """Per-round timings of the runs logged with the CSV logger (``logger=csv``, or the W&B
    fallback): one row per run and round, with the ``ROUND_TIMINGS`` columns."""
    metrics = runs_table(runs, "csv/metrics.csv")
    metrics.columns = [c.removeprefix("train/") for c in metrics.columns]
    if "round_seconds" in metrics:
        metrics = metrics.dropna(subset=["round_seconds"]).rename(columns={"step": "round"})
    columns = [*LABELS, "round", *ROUND_TIMINGS]
    return metrics.reindex(columns=columns).reset_index(drop=True)


def timing_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per group, mean over its runs (seeds): training time (s), rounds per second and the
    learning time per target task (s): the time columns of the paper's tables."""
    columns = ["training_seconds", "rounds", "rounds_per_second", "learning_seconds_mean"]
    table = summaries.groupby("group")[columns].mean()
    return table.assign(runs=summaries.groupby("group").size())


# Accuracy (%) of a gated run's network at each point of the adaptation.
ADAPTATION_ACCURACIES = {
    "accuracy_meta_mean": "meta-model",
    "accuracy_stage1_mean": "after Stage I",
    "accuracy_mean": "adapted",
    "accuracy_gates_on_mean": "adapted, every gate on",
}
# What the gates do, per gated layer <l> (shares and distances in %).
GATING_MEASURES = {
    "flops_skipped_mean": "MACs skipped",
    "always_off_layer{l}_mean": "always off",
    "always_on_layer{l}_mean": "always on",
    "input_dependent_layer{l}_mean": "input-dependent",
    "input_jaccard_layer{l}_mean": "Jaccard between inputs",
    "task_jaccard_layer{l}": "Jaccard between tasks",
    "mask_flip_rate_mean": "Stage I flips",
    "gate_logit_abs_mean_mean": "mean |gate logit|",
    "zeroed_groups_layer{l}": "groups zeroed",
}
# What the gates do over all gated channels together: the goal's two conditions are the
# input-dependent share and the ratio of the Jaccard distance between tasks to that between
# inputs (the ratio, per seed, then averaged).
OVERALL_GATING_MEASURES = {
    "flops_skipped_mean": "MACs skipped",
    "always_off_mean": "always off",
    "always_on_mean": "always on",
    "input_dependent_mean": "input-dependent",
    "input_jaccard_mean": "Jaccard between inputs",
    "task_jaccard": "Jaccard between tasks",
}
UNSCALED = ("mean |gate logit|", "groups zeroed")


def _seed_means(summaries: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Per group of the runs that have every column (gated runs, for the gating measures):
    the mean over its seeds of ``columns`` (renamed; fractions in %), and the number of seeds."""
    if not all(column in summaries.columns for column in columns):
        return pd.DataFrame(columns=[*columns.values(), "seeds"])
    runs = summaries.dropna(subset=list(columns))
    table = runs.groupby("group")[list(columns)].mean().rename(columns=columns)
    scaled = [column for column in table.columns if column not in UNSCALED]
    table[scaled] *= 100
    return table.assign(seeds=runs.groupby("group").size())


def adaptation_accuracies(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per group of gated runs, target accuracy (%) of the meta-model, after Stage I, after
    Stage II and with every gate switched on: where the two stages and the gates earn or
    lose accuracy. Mean over the group's seeds."""
    return _seed_means(summaries, ADAPTATION_ACCURACIES)


def gating_measures(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per group of gated runs and gated layer, what the gates do on the target tasks, mean
    over seeds: MACs skipped; channels always off, always on, input-dependent; the Jaccard
    distance of channel sets between inputs of a task and between tasks (the gating is task-
    specific only if the second is well above the first); Stage I's mask flips; the mean
    |gate logit|; the Group Lasso groups the prox zeroed."""
    layers = sorted({int(c.removeprefix("task_jaccard_layer")) for c in summaries.columns
                     if c.startswith("task_jaccard_layer")})
    tables = [
        _seed_means(summaries, {key.format(l=layer): name
                                for key, name in GATING_MEASURES.items()}).assign(layer=layer)
        for layer in layers
    ]
    if not tables:
        return pd.DataFrame(columns=["layer", *GATING_MEASURES.values(), "seeds"])
    return pd.concat(tables).set_index("layer", append=True)


def overall_gating_measures(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per group of gated runs, what the gates do over all gated channels together, mean over
    seeds: MACs skipped; channels always off, always on, input-dependent; the Jaccard distance
    between inputs of a task and between tasks, and the second over the first (the ratio of
    the two means: a seed whose inputs never differ would make a mean of ratios infinite)."""
    table = _seed_means(summaries, OVERALL_GATING_MEASURES)
    between = table["Jaccard between tasks"] / table["Jaccard between inputs"]
    return table.assign(**{"tasks ÷ inputs": between}).iloc[:, [*range(6), 7, 6]]


def plot_round_timings(curves: pd.DataFrame) -> Figure:
    """Cumulative training seconds against rounds, one line a run."""
    runs = curves.groupby(["group", "run"]).ngroups
    figure, axis = plt.subplots(figsize=(5.5, 3.5 + 0.15 * runs), layout="constrained")  # legend
    for (label, run), group in curves.sort_values("round").groupby(["group", "run"]):
        axis.plot(group["round"], group["training_seconds"], marker=".", label=f"{label}: {run}")
    axis.set_xlabel("communication round")
    axis.set_ylabel("training time (s)")
    _legend_below(figure, fontsize="x-small")
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
