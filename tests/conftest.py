"""Compose the real config from conf/ and shrink it, so tests run the real code path."""

from __future__ import annotations

import os

import pytest
import torch

from mglightning import build

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


SYNC_DEBUG_ENV = "MG_CUDA_SYNC_DEBUG"  # make gpu-check: "warn" reports every host sync


def pytest_configure(config) -> None:
    mode = os.environ.get(SYNC_DEBUG_ENV)
    if mode and torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(mode)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` skip, saying why, where there is no GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is false")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def compose_config(overrides: list[str], tmp_path) -> object:
    """The composed train config with the tiny settings, writing under ``tmp_path``."""
    return build.compose_config([*TINY, f"output_root={tmp_path}", *overrides])


@pytest.fixture
def tiny_config(tmp_path):
    return lambda *overrides: compose_config(list(overrides), tmp_path)
