"""Compose the real config from conf/ and shrink it, so tests run the real code path."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from mglightning.train import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

TINY = [
    "dataset=synthetic",
    "logger=none",
    "rounds=6",
    "eval_every=3",
    "checkpoint.every_n_rounds=2",
    "progress_bar=false",
    "method.clients_per_round=4",
    "trainer.accelerator=cpu",  # the default suite runs on the CPU; tests marked cuda use a GPU
]


def compose_config(overrides: list[str], tmp_path) -> object:
    """The composed train config with the tiny settings, writing under ``tmp_path``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*TINY, f"output_root={tmp_path}", *overrides])


@pytest.fixture
def tiny_config(tmp_path):
    return lambda *overrides: compose_config(list(overrides), tmp_path)
