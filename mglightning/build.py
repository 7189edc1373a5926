"""Every object a run is made of, built from the composed config, in one place.

The entry points (``train``, ``deploy``, the Flower apps, the bench) and the tests build
their objects here, so a learner is built one way wherever it is built: the same config and
seed give the same x_0 and the same learner everywhere. Every swappable part (backbone,
local solver, server step, regularizer, adaptation rule, logger) is a ``_target_`` node of the
config, built by :func:`build_part`; a new part is a new class and a YAML file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from mglightning.adaptation.module import FastAdaptation
from mglightning.config import CONF_DIR, ConfigError
from mglightning.data.datamodule import FederatedDataModule
from mglightning.errors import one_line
from mglightning.federated import training_node
from mglightning.federated.distributed import ClientParallelStrategy
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.federated.prox import L1, GroupLasso
from mglightning.models.network import GatedNetwork
from mglightning.run.checkpoint import AtomicCheckpointIO
from mglightning.targets import bind


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, as the command line composes it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build_part(node: DictConfig) -> Callable:
    """A ``_target_`` node of the composed config as its target with the node's options bound
    (:func:`mglightning.targets.bind` on the node resolved)."""
    return bind(OmegaConf.to_container(node, resolve=True))


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


def build_network(cfg: DictConfig, datamodule) -> GatedNetwork:
    """The backbone, gated unless the method says otherwise, at x_0
    (:func:`~mglightning.federated.training_node.build_network`). ``datamodule`` is anything
    with ``input_shape`` and ``num_classes`` (a data module, a Flower node's shard)."""
    return training_node.build_network(training_node.node_config(cfg), datamodule.input_shape,
                                       datamodule.num_classes)


def build_learner(cfg: DictConfig, datamodule,
                  device: torch.device | str | None = None) -> FederatedMetaLearner:
    """The federated meta-learner with the node that a Flower ClientApp builds too
    (:func:`~mglightning.federated.training_node.build_training_node`: the network at x_0,
    on ``device`` when given, its local solver and schedules), and the method's server step
    and regularizer."""
    node = training_node.build_training_node(training_node.node_config(cfg),
                                             datamodule.input_shape, datamodule.num_classes)
    if device is not None:
        node.network.to(device)  # before the learner makes its flat parameter vector
    learner = FederatedMetaLearner(
        node.network,
        server_step=None,
        local_solver=node.local_solver,
        clients_per_round=cfg.method.clients_per_round,
        seed=cfg.seed,
        gate_noise=node.gate_noise,
        temperature=node.temperature,
        max_failed_rounds=cfg.faults.max_failed_rounds,
    )
    regularizer = build_regularizer(cfg, learner)
    server_options = {} if regularizer is None else {"regularizer": regularizer}  # FedAvg has none
    learner.server_step = build_part(cfg.method.server)(**server_options)
    return learner


def build_regularizer(cfg: DictConfig, learner: FederatedMetaLearner) -> GroupLasso | L1 | None:
    """h(φ) of METHOD.md §3 over the learner's flat parameter vector (``method.regularizer``: a
    target's ``for_network``; null: none)."""
    node = cfg.method.get("regularizer")
    if node is None:
        return None
    return build_part(node)(flat=learner.flat, network=learner.network)


def build_adapter(cfg: DictConfig) -> FastAdaptation:
    """The fast adaptation at the target nodes, with the rule of ``method.adaptation``."""
    return FastAdaptation(build_part(cfg.method.adaptation))


def build_logger(cfg: DictConfig) -> Logger | None:
    """The run's logger (``logger._target_`` called with the run's config); none without one
    (``logger=none``)."""
    return build_part(cfg.logger)(cfg) if "_target_" in cfg.logger else None


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
                          f"{one_line(error)}") from error
