"""Tables and figures of a reproduced experiment, from finished runs' files only.

Every number comes from a run's ``summary.json``, ``curve.csv`` or ``tasks.csv``; across
seeds we report mean ± sample standard deviation (METHOD.md §6: each figure is the mean over
target tasks, repeated over seeds). A method compared with another is compared per seed:
the seed fixes the split and the target nodes, so the difference of the two runs of
one seed leaves the luck of the split out, and the spread of those differences says whether
the mean difference is shown.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from mglightning.analysis.finished_runs import LABELS
from mglightning.analysis.spread import sample_std
from mglightning.analysis.tables import (
    accuracy_curves,
    gating_measures,
    load_summaries,
    overall_gating_measures,
    plot_accuracy_curves,
    plot_accuracy_vs_macs,
    plot_sparsity_histograms,
    runs_table,
    sparse_groups,
)
from mglightning.run.folder import RunFolder
from mglightning.run.io import atomic_write_text, write_csv

METHOD_TITLES = {
    "fedavg": "FedAvg",
    "perfedavg_fo": "Per-FedAvg (FO)",
    "perfedavg_hf": "Per-FedAvg (HF)",
    "metagater_nogate": "MetaGater w/o gating",
    "metasnip": "MetaSNIP",
    "metasnip_structured": "MetaSNIP (structured)",
    "metagater": "MetaGater w/ gating",
}
# (column, summary.json key, scale for display, header, decimals shown)
COLUMNS = [
    ("accuracy", "accuracy_mean", 100.0, "target accuracy (%)", 2),
    ("sparsity", "sparsity_mean", 100.0, "sparsity (%)", 2),
    ("macs_skipped", "flops_skipped_mean", 100.0, "MACs skipped (%)", 2),
    ("executed_macs", "executed_macs_mean", 1e-3, "executed MACs (k)", 1),
    ("training_seconds", "training_seconds", 1.0, "training time (s)", 1),
    ("learning_seconds", "learning_seconds_mean", 1000.0, "learning time (ms/task)", 2),
    ("task_sparsity_spread", "sparsity_std", 100.0, "per-task sparsity std (%)", 2),
]
# The column beside the final accuracy: the mean over a run's last evaluations (curve.csv).
LAST_ACCURACY = "accuracy_last"
SPARSITY_BINS = 40  # per-task sparsity varies little within a seed: fine bins show it
# The run config's keys that fix the split and the target nodes: paired runs must agree on them.
SPLIT_KEYS = ("seed", "dataset")


@dataclass(frozen=True)
class MethodRuns:
    """One row of a table: a method with m local updates, and its run folder per seed; a
    named row sets ``overrides`` beyond the method's defaults (a point of a front)."""

    method: str
    local_steps: int
    run_dirs: tuple[Path, ...]
    name: str | None = None
    overrides: tuple[str, ...] = ()

    @property
    def settings(self) -> str:
        """The row's overrides, ``method.`` dropped: what sets it apart in a front."""
        return ", ".join(item.removeprefix("method.") for item in self.overrides)

    @property
    def title(self) -> str:
        """The method's name in tables and figures, with the row's settings if any."""
        title = METHOD_TITLES.get(self.method, self.method)
        return f"{title} ({self.settings})" if self.settings else title

    @property
    def label_title(self) -> str:
        """The title in a table: the method's, with the row's name if it has one (a named row's
        settings are listed once under the table, :func:`settings_legend`)."""
        title = METHOD_TITLES.get(self.method, self.method)
        return f"{title} [{self.name}]" if self.name else title

    def summaries(self) -> list[dict]:
        return [RunFolder(run_dir).read_summary() for run_dir in self.run_dirs]

    def last_accuracies(self, count: int) -> list[float] | None:
        """Per seed, the mean target accuracy of the run's last ``count`` evaluations (all of
        them if it made fewer): a curve that swings between evaluations misleads in its last
        point alone. None when a run has no curve (MetaSNIP trains nothing)."""
        folders = [RunFolder(run_dir) for run_dir in self.run_dirs]
        if not all(folder.curve_path.exists() for folder in folders):
            return None
        return [float(pd.read_csv(folder.curve_path).sort_values("round")["accuracy_mean"]
                      .tail(count).mean()) for folder in folders]


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), sample_std(values)


def _seed_mean(runs: MethodRuns, key: str) -> float:
    """The mean over a row's seeds of a summary.json value."""
    return statistics.fmean(float(summary[key]) for summary in runs.summaries())


def verdict(mean: float, std: float, seeds: int) -> str:
    """A paired difference's verdict: "ahead" or "behind" when its mean lies beyond one
    standard deviation of the per-seed differences, else "not shown" (always with one seed)."""
    if seeds < 2 or abs(mean) <= std:
        return "not shown"
    return "ahead" if mean > 0 else "behind"


def split_of(run_dir: Path) -> dict:
    """What fixes a run's split and targets, from its config file."""
    config_path = RunFolder(run_dir).config_path
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} is missing: a paired difference needs the "
                                "run's config (make reproduce writes it)")
    cfg = OmegaConf.load(config_path)
    return {key: OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in SPLIT_KEYS}


