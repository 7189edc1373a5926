"""Loggers from config; Weights & Biases never blocks or crashes a run without network."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str | None) -> str:
    """The mode asked for, else online with credentials and offline without."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_wandb_credentials() else "offline"


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config as one level of dotted keys, for W&B's config panel."""
    flat: dict = {}

    def visit(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def build_logger(cfg: DictConfig) -> Logger | None:
    name = cfg.logger.name
    output_dir = Path(cfg.output_dir)
    if name == "none":
        return None
    if name == "csv":
        return CSVLogger(output_dir, name="csv", version="")
    if name == "wandb":
        output_dir.mkdir(parents=True, exist_ok=True)
        mode = wandb_mode(cfg.logger.mode)
        logger = WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            name=cfg.run_name,
            group=cfg.experiment,
            job_type=cfg.method.name,
            tags=[cfg.dataset.name, f"seed{cfg.seed}"],
            save_dir=str(output_dir),
            mode=mode,
        )
        logger.log_hyperparams(flat_config(cfg))
        return logger
    raise ValueError(f"logger.name={name!r}: choose wandb, csv or none")
