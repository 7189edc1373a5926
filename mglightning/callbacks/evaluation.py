"""Target-node evaluation every N rounds: the accuracy-against-rounds curve (paper Fig. 4)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from mglightning.adaptation.module import FastAdaptation
from mglightning.adaptation.summary import summarize_tasks
from mglightning.callbacks.progress import log_metrics
from mglightning.io import write_csv


class TargetEvaluation(L.Callback):
    """Adapts the current meta-model at every target node each ``every_n_rounds`` rounds,
    logs the across-task summary and rewrites ``curve.csv`` in the run folder."""

    def __init__(
        self, adapter: FastAdaptation, every_n_rounds: int, output_dir: str | Path
    ) -> None:
        self.adapter = adapter
        self.every_n_rounds = every_n_rounds
        self.curve_path = Path(output_dir) / "curve.csv"
        self.history: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        round_index = int(pl_module.rounds_done)
        if self.every_n_rounds <= 0 or round_index % self.every_n_rounds:
            return
        self.adapter.set_meta_network(pl_module.meta_network())
        summary = summarize_tasks(self.adapter.evaluate_targets(trainer.datamodule.target_clients))
        log_metrics(
            trainer, {f"target/{key}": value for key, value in summary.items()}, round_index
        )
        seconds = float(pl_module.training_seconds)
        self.history.append({"round": round_index, "training_seconds": seconds, **summary})
        write_csv(self.curve_path, self.history)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])
