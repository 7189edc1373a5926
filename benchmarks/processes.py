"""Round time with the clients split over 1 and 2 processes (``trainer.devices``), gloo on CPU.

Each count is a real training run of the bench's workload (``python -m mglightning.train``,
evaluation off), one torch thread per process; the runs alternate (1, 2, 2, 1) so that a
change in the machine's load falls on both. Rounds are read from the runs' CSV metrics
(``train/round_seconds``, ``train/gather_seconds``), the first ``WARMUP_ROUNDS`` dropped.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP_ROUNDS = 2
PROCESS_ORDER = (1, 2, 2, 1)


def train_round_metrics(overrides: list[str], devices: int, rounds: int,
                        output_root: Path) -> list[dict[str, float]]:
    """Per-round metrics of one training run on ``devices`` processes."""
    command = [sys.executable, "-m", "mglightning.train", *overrides, f"rounds={rounds}",
               "eval_every=0", "logger=csv", "progress_bar=false", "checkpoint.every_n_rounds=1000",
               f"trainer.devices={devices}", f"output_root={output_root}"]
    subprocess.run(command, check=True, capture_output=True, text=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    (metrics,) = output_root.rglob("metrics.csv")
    with open(metrics) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/round_seconds")]
    return [{key: float(row[f"train/{key}"]) for key in ("round_seconds", "gather_seconds")}
            for row in rows[WARMUP_ROUNDS:]]


def bench_processes(overrides: list[str], rounds: int = 12) -> dict:
    """Median round time on 1 and 2 processes, their ratio, and the gather's share of a
    2-process round (the gather waits for the slower rank, so the share includes that wait)."""
    rounds_by_count: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for run_index, devices in enumerate(PROCESS_ORDER):
        with tempfile.TemporaryDirectory() as scratch:
            rounds_by_count[devices] += train_round_metrics(
                overrides, devices, rounds, Path(scratch) / f"run{run_index}")
    one = statistics.median(row["round_seconds"] for row in rounds_by_count[1])
    two = statistics.median(row["round_seconds"] for row in rounds_by_count[2])
    return {
        "one_process_seconds": one,
        "two_process_seconds": two,
        "one_over_two": one / two,
        "gather_share_two": statistics.median(
            row["gather_seconds"] / row["round_seconds"] for row in rounds_by_count[2]),
        "rounds_timed": {str(count): len(rows) for count, rows in rounds_by_count.items()},
    }
