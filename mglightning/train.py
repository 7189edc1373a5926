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
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from mglightning.adaptation.module import FastAdaptation
from mglightning.adaptation.summary import summarize_tasks
from mglightning.callbacks import RoundProgress, TargetEvaluation, log_task_results
from mglightning.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    RoundCheckpoint,
    RunInterrupted,
    StopRequest,
    read_checkpoint,
)
from mglightning.config import CONF_DIR, ConfigError, validate
from mglightning.data.datamodule import FederatedDataModule
from mglightning.data.datasets import DataError
from mglightning.data.partition import PartitionError
from mglightning.federated.distributed import ClientParallelStrategy
from mglightning.federated.learner import FederatedMetaLearner, TrainingFault
from mglightning.federated.prox import L1, GroupLasso
from mglightning.federated.schedules import gate_noise_schedule, temperature_schedule
from mglightning.loggers import build_logger, finish_wandb_run, quiet_lightning
from mglightning.models.backbones import build_network as build_backbone
from mglightning.models.network import GatedNetwork
from mglightning.run_folder import RunFolder

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> FederatedDataModule:
    datamodule = FederatedDataModule(
        OmegaConf.to_container(cfg.dataset, resolve=True),
        seed=cfg.seed,
        batch_size=cfg.dataset.batch_size,
        data_root=cfg.data_root,
        clients_per_round=cfg.method.clients_per_round,
    )
    datamodule.setup()
    return datamodule


def build_network(cfg: DictConfig, datamodule: FederatedDataModule) -> GatedNetwork:
    """The backbone, gated unless the method says otherwise; its initialization is x_0, a
    function of the seed alone."""
    gated_layers = list(cfg.model.gated_layers) if cfg.method.gating else []
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return build_backbone(
            cfg.model.name,
            datamodule.input_shape,
            datamodule.num_classes,
            gated_layers,
            cfg.model.gate_hidden,
            cfg.model.temperature,
            cfg.model.get("gate_bias_init"),
        )


def build_learner(cfg: DictConfig, network: GatedNetwork) -> FederatedMetaLearner:
    learner = FederatedMetaLearner(
        network,
        strategy=None,
        local_solver=instantiate(cfg.method.local),
        clients_per_round=cfg.method.clients_per_round,
        seed=cfg.seed,
        gate_noise=gate_noise_schedule(cfg.method.get("gate_noise", "none"), cfg.rounds),
        temperature=temperature_schedule(
            cfg.model.temperature, cfg.method.get("temperature_end"), cfg.rounds
        ),
        max_failed_rounds=cfg.faults.max_failed_rounds,
    )
    if cfg.faults.inject.clients:
        learner.inject_faults(**cfg.faults.inject)
    regularizer = build_regularizer(cfg, learner)
    server_options = {} if regularizer is None else {"regularizer": regularizer}  # FedAvg has none
    learner.strategy = instantiate(cfg.method.server, **server_options)
    return learner


def build_regularizer(cfg: DictConfig, learner: FederatedMetaLearner) -> GroupLasso | L1 | None:
    """h(φ) of SPEC §3 over the learner's flat parameter vector."""
    spec = cfg.method.get("regularizer") or {"name": "none"}
    flat, network = learner.flat, learner.network
    if spec["name"] == "group_lasso":
        pairs = [
            (f"blocks.{i}.gate.out.weight", f"blocks.{i}.gate.out.bias")
            for i in network.gated_layers
        ]
        group_ids, num_groups = flat.group_index(pairs)
        return GroupLasso(spec["gamma"], group_ids, num_groups)
    if spec["name"] == "l1":
        return L1(spec["gamma"], flat.gate_mask)
    if spec["name"] == "none":
        return None
    raise ValueError(f"method.regularizer.name={spec['name']!r}: choose group_lasso, l1 or none")


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback]) -> L.Trainer:
    """One Trainer for the rounds and the final adaptation; built before anything is written,
    so that trainer settings this machine cannot run (``trainer.accelerator=gpu`` without a
    GPU) end as bad input. Loggers are attached once the run folder is in use. With several
    devices each round's clients are split across processes
    (:mod:`mglightning.federated.distributed`)."""
    several_processes = cfg.trainer.get("devices", 1) != 1 or cfg.trainer.get("num_nodes", 1) != 1
    try:
        return L.Trainer(
            max_epochs=cfg.rounds,
            logger=False,
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            inference_mode=False,  # adaptation at the targets takes gradients
            plugins=[AtomicCheckpointIO()],
            default_root_dir=cfg.output_dir,
            strategy=ClientParallelStrategy() if several_processes else "auto",
            use_distributed_sampler=False,  # the processes split the clients themselves
            **cfg.trainer,
        )
    except MisconfigurationException as error:
        raise ConfigError(f"trainer.accelerator={cfg.trainer.get('accelerator')} "
                          f"trainer.devices={cfg.trainer.get('devices')}: "
                          f"{' '.join(str(error).split())}") from error


def run(cfg: DictConfig) -> dict:
    """Train, adapt at the targets and write the run folder (:class:`RunFolder`): resume an
    unfinished run of the same config, leave a finished one alone (``reevaluate=true`` adapts
    its targets again), refuse a folder made with another config. A SIGTERM or SIGINT stops
    after the round under way with a checkpoint and no results (:class:`RunInterrupted`)."""
    validate(cfg)
    quiet_lightning()
    folder = RunFolder(cfg.output_dir)
    folder.check_config(cfg)
    with StopRequest() as stop_request, logging_redirect_tqdm():
        adapter = FastAdaptation(**cfg.method.adaptation)
        evaluation = TargetEvaluation(adapter, cfg.eval_every, folder.path, cfg.progress_bar)
        trainer = build_trainer(cfg, [
            stop_request,
            RoundProgress(show_bar=cfg.progress_bar),
            evaluation,
            RoundCheckpoint(folder.checkpoint_path.parent, cfg.checkpoint.every_n_rounds,
                            stop_request),
        ])
        if folder.finished and not cfg.reevaluate:
            log.info("%s holds this config's finished run: nothing to do (reevaluate=true "
                     "adapts its targets again)", folder.path)
            return folder.read_summary()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = build_datamodule(cfg)
        first_process = rank_zero_only.rank == 0  # processes launched for more devices: no files
        if first_process:
            folder.write_config(cfg)
        with folder.logging_to_file(first_process):
            return train_and_adapt(cfg, folder, trainer, datamodule, adapter, evaluation,
                                   stop_request)


def train_and_adapt(cfg: DictConfig, folder: RunFolder, trainer: L.Trainer,
                    datamodule: FederatedDataModule, adapter: FastAdaptation,
                    evaluation: TargetEvaluation, stop_request: StopRequest) -> dict:
    """The run's work, once its folder is settled: the rounds (resumed where a checkpoint
    is), then the final adaptation at every target node, then the results files."""
    learner = build_learner(cfg, build_network(cfg, datamodule))
    logger = build_logger(cfg)
    trainer.loggers = [logger] if logger is not None else []
    meta_checkpoint = cfg.method.get("meta_checkpoint")
    if meta_checkpoint:  # MetaSNIP: adapt another run's meta-model, train nothing (SPEC §5)
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
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose("train", overrides=overrides)
        except HydraException as error:
            message = " ".join(str(error).split())
            try:
                forced = [
                    override.input_line
                    if override.is_add() or override.is_force_add() or override.is_delete()
                    or (CONF_DIR / override.key_or_group).is_dir()  # a group: dataset=...
                    else f"++{override.input_line}"
                    for override in OverridesParser.create().parse_overrides(overrides)
                ]
                cfg = compose("train", overrides=forced)
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
