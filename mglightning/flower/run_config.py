"""The run's config for the ServerApp: our Hydra config, composed from overrides.

The ServerApp composes ``conf/train.yaml`` with the overrides and sends each node the parts it
reads, resolved (:func:`~mglightning.federated.training_node.node_config`): the ClientApps
compose nothing, because a SuperNode starts a ClientApp process for every message, and composing
(Hydra) and validating (which reaches Lightning) cost seconds where a local solve costs a
fraction of one. Under ``flwr run`` the
overrides come from the run config (``[tool.flwr.app.config]``, ``overrides = "..."``,
changeable with ``flwr run --run-config``); a ServerApp made with overrides of its own
(``make_server_app(overrides)``) carries them itself and ignores the run config.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from functools import lru_cache

from omegaconf import DictConfig

from mglightning import build
from mglightning.config import ConfigError, validate

OVERRIDES_KEY = "overrides"  # the run config key holding the Hydra overrides


@lru_cache(maxsize=8)
def compose_config(overrides: str) -> DictConfig:
    """``conf/train.yaml`` with ``overrides`` (shell-quoted ``key=value`` words), validated.

    Composed once per process (a Ray actor serves many nodes): treat the
    result as read-only."""
    cfg = build.compose_config(shlex.split(overrides))
    validate(cfg)
    return cfg


def run_overrides(fixed: str | None, run_config: Mapping) -> str:
    """The overrides an app was built with, else those of the run config."""
    if fixed is not None:
        return fixed
    if OVERRIDES_KEY not in run_config:
        raise ConfigError(f"run config has no {OVERRIDES_KEY!r}: set it in pyproject.toml "
                          f"[tool.flwr.app.config] or with flwr run --run-config")
    return str(run_config[OVERRIDES_KEY])
