"""Per-round timings to the loggers; progress bars over rounds and over target tasks."""

from __future__ import annotations

import lightning as L
from tqdm.auto import tqdm


def log_metrics(trainer: L.Trainer, metrics: dict[str, float], round_index: int) -> None:
    """Log with the round as the step: in manual optimization the global step stays 0."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=round_index)


def task_bar(total: int, description: str, show: bool) -> tqdm:
    """A transient bar over target tasks, for an adaptation at every target node."""
    return tqdm(total=total, desc=description, unit="task", leave=False, disable=not show,
                dynamic_ncols=True)


def evaluation_line(summary: dict, seconds: float) -> str:
    """One line per evaluation at the target nodes: what the adapted networks reached."""
    return (f"target accuracy {100 * summary['accuracy_mean']:.2f} % (meta-model "
            f"{100 * summary['accuracy_meta_mean']:.2f} %), sparsity "
            f"{100 * summary['sparsity_mean']:.1f} % (std {100 * summary['sparsity_std']:.1f}), "
            f"{int(summary['num_tasks'])} tasks in {seconds:.1f} s")


class RoundProgress(L.Callback):
    """Logs each round's timings and loss. The bar over rounds averages its rate over the whole
    run, evaluations included, so its ETA does not jump at every evaluation; while the final
    adaptation runs (``trainer.test``), a bar over the target tasks."""

    def __init__(self, show_bar: bool = True) -> None:
        self.show_bar = show_bar
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.bar = tqdm(
            total=trainer.max_epochs,
            initial=int(pl_module.rounds_done),
            desc="rounds",
            unit="round",
            smoothing=0,
            disable=not (self.show_bar and trainer.is_global_zero),
            dynamic_ncols=True,
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        stats = pl_module.last_round
        if not stats:
            return
        metrics = {f"train/{key}": value for key, value in stats.items() if key != "round"}
        metrics["train/training_seconds"] = float(pl_module.training_seconds)
        log_metrics(trainer, metrics, stats["round"])
        self.bar.set_postfix(
            loss=f"{stats['train_loss']:.3f}", s_per_round=f"{stats['round_seconds']:.2f}"
        )
        self.bar.update(1)

    def on_train_end(self, trainer, pl_module) -> None:
        self.bar.close()

    def on_test_start(self, trainer, pl_module) -> None:
        total = len(trainer.datamodule.target_clients)
        self.bar = task_bar(total, "final adaptation", self.show_bar and trainer.is_global_zero)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        self.bar.update(1)

    def on_test_end(self, trainer, pl_module) -> None:
        self.bar.close()
