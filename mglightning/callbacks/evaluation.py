"""Target-node evaluation every N rounds: the accuracy-against-rounds curve (paper Fig. 4)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L

from mglightning.adaptation.module import FastAdaptation
from mglightning.analysis.task_summary import summarize_tasks
from mglightning.callbacks.progress import evaluation_line, log_metrics, task_bar
from mglightning.federated.distributed import gather_rows, own_positions
from mglightning.run.checkpoint import StopNow, StopRequest
from mglightning.run.io import write_csv

log = logging.getLogger(__name__)


class TargetEvaluation(L.Callback):
    """Adapts the current meta-model at every target node each ``every_n_rounds`` rounds and
    at the last round, logs the across-task summary (and one line on the console) and rewrites
    the run folder's curve (``curve_path``): the curve ends where the run ends, whatever its
    number of rounds (``every_n_rounds=0``: no curve). The last evaluation's per-task rows are kept
    (``rows_at``), so that the final adaptation reuses the last round's rather than adapting
    the targets a second time; the gating measures (two more forwards a task) are taken at
    that last round only, as the curve does not need them.

    A stop (``stop_request``, :class:`~mglightning.run.checkpoint.StopRequest`) cuts an
    evaluation short before its next task: the round is checkpointed without it, and a run
    resumed from that checkpoint evaluates it first (the final adaptation's rows fill it in at
    the last round), so that the curve is the same as an uninterrupted run's."""

    def __init__(self, adapter: FastAdaptation, every_n_rounds: int, curve_path: str | Path,
                 show_bar: bool = True, stop_request: StopRequest | None = None) -> None:
        self.adapter = adapter
        self.every_n_rounds = every_n_rounds
        self.curve_path = Path(curve_path)
        self.show_bar = show_bar
        self.stop_request = stop_request
        self.history: list[dict] = []
        self.last_rows: tuple[int, list[dict]] | None = None  # (round, rows) of this process

    def due(self, round_index: int, last_round: int) -> bool:
        """Whether round ``round_index`` has a point on the curve."""
        return self.every_n_rounds > 0 and round_index > 0 and (
            round_index % self.every_n_rounds == 0 or round_index == last_round)

    def missing(self, round_index: int, last_round: int) -> bool:
        """A point the curve should have at ``round_index`` and lacks (its evaluation was
        cut short by a stop)."""
        recorded = {int(row["round"]) for row in self.history}
        return self.due(round_index, last_round) and round_index not in recorded

    def on_train_start(self, trainer, pl_module) -> None:
        round_index = int(pl_module.rounds_done)  # resumed: the checkpoint's last round
        if self.missing(round_index, trainer.max_epochs):
            self.evaluate(trainer, pl_module, round_index, stoppable=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        round_index = int(pl_module.rounds_done)
        if not self.due(round_index, trainer.max_epochs):
            return
        # With several processes, all finish it: they would leave the gather unevenly.
        stoppable = self.stop_request is not None and trainer.world_size == 1
        try:
            self.evaluate(trainer, pl_module, round_index, stoppable)
        except StopNow:
            log.info("round %d: evaluation stopped; a resumed run evaluates it", round_index)

    def evaluate(self, trainer, pl_module, round_index: int, stoppable: bool) -> None:
        """Adapt at every target node, log the summary, add the curve's point; with
        ``stoppable``, a stop asked for ends it before any task (:class:`StopNow`)."""
        def task_done() -> None:
            bar.update(1)
            if stoppable:
                self.stop_request.raise_if_requested()

        if stoppable:
            self.stop_request.raise_if_requested()
        last_round = round_index == trainer.max_epochs
        self.adapter.set_meta_network(pl_module.meta_network())
        targets = trainer.datamodule.target_clients
        tasks = own_positions(len(targets))  # with several processes, each takes its share
        start = time.perf_counter()
        show = self.show_bar and trainer.is_global_zero
        with task_bar(len(tasks), f"round {round_index}: adapting targets", show) as bar:
            rows = self.adapter.evaluate_targets(
                targets, tasks, on_task_done=task_done,
                measure_gating=last_round)  # the final results reuse it
        rows = gather_rows(rows, key="task")
        summary = self.record(trainer, round_index, float(pl_module.training_seconds), rows)
        if trainer.is_global_zero:
            log.info("round %d: %s", round_index,
                     evaluation_line(summary, time.perf_counter() - start))

    def record(self, trainer, round_index: int, training_seconds: float,
               rows: list[dict]) -> dict:
        """The point of round ``round_index`` from its per-task ``rows``: logged, kept, and
        written to the curve; returns the across-task summary."""
        summary = summarize_tasks(rows)
        log_metrics(
            trainer, {f"target/{key}": value for key, value in summary.items()}, round_index
        )
        self.history.append({"round": round_index, "training_seconds": training_seconds,
                             **summary})
        self.last_rows = (round_index, rows)
        if trainer.is_global_zero:
            write_csv(self.curve_path, self.history)
        return summary

    def rows_at(self, round_index: int) -> list[dict] | None:
        """The per-task rows of this process's evaluation at ``round_index``, if it made one."""
        if self.last_rows is not None and self.last_rows[0] == round_index:
            return self.last_rows[1]
        return None

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])
