"""Entry point: compose the config, build the objects, run federated meta-learning, then
adapt at every target node and write the results.

    python -m mglightning.train dataset=fmnist method=metagater rounds=300
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mglightning.adaptation.module import FastAdaptation
from mglightning.callbacks import RoundProgress, TargetEvaluation, TaskResultsWriter
from mglightning.checkpoint import AtomicCheckpointIO, CheckpointError, RoundCheckpoint
from mglightning.config import CONF_DIR, RUN_CONFIG, ConfigError, validate
from mglightning.data.datamodule import FederatedDataModule
from mglightning.data.datasets import DataError
from mglightning.data.partition import PartitionError
from mglightning.federated.learner import FederatedMetaLearner, TrainingFault
from mglightning.federated.prox import L1, GroupLasso
from mglightning.io import atomic_write_text, write_json
from mglightning.loggers import build_logger, finish_wandb_run, quiet_lightning
from mglightning.models.backbones import build_network as build_backbone
from mglightning.models.network import GatedNetwork

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> FederatedDataModule:
    datamodule = FederatedDataModule(
        OmegaConf.to_container(cfg.dataset, resolve=True),
        seed=cfg.seed,
        batch_size=cfg.dataset.batch_size,
        data_root=cfg.data_root,
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
        )


def build_learner(cfg: DictConfig, network: GatedNetwork) -> FederatedMetaLearner:
    learner = FederatedMetaLearner(
        network,
        strategy=None,
        local_solver=instantiate(cfg.method.local),
        clients_per_round=cfg.method.clients_per_round,
        seed=cfg.seed,
        gate_noise=cfg.method.get("gate_noise", False),
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


def run(cfg: DictConfig) -> dict:
    """Train, adapt at the targets, write ``config.yaml`` (resolved: what the run folder was
    made with, read back by :mod:`mglightning.deploy` and the notebooks), ``tasks.csv``,
    ``curve.csv`` and ``summary.json``."""
    validate(cfg)
    quiet_lightning()
    output_dir = Path(cfg.output_dir)
    atomic_write_text(output_dir / RUN_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, build_network(cfg, datamodule))
    adapter = FastAdaptation(**cfg.method.adaptation)
    logger = build_logger(cfg)
    checkpoint_dir = output_dir / "checkpoints"
    callbacks = [
        RoundProgress(show_bar=cfg.progress_bar),
        TargetEvaluation(adapter, cfg.eval_every, output_dir),
        RoundCheckpoint(checkpoint_dir, cfg.checkpoint.every_n_rounds),
    ]
    trainer = L.Trainer(
        max_epochs=cfg.rounds,
        logger=logger or False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=output_dir,
        **cfg.trainer,
    )
    last = checkpoint_dir / "last.ckpt"
    meta_checkpoint = cfg.method.get("meta_checkpoint")
    if meta_checkpoint:  # MetaSNIP: adapt another run's meta-model, train nothing (SPEC §5)
        learner.load_state_dict(torch.load(meta_checkpoint, weights_only=False)["state_dict"])
    else:
        trainer.fit(
            learner,
            datamodule=datamodule,
            ckpt_path=str(last) if cfg.resume and last.exists() else None,
        )
        trainer.save_checkpoint(last, weights_only=False)

    adapter.set_meta_network(learner.meta_network())
    writer = TaskResultsWriter(output_dir, step=int(learner.rounds_done))
    tester = L.Trainer(
        logger=logger or False,
        callbacks=[writer],
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        **cfg.trainer,
    )
    tester.test(adapter, datamodule=datamodule, verbose=False)
    summary = {
        "rounds": int(learner.rounds_done),
        "training_seconds": float(learner.training_seconds),
        "rounds_per_second": int(learner.rounds_done) / max(float(learner.training_seconds), 1e-9),
        **writer.summary,
    }
    write_json(output_dir / "summary.json", summary)
    if logger is not None:
        logger.log_metrics({f"final/{k}": v for k, v in summary.items()}, step=summary["rounds"])
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
    """Run; bad input (exit 2) and a training that cannot go on (exit 1) end in one line."""
    try:
        summary = run(cfg)
    except (ConfigError, DataError, PartitionError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (TrainingFault, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
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
