"""Across-task summaries of the per-task rows (SPEC §4: the "sparsity diversity")."""

from __future__ import annotations

import statistics


def _spread(values: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_mean": statistics.fmean(values),
        f"{prefix}_std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        f"{prefix}_min": min(values),
        f"{prefix}_max": max(values),
    }


def summarize_tasks(task_rows: list[dict]) -> dict[str, float]:
    """Mean, std, min and max over target tasks of accuracy, sparsity and learning time."""
    summary = {"num_tasks": float(len(task_rows))}
    for key in ("accuracy", "accuracy_meta", "sparsity", "flops_skipped", "learning_seconds"):
        summary |= _spread([row[key] for row in task_rows], key)
    return summary