def paired_differences(row: MethodRuns, reference: MethodRuns) -> list[float]:
    """Per seed, the row's target accuracy minus the reference's, runs of one seed on one
    split and the same targets (checked on their configs)."""
    if len(row.run_dirs) != len(reference.run_dirs):
        raise ValueError(f"{row.title} has {len(row.run_dirs)} seeds and {reference.title} "
                         f"{len(reference.run_dirs)}: pair runs of the same seeds")
    for run_dir, reference_dir in zip(row.run_dirs, reference.run_dirs, strict=True):
        if split_of(run_dir) != split_of(reference_dir):
            raise ValueError(f"{run_dir} and {reference_dir} differ in {', '.join(SPLIT_KEYS)}: "
                             "not the same split and targets, no paired difference")
    return [float(summary["accuracy_mean"]) - float(base["accuracy_mean"])
            for summary, base in zip(row.summaries(), reference.summaries(), strict=True)]


def reference_rows(rows: list[MethodRuns], compare_with: tuple[str, ...]) -> dict:
    """``{(method, m): row}``: each compared method's unnamed row (its defaults), per m."""
    references = {(row.method, row.local_steps): row for row in rows
                  if row.method in compare_with and row.name is None}
    for method in compare_with:
        if not any(found == method for found, _ in references):
            listed = sorted({row.method for row in rows if row.name is None})
            raise ValueError(f"compare_with names {method!r}, which has no unnamed "
                             f"row here: use one of {', '.join(listed)}")
    return references


def table_rows(rows: list[MethodRuns], compare_with: tuple[str, ...] = (),
               last_evaluations: int | None = None) -> list[dict]:
    """One dict per method: mean and std over seeds of every column (raw units); with
    ``last_evaluations``, of the mean accuracy of each run's last evaluations too
    (``accuracy_last_*``, None without a curve); for each method of ``compare_with``, the
    paired accuracy difference (final accuracies) against its row with the same number of
    local updates (``vs_<method>_mean``, ``_std``, ``_verdict``; None without one)."""
    references = reference_rows(rows, compare_with)
    table = []
    for row in rows:
        summaries = row.summaries()
        entry = {"method": row.method, "title": row.label_title, "settings": row.settings,
                 "local_steps": row.local_steps, "seeds": len(summaries)}
        for column, key, *_ in COLUMNS:
            mean, std = _spread([float(summary[key]) for summary in summaries])
            entry |= {f"{column}_mean": mean, f"{column}_std": std}
        if last_evaluations is not None:
            accuracies = row.last_accuracies(last_evaluations)
            mean, std = _spread(accuracies) if accuracies else (None, None)
            entry |= {f"{LAST_ACCURACY}_mean": mean, f"{LAST_ACCURACY}_std": std}
        for method in compare_with:
            reference = references.get((method, row.local_steps))
            mean = std = word = None
            if reference is not None and reference is not row:
                mean, std = _spread(paired_differences(row, reference))
                word = verdict(mean, std, len(summaries))
            entry |= {f"vs_{method}_mean": mean, f"vs_{method}_std": std,
                      f"vs_{method}_verdict": word}
        table.append(entry)
    return table


