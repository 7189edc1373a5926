"""Entry point: compose the config, build the objects, run federated meta-learning, then
adapt at every target node and write the results.

    python -m mglightning.train dataset=fmnist method=metagater rounds=300
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
import lightning as L
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from mglightning.adaptation.module import FastAdaptation
from mglightning.analysis.task_summary import summarize_tasks
from mglightning.build import (
    build_adapter,
    build_datamodule,
    build_learner,
    build_logger,
    build_trainer,
    compose_config,
)
from mglightning.callbacks import RoundProgress, TargetEvaluation, log_task_results
from mglightning.config import CONF_DIR, ConfigError, validate
from mglightning.data.datamodule import FederatedDataModule
from mglightning.data.datasets import DataError
from mglightning.data.partition import PartitionError
from mglightning.errors import one_line
from mglightning.federated.learner import TrainingFault
from mglightning.run.checkpoint import (
    CheckpointError,
    RoundCheckpoint,
    RunInterrupted,
    StopRequest,
    read_checkpoint,
)
from mglightning.run.folder import RunFolder
from mglightning.run.footprint import check_run_fits
from mglightning.run.identity import data_fingerprint
from mglightning.run.loggers import finish_wandb_run, quiet_lightning

log = logging.getLogger(__name__)


def run(cfg: DictConfig, datamodule: FederatedDataModule | None = None) -> dict:
    """Train, adapt at the targets and write the run folder (:class:`RunFolder`): resume an
    unfinished run of the same config, leave a finished one alone (``reevaluate=true`` adapts
    its targets again), refuse a folder made with another config or other data. A SIGTERM or
    SIGINT stops after the round under way with a checkpoint and no results
    (:class:`RunInterrupted`). The run's data are loaded once, here or by the caller, who
    passes them as ``datamodule`` (built by :func:`build_datamodule` from ``cfg``). Bad input,
    a run that would not fit in memory included, is refused before the folder is written."""
    validate(cfg)
    quiet_lightning()
    if datamodule is None:
        datamodule = build_datamodule(cfg)
    data = data_fingerprint(datamodule.data.images, datamodule.data.labels)
    folder = RunFolder(cfg.output_dir)
    folder.check_config(cfg, data)
    with StopRequest() as stop_request, logging_redirect_tqdm():
        adapter = build_adapter(cfg)
        evaluation = TargetEvaluation(adapter, cfg.eval_every, folder.curve_path,
                                      cfg.progress_bar)
        trainer = build_trainer(cfg, [
            stop_request,
            RoundProgress(show_bar=cfg.progress_bar),
            evaluation,
            RoundCheckpoint(folder.checkpoint_path, cfg.checkpoint.every_n_rounds, stop_request),
        ])
        if folder.finished and not cfg.reevaluate:
            log.info("%s holds this config's finished run: nothing to do (reevaluate=true "
                     "adapts its targets again)", folder.path)
            return folder.read_summary()
        check_run_fits(cfg, datamodule, trainer.strategy.root_device)  # before the first write
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        first_process = rank_zero_only.rank == 0  # processes launched for more devices: no files
        if first_process:
            folder.write_config(cfg, data)
        with folder.logging_to_file(first_process):
            return train_and_adapt(cfg, folder, trainer, datamodule, adapter, evaluation,
                                   stop_request)


def train_and_adapt(cfg: DictConfig, folder: RunFolder, trainer: L.Trainer,
                    datamodule: FederatedDataModule, adapter: FastAdaptation,
                    evaluation: TargetEvaluation, stop_request: StopRequest) -> dict:
    """The run's work, once its folder is settled: the rounds (resumed where a checkpoint
    is), then the final adaptation at every target node, then the results files."""
    learner = build_learner(cfg, datamodule)
    logger = build_logger(cfg)
    trainer.loggers = [logger] if logger is not None else []
    meta_checkpoint = cfg.method.get("meta_checkpoint")
    if meta_checkpoint:  # MetaSNIP: adapt another run's meta-model, train nothing (METHOD.md §5)
        learner.load_state_dict(read_checkpoint(meta_checkpoint)["state_dict"])
    else:
        resume = cfg.resume and folder.checkpoint_path.exists()
        trainer.fit(learner, datamodule=datamodule,
                    ckpt_path=str(folder.checkpoint_path) if resume else None)
        trainer.save_checkpoint(folder.checkpoint_path, weights_only=False)

    rounds_done = int(learner.rounds_done)
    rows = evaluation.rows_at(rounds_done)  # the last round was just evaluated: reuse it
    if rows is None:
        adapter.set_meta_network(learner.meta_network())
        trainer.test(adapter, datamodule=datamodule, verbose=False)
        rows = adapter.task_rows
    stop_request.raise_if_requested(rounds_done, folder.checkpoint_path)
    summary = {
        "rounds": rounds_done,
        "training_seconds": float(learner.training_seconds),
        "rounds_per_second": rounds_done / max(float(learner.training_seconds), 1e-9),
        **summarize_tasks(rows),
    }
    if trainer.is_global_zero:  # the processes launched for more devices neither write nor log
        folder.write_results(rows, summary)
        log_task_results(trainer.loggers, rows, summary, step=rounds_done)
        if logger is not None:
            logger.finalize("success")
            finish_wandb_run(logger, summary)
    return summary


def format_summary(summary: dict) -> str:
    """A short results table for the terminal."""
    lines = [
        f"rounds                {summary['rounds']}  ({summary['rounds_per_second']:.2f} rounds/s, "
        f"{summary['training_seconds']:.1f} s training)",
        f"target accuracy       {100 * summary['accuracy_mean']:.2f} ± "
        f"{100 * summary['accuracy_std']:.2f} %"
        f"  (meta-model before adaptation {100 * summary['accuracy_meta_mean']:.2f} %)",
        f"sparsity per task     mean {100 * summary['sparsity_mean']:.1f} %, std "
        f"{100 * summary['sparsity_std']:.1f}, min {100 * summary['sparsity_min']:.1f}, "
        f"max {100 * summary['sparsity_max']:.1f}",
        f"FLOPs skipped         {100 * summary['flops_skipped_mean']:.1f} %",
        f"learning time         {1000 * summary['learning_seconds_mean']:.1f} ms per task",
    ]
    if summary["sparsity_min"] >= 1.0:  # what a too-negative gate bias or budget leads to
        lines.append("WARNING: every gated channel is off for every input of every target: the "
                     "gated layers pass nothing on. Lower method.local.sparsity_off or "
                     "sparsity_weight, or raise model.gate_bias_init.")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Run; bad input (exit 2), a training that cannot go on (exit 1) and a stop asked for by
    a signal (exit 143 for SIGTERM, 130 for SIGINT) end in one line."""
    try:
        summary = run(cfg)
    except (ConfigError, DataError, PartitionError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (TrainingFault, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except RunInterrupted as interrupted:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(interrupted.exit_code)
    if rank_zero_only.rank == 0:
        print(format_summary(summary))
        print(f"results in {os.path.abspath(cfg.output_dir)}")


def check_overrides(overrides: list[str]) -> None:
    """Compose and validate once before Hydra runs, so that bad input ends, in one line and
    exit 2, before Hydra makes the run folder; and an override Hydra cannot apply (an unknown
    key without ``+``, a malformed value) in one line rather than in Hydra's report. An unknown
    key is named by :func:`validate` (with the closest known key) on the config composed with
    that key force-added; Hydra's own line (``use +key=value``) stays for a key that is valid
    once added. Multirun and ``hydra.*`` arguments go to Hydra."""
    if any(arg.startswith(("-", "hydra")) for arg in overrides):
        return
    message = None
    try:
        cfg = compose_config(overrides)
    except HydraException as error:
        message = one_line(error)
        try:
            forced = [
                override.input_line
                if override.is_add() or override.is_force_add() or override.is_delete()
                or (CONF_DIR / override.key_or_group).is_dir()  # a group: dataset=...
                else f"++{override.input_line}"
                for override in OverridesParser.create().parse_overrides(overrides)
            ]
            cfg = compose_config(forced)
        except HydraException:
            cfg = None  # Hydra's message says it
    try:
        if cfg is not None:
            validate(cfg)
    except ConfigError as error:
        message = str(error)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
