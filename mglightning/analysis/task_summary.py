"""Across-task summaries of the per-task rows (METHOD.md §4: the "sparsity diversity";
what gating does)."""

from __future__ import annotations

import math
import statistics

import torch

from mglightning.adaptation.gating_stats import (
    channel_set_from_text,
    mean_pairwise_jaccard_distance,
)
from mglightning.analysis.spread import sample_std

SPREAD_KEYS = ("accuracy", "accuracy_meta", "sparsity", "flops_skipped", "executed_macs",
               "learning_seconds")
# Rows of a gated network only (FastAdaptation.gating_measures): absent for ungated methods.
GATING_SPREAD_KEYS = ("accuracy_stage1", "accuracy_gates_on", "mask_flip_rate",
                      "gate_logit_abs_mean")
GATING_LAYER_MEAN_KEYS = ("always_off", "always_on", "input_dependent", "input_jaccard")


def _spread(values: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_mean": statistics.fmean(values),
        f"{prefix}_std": sample_std(values),
        f"{prefix}_min": min(values),
        f"{prefix}_max": max(values),
    }


def summarize_tasks(task_rows: list[dict]) -> dict[str, float]:
    """Mean, std, min and max over target tasks of accuracy, sparsity and learning time, and
    for a gated network the gating measures (:func:`summarize_gating`)."""
    summary = {"num_tasks": float(len(task_rows))}
    for key in (*SPREAD_KEYS, *(key for key in GATING_SPREAD_KEYS if key in task_rows[0])):
        summary |= _spread([row[key] for row in task_rows], key)
    return summary | summarize_gating(task_rows)


def summarize_gating(task_rows: list[dict]) -> dict[str, float]:
    """Over all gated channels together (no suffix) and per gated layer l (``_layer<l>``): the
    means over tasks of the channel shares and of the input-to-input Jaccard distance
    (``input_jaccard_mean``, ``input_jaccard_layer<l>_mean``) and the mean pairwise Jaccard
    distance between the tasks' majority-on channel sets (``task_jaccard``,
    ``task_jaccard_layer<l>``) — gating is task-specific only if it is well above the
    input-to-input one: over all channels, their ratio (``task_input_jaccard_ratio``). Per
    layer the Group Lasso groups the prox zeroed in the meta-model (``zeroed_groups_layer<l>``,
    one meta-model for all rows). Empty for an ungated network."""
    if "majority_on" not in task_rows[0]:
        return {}
    layers = [key.removeprefix("majority_on_layer") for key in task_rows[0]
              if key.startswith("majority_on_layer")]
    summary = {}
    for layer in layers:
        summary |= _channel_summary(task_rows, f"_layer{layer}")
        summary[f"zeroed_groups_layer{layer}"] = float(task_rows[0][f"zeroed_groups_layer{layer}"])
    summary |= _channel_summary(task_rows, "")
    summary["task_input_jaccard_ratio"] = _ratio(summary["task_jaccard"],
                                                 summary["input_jaccard_mean"])
    return summary


def _channel_summary(task_rows: list[dict], suffix: str) -> dict[str, float]:
    """The means over tasks of the :data:`GATING_LAYER_MEAN_KEYS` with ``suffix`` and the
    tasks' mean pairwise Jaccard distance (``task_jaccard<suffix>``)."""
    summary = {f"{measure}{suffix}_mean": statistics.fmean(row[f"{measure}{suffix}"]
                                                           for row in task_rows)
               for measure in GATING_LAYER_MEAN_KEYS}
    task_sets = torch.stack([channel_set_from_text(row[f"majority_on{suffix}"])
                             for row in task_rows])  # (tasks, C)
    return summary | {f"task_jaccard{suffix}": mean_pairwise_jaccard_distance(task_sets)}


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; infinite over 0 (NaN for 0 / 0 or a NaN either side)."""
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return numerator / denominator