def markdown_table(table: list[dict], compare_with: tuple[str, ...] = (),
                   last_evaluations: int | None = None) -> str:
    """The table rows of :func:`table_rows` in markdown; with ``last_evaluations`` (as they
    were made with), the mean accuracy of the last evaluations beside the final one."""
    columns = [(column, scale, title, decimals) for column, _, scale, title, decimals in COLUMNS]
    if last_evaluations is not None:
        columns.insert(1, (LAST_ACCURACY, 100.0,
                           f"mean of the last {last_evaluations} evaluations (%)", 2))
    header = ["Method", "local updates", "seeds"] + [title for _, _, title, _ in columns]
    header += [f"Δ accuracy vs {METHOD_TITLES.get(method, method)} (points, paired)"
               for method in compare_with]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [entry["title"]]
        cells += [str(entry["local_steps"]), str(entry["seeds"])]
        for column, scale, _, decimals in columns:
            if entry[f"{column}_mean"] is None:
                cells.append("—")
                continue
            mean, std = scale * entry[f"{column}_mean"], scale * entry[f"{column}_std"]
            cells.append(f"{mean:.{decimals}f} ± {std:.{decimals}f}")
        for method in compare_with:
            mean, std = entry[f"vs_{method}_mean"], entry[f"vs_{method}_std"]
            cells.append("—" if mean is None else
                         f"{100 * mean:+.2f} ± {100 * std:.2f} {entry[f'vs_{method}_verdict']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def frame_markdown(frame: pd.DataFrame) -> str:
    """A data frame as a markdown table, numbers to 3 significant digits (a ``|`` in a name,
    as in "mean |gate logit|", escaped)."""
    def cell(value) -> str:
        return (f"{value:.3g}" if isinstance(value, float) else str(value)).replace("|", "\\|")

    cells = [[cell(value) for value in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(cell, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def settings_legend(rows: list[MethodRuns]) -> str:
    """Markdown: each named row's settings, one line a row (an override list is too long for a
    table cell)."""
    lines = [f"- [{row.name}]: {row.settings}" for row in rows if row.name and row.settings]
    return "\n".join(lines) + "\n" if lines else ""


def pairs_table(pairs: list[tuple[MethodRuns, MethodRuns]]) -> str:
    """Markdown: for each (row, against) pair, the paired accuracy difference with its verdict,
    beside both rows' executed MACs and MACs skipped, means over seeds (a pair compares points
    of equal cost, e.g. MetaGater against its partners at the MACs it executes; a narrower
    network skips none of its own)."""
    lines = ["| row | against | executed MACs (k): row / against | MACs skipped (%): row / "
             "against | Δ accuracy (points, paired) |", "|---|---|---|---|---|"]
    for row, against in pairs:
        mean, std = _spread(paired_differences(row, against))
        executed = [1e-3 * _seed_mean(runs, "executed_macs_mean") for runs in (row, against)]
        skipped = [100 * _seed_mean(runs, "flops_skipped_mean") for runs in (row, against)]
        lines.append(f"| {row.label_title} | {against.label_title} | {executed[0]:.1f} / "
                     f"{executed[1]:.1f} | {skipped[0]:.1f} / {skipped[1]:.1f} | "
                     f"{100 * mean:+.2f} ± {100 * std:.2f} "
                     f"{verdict(mean, std, len(row.run_dirs))} |")
    return "\n".join(lines) + "\n"


def row_runs(rows: list[MethodRuns]) -> list[tuple[Path, dict]]:
    """Every run folder of the rows, labelled for :mod:`mglightning.analysis.tables`: a row is a
    group, ``<method>-m<m>`` when the experiment runs the method with several m."""
    steps = {(row.method, row.local_steps) for row in rows}
    runs = []
    for row in rows:
        several = sum(method == row.method for method, _ in steps) > 1
        group = f"{row.method}-m{row.local_steps}" if several else row.method
        labels = dict.fromkeys(LABELS) | {
            "group": f"{group}-{row.name}" if row.name else group,
            "method": row.method,
        }
        runs += [(run_dir, labels | {"run": str(run_dir)}) for run_dir in row.run_dirs]
    return runs


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(rows: list[MethodRuns], output_dir: Path, compare_with: tuple[str, ...] = (),
                  heading: str = "", pairs: list[tuple[MethodRuns, MethodRuns]] = (),
                  last_evaluations: int | None = None) -> dict[str, Path]:
    """table.md (under ``heading``, e.g. which seeds; with the mean accuracy of each run's
    ``last_evaluations`` beside its final one, the ``pairs``' paired differences and, for
    gated rows, what the gates do: over all gated channels, then per gated layer), table.csv,
    accuracy_vs_macs.png (the accuracy–sparsity front), and from the runs' curves and tasks
    (through the notebooks' :mod:`mglightning.analysis.tables`): curve.csv, convergence.png
    and sparsity_histogram.png."""
    table = table_rows(rows, compare_with, last_evaluations)
    paths = {"table_md": output_dir / "table.md", "table_csv": output_dir / "table.csv",
             "front": output_dir / "accuracy_vs_macs.png"}
    runs = row_runs(rows)
    text = (f"{heading}\n\n" if heading else "") + markdown_table(table, compare_with,
                                                                  last_evaluations)
    legend = settings_legend(rows)
    if legend:
        text += "\nThe named rows' settings (beyond the method's defaults):\n\n" + legend
    if pairs:
        text += "\nPaired per seed, at equal cost:\n\n" + pairs_table(list(pairs))
    summaries = load_summaries(runs)
    overall, gating = overall_gating_measures(summaries), gating_measures(summaries)
    if not overall.empty:
        text += ("\nWhat the gates do on the target tasks, over all gated channels (mean over "
                 "seeds; % unless said):\n\n" + frame_markdown(overall.reset_index()))
    if not gating.empty:
        text += ("\nWhat the gates do on the target tasks, per gated layer (mean over seeds; % "
                 "unless said):\n\n" + frame_markdown(gating.reset_index()))
    atomic_write_text(paths["table_md"], text)
    write_csv(paths["table_csv"], table)
    _save(plot_accuracy_vs_macs(pd.DataFrame(table)), paths["front"])
    curves = runs_table(runs, RunFolder.CURVE)  # MetaSNIP trains nothing: no curve
    if not curves.empty:
        paths["curve_csv"] = output_dir / "curve.csv"
        curve = accuracy_curves(curves).rename(columns={"group": "method"})  # a row's label
        write_csv(paths["curve_csv"], curve.to_dict("records"))
        paths["convergence"] = output_dir / "convergence.png"
        _save(plot_accuracy_curves(curves), paths["convergence"])
    tasks = runs_table(runs, RunFolder.TASKS)
    if not tasks.empty and sparse_groups(tasks):
        paths["sparsity_histogram"] = output_dir / "sparsity_histogram.png"
        _save(plot_sparsity_histograms(tasks, bins=SPARSITY_BINS), paths["sparsity_histogram"])
    return paths
