"""Loggers from config; Weights & Biases never blocks or crashes a run.

W&B runs are organized for dashboards: project from ``logger.project``, group = experiment,
job type = method, tags = data set and seed, the whole config logged flat. When W&B is
misconfigured or unreachable the run goes on with the CSV logger after one warning.
A logger config (``conf/logger/*.yaml``) names its function by ``_target_``; each takes the
run's config first and the node's options after (:func:`mglightning.build.build_logger`).
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
import warnings
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from mglightning.constraints import number, one_of, optional, string

log = logging.getLogger(__name__)
LIGHTNING_INFO = logging.getLogger("lightning.pytorch.utilities.rank_zero")

WANDB_DEFAULT_HOST = "https://api.wandb.ai"
WANDB_ID_LENGTH = 16
# A W&B run's folder: (offline-)run-<date>_<time>-<id>, the id <folder id>[-<attempt>].
WANDB_RUN_FOLDER = re.compile(
    rf"^(offline-)?run-\d{{8}}_\d{{6}}-(?P<id>[0-9a-f]{{{WANDB_ID_LENGTH}}})(-(?P<attempt>\d+))?$")


def drop_advertisements(record: logging.LogRecord) -> bool:
    """Lightning's "💡 Tip: try installing …" lines advertise other packages, twice a run."""
    return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Keep a run's console to what it says about the run: no package advertisements, no
    deprecation notices that Lightning raises about its own use of torch internals. (A run
    builds one Trainer, so Lightning names the devices once.)"""
    if drop_advertisements not in LIGHTNING_INFO.filters:
        LIGHTNING_INFO.addFilter(drop_advertisements)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's all_gather (multi-device rounds) calls a torch function torch now deprecates.
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather")


def has_wandb_credentials() -> bool:
    """An API key in the environment, or a netrc entry for the W&B host in use."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_HOST)).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
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


def table_summary(summary: dict) -> dict[str, float]:
    """The run's entries of the paper's tables (METHOD.md §6), in the paper's units: accuracy,
    sparsity and FLOPs skipped in %, mean over target tasks (``*_std`` across tasks);
    training time of the whole run and learning time per task in seconds."""
    percent = {key: 100 * summary[f"{key}_mean"] for key in ("accuracy", "sparsity")}
    return {
        "table/accuracy": percent["accuracy"],
        "table/accuracy_std": 100 * summary["accuracy_std"],
        "table/sparsity": percent["sparsity"],
        "table/sparsity_std": 100 * summary["sparsity_std"],
        "table/sparsity_min": 100 * summary["sparsity_min"],
        "table/sparsity_max": 100 * summary["sparsity_max"],
        "table/flops_skipped": 100 * summary["flops_skipped_mean"],
        "table/training_seconds": summary["training_seconds"],
        "table/learning_seconds": summary["learning_seconds_mean"],
    }


def finish_wandb_run(logger: Logger | None, summary: dict) -> None:
    """Put :func:`table_summary` in the W&B run summary, so that a W&B report shows the
    paper's tables as summary columns (a row per run, grouped by experiment and method), and
    finish the run: the next run started in the same process gets a run of its own."""
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(table_summary(summary))
        logger.experiment.finish()


def wandb_run_identity(cfg: DictConfig, wandb_dir: Path) -> dict:
    """One W&B run per attempt at a run folder: id ``<folder id>-<attempt>``, named after the
    run (``<run_name>-attempt<n>`` from the second attempt on) and holding ``wandb_attempt``
    in its config. A resumed or re-evaluated run thus never writes a second ``offline-run-*``
    folder under an id another already holds: syncing them (``wandb sync``) adds each attempt
    as a run of its own, none replacing another, and their curves line up on the round
    (``trainer/global_step``). The attempt is the next after those ``wandb_dir`` holds. An id
    that W&B was given already (``WANDB_RUN_ID``, as a sweep agent sets it) is left to W&B."""
    if os.environ.get("WANDB_RUN_ID"):
        return {}
    folder_id = hashlib.sha256(f"{cfg.experiment}/{cfg.run_name}".encode()).hexdigest()
    folder_id = folder_id[:WANDB_ID_LENGTH]
    attempts = [int(found["attempt"] or 1)
                for path in (wandb_dir.iterdir() if wandb_dir.is_dir() else ())
                if (found := WANDB_RUN_FOLDER.match(path.name)) and found["id"] == folder_id]
    attempt = max(attempts, default=0) + 1
    name = cfg.run_name if attempt == 1 else f"{cfg.run_name}-attempt{attempt}"
    return {"id": f"{folder_id}-{attempt}", "name": name, "resume": "allow",
            "config": {"wandb_attempt": attempt}}


def csv_logger(cfg: DictConfig) -> CSVLogger:
    """Metrics to ``<output_dir>/csv/metrics.csv`` (``logger=csv``)."""
    return csv_metrics(Path(cfg.output_dir))


def csv_metrics(output_dir: Path) -> CSVLogger:
    return CSVLogger(output_dir, name="csv", version="")


def wandb_or_csv_logger(
    cfg: DictConfig,
    project: Annotated[str, string()],
    entity: Annotated[str | None, optional(string())] = None,
    mode: Annotated[str | None, one_of(None, "online", "offline", "disabled")] = None,
    init_timeout: Annotated[float, number(above=0)] = 30,
) -> Logger:
    """A started W&B run, or the CSV logger with one warning when W&B cannot start.

    Online without credentials is refused before ``wandb.init`` (it would prompt for a key on
    a terminal); an invalid setting (mode) raises at once; an unreachable server makes
    ``wandb.init`` give up after its retries, which ``logger.init_timeout`` bounds only
    loosely (with a refused connection the retries outlast it).
    """
    output_dir = Path(cfg.output_dir)
    mode = wandb_mode(mode)
    if mode == "online" and not has_wandb_credentials():
        return fall_back_to_csv(output_dir, "mode online but no W&B API key configured")
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        import wandb

        logger = WandbLogger(
            project=project,
            entity=entity,
            group=cfg.experiment,
            job_type=cfg.method.name,
            tags=[cfg.dataset.name, f"seed{cfg.seed}"],
            save_dir=str(output_dir),
            mode=mode,
            settings=wandb.Settings(init_timeout=init_timeout),
            **{"name": cfg.run_name, **wandb_run_identity(cfg, output_dir / "wandb")},
        )
        # Lightning always passes anonymous=None, which W&B >= 0.23 warns about on every run
        # (its setting is gone: wandb/wandb#10909); unset, W&B says nothing.
        logger._wandb_init.pop("anonymous", None)
        logger.experiment  # noqa: B018 -- starts the run now, inside the guard
    except Exception as error:  # any W&B failure must not stop training
        return fall_back_to_csv(output_dir, f"{type(error).__name__}: {error}")
    logger.log_hyperparams(flat_config(cfg))
    return logger


def fall_back_to_csv(output_dir: Path, reason: str) -> CSVLogger:
    short_reason = " ".join(line.strip() for line in reason.splitlines()[:3])  # one line
    log.warning("W&B unavailable (%s); logging to %s/csv instead", short_reason, output_dir)
    return csv_metrics(output_dir)
