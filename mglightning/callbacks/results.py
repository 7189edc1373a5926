"""The final per-task results: a CSV in the run folder and, on W&B, a table and histogram."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from mglightning.adaptation.summary import summarize_tasks
from mglightning.callbacks.progress import log_metrics
from mglightning.io import write_csv


class TaskResultsWriter(L.Callback):
    """After ``trainer.test`` of a FastAdaptation module: ``tasks.csv`` and ``final/*`` metrics."""

    def __init__(self, output_dir: str | Path, step: int = 0) -> None:
        self.tasks_path = Path(output_dir) / "tasks.csv"
        self.step = step
        self.summary: dict[str, float] = {}

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        rows = pl_module.task_rows
        write_csv(self.tasks_path, rows)
        self.summary = summarize_tasks(rows)
        log_metrics(
            trainer, {f"final/{key}": value for key, value in self.summary.items()}, self.step
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                columns = list(rows[0])
                logger.log_table(
                    "final/tasks",
                    columns=columns,
                    data=[[row.get(c) for c in columns] for row in rows],
                )
                logger.experiment.log(
                    {"final/sparsity_histogram": wandb.Histogram([row["sparsity"] for row in rows])}
                )
