"""The final per-task results on the loggers: ``final/*`` metrics and, on W&B, a table and a
histogram. (The files are the run folder's own:
:meth:`~mglightning.run.folder.RunFolder.write_results`.)"""

from __future__ import annotations

from lightning.pytorch.loggers import Logger, WandbLogger


def log_task_results(loggers: list[Logger], rows: list[dict], summary: dict, step: int) -> None:
    for logger in loggers:
        logger.log_metrics({f"final/{key}": value for key, value in summary.items()}, step=step)
        if isinstance(logger, WandbLogger):
            import wandb

            columns = list(rows[0])
            logger.log_table(
                "final/tasks",
                columns=columns,
                data=[[row.get(column) for column in columns] for row in rows],
            )
            logger.experiment.log(
                {"final/sparsity_histogram": wandb.Histogram([row["sparsity"] for row in rows])}
            )
