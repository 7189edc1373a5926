"""Per-round timings to the loggers and a progress bar counted in rounds."""

from __future__ import annotations

import lightning as L
from tqdm.auto import tqdm


def log_metrics(trainer: L.Trainer, metrics: dict[str, float], round_index: int) -> None:
    """Log with the round as the step: in manual optimization the global step stays 0."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=round_index)


class RoundProgress(L.Callback):
    """Logs each round's timings and loss; shows a bar over rounds and the total time."""

    def __init__(self, show_bar: bool = True) -> None:
        self.show_bar = show_bar
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        done = int(pl_module.rounds_done)
        self.bar = tqdm(
            total=trainer.max_epochs,
            initial=done,
            desc="rounds",
            disable=not self.show_bar,
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
