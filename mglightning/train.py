"""Entry point: compose the config, build the objects, run federated meta-learning, then
adapt at every target node and write the results.

    python -m mglightning.train dataset=fmnist method=metagater rounds=300
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
from mglightning.federated.learner import FederatedMetaLearner, TrainingFault
from mglightning.footprint import check_run_fits
from mglightning.run.checkpoint import (
    CheckpointError,
    RoundCheckpoint,
    RunInterrupted,
    StopRequest,
    UnreadableCheckpointError,
    read_state_dict,
)
from mglightning.run.folder import RunFolder
from mglightning.run.identity import input_fingerprints
from mglightning.run.loggers import finish_wandb_run, quiet_lightning

log = logging.getLogger(__name__)


def run(cfg: DictConfig, datamodule: FederatedDataModule | None = None) -> dict:
    """Train, adapt at the targets and write the run folder (:class:`RunFolder`): resume an
    unfinished run of the same config, leave a finished one alone (``reevaluate=true`` adapts
    its targets again, from its checkpoint as it is), refuse a folder made with another config
    or other inputs (data, meta-model), and bad input before anything is written. A SIGTERM
    or SIGINT at any point stops with the finished rounds checkpointed and no results
    (:class:`RunInterrupted`). The run's data are loaded once, here or by the caller, who
    passes them as ``datamodule`` (built by :func:`build_datamodule` from ``cfg``). Bad input,
    a run that would not fit in memory included, is refused before the folder is written."""
    validate(cfg)
    quiet_lightning()
    with StopRequest() as stop_request, logging_redirect_tqdm():
        if datamodule is None:
            datamodule = build_datamodule(cfg)
        meta_model = read_meta_model(cfg)
        inputs = input_fingerprints(datamodule.data.images, datamodule.data.labels, meta_model)
        folder = RunFolder(cfg.output_dir)
        folder.check_config(cfg, inputs)
        nothing_to_do = folder.finished and not cfg.reevaluate
        state, source = meta_model, cfg.method.get("meta_checkpoint")
        if state is None and not nothing_to_do:
            state, source = recorded_state(cfg, folder, stop_request), folder.checkpoint_path
        adapter = build_adapter(cfg)
        evaluation = TargetEvaluation(adapter, cfg.eval_every, folder.curve_path,
                                      cfg.progress_bar, stop_request)
        trainer = build_trainer(cfg, [
            stop_request,
            RoundProgress(show_bar=cfg.progress_bar),
            evaluation,
            RoundCheckpoint(folder.checkpoint_path, cfg.checkpoint.every_n_rounds, stop_request),
        ])
        if nothing_to_do:
            log.info("%s holds this config's finished run: nothing to do (reevaluate=true "
                     "adapts its targets again)", folder.path)
            return folder.read_summary()
        check_run_fits(cfg, datamodule, trainer.strategy.root_device)  # before the first write
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        learner = build_learner(cfg, datamodule)
        if state is not None:
            load_state(learner, state, source, cfg.model.name)
        stop_request.raise_if_requested()  # a signal while the run was being set up
        first_process = rank_zero_only.rank == 0  # processes launched for more devices: no files
        if first_process:
            folder.write_config(cfg, inputs)
        with folder.logging_to_file(first_process):
            return train_and_adapt(cfg, folder, trainer, datamodule, learner, adapter,
                                   evaluation, stop_request, train=state is None)


def read_meta_model(cfg: DictConfig) -> dict | None:
    """The state of the meta-model a MetaSNIP run adapts instead of training
    (``method.meta_checkpoint``, METHOD.md §5), read as data only; None for a run that
    trains."""
    path = cfg.method.get("meta_checkpoint")
    if not path:
        return None
    try:
        return read_state_dict(path)
    except UnreadableCheckpointError as error:
        raise type(error)(f"method.meta_checkpoint={error}") from error


def recorded_state(cfg: DictConfig, folder: RunFolder, stop_request: StopRequest) -> dict | None:
    """What the folder's checkpoint holds, read before anything is written: a finished run's
    state (re-evaluated from its record, which stays as it is), or None for a run that trains
    (a checkpoint to resume from is only checked here, then Lightning loads it)."""
    if not folder.checkpoint_path.exists() or not (cfg.resume or folder.finished):
        return None
    remedy = ("delete it to run this config from the start, or put back the checkpoint this "
              "run wrote")
    state = read_state_dict(folder.checkpoint_path, remedy)
    if "rounds_done" in state:  # else the learner refuses it when it loads
        stop_request.checkpointed(int(state["rounds_done"]), folder.checkpoint_path)
    return state if folder.finished else None


def load_state(learner: FederatedMetaLearner, state: dict, source, model: str) -> None:
    """Load a meta-model's state (from the file ``source``), refusing in one line one of
    another network than ``model`` builds."""
    try:
        learner.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{source} holds the state of another network than model={model} "
                          f"builds here ({one_line(error)[:300]}): pass the checkpoint of a run "
                          "with this model and data set") from error


def train_and_adapt(cfg: DictConfig, folder: RunFolder, trainer: L.Trainer,
                    datamodule: FederatedDataModule, learner: FederatedMetaLearner,
                    adapter: FastAdaptation, evaluation: TargetEvaluation,
                    stop_request: StopRequest, train: bool) -> dict:
    """The run's work, once its folder is settled: the rounds, with ``train`` (resumed where
    a checkpoint is), then the final adaptation at every target node, then the results
    files."""
    logger = build_logger(cfg)
    trainer.loggers = [logger] if logger is not None else []
    if train:
        resume = cfg.resume and folder.checkpoint_path.exists()
        trainer.fit(learner, datamodule=datamodule,
                    ckpt_path=str(folder.checkpoint_path) if resume else None)

    rounds_done = int(learner.rounds_done)
    rows = evaluation.rows_at(rounds_done)  # the last round was just evaluated: reuse it
    if rows is None:
        adapter.set_meta_network(learner.meta_network())
        trainer.test(adapter, datamodule=datamodule, verbose=False)
        rows = adapter.task_rows
        if train and evaluation.missing(rounds_done, cfg.rounds):  # its evaluation was stopped
            evaluation.record(trainer, rounds_done, float(learner.training_seconds), rows)
    stop_request.raise_if_requested()
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


@contextmanager
def ending_in_one_line() -> Iterator[None]:
    """An entry point's work, whose bad input (exit 2), training that cannot go on (exit 1)
    and stop asked for by a signal (exit 143 for SIGTERM, 130 for SIGINT) end the command in
    one line on stderr."""
    try:
        yield
    except (ConfigError, DataError, PartitionError, HydraException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except (TrainingFault, CheckpointError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    except RunInterrupted as interrupted:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(interrupted.exit_code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Run, ending in one line unless it succeeds (:func:`ending_in_one_line`)."""
    with ending_in_one_line():
        summary = run(cfg)
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
