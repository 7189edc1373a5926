"""Compose the real config from conf/ and shrink it, so tests run the real code path."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from mglightning import build
from mglightning.adaptation.steps import adapt_backbone
from mglightning.data import datasets
from mglightning.models import binarize
from mglightning.models import network as network_module
from mglightning.train import check_overrides, run
from mglightning.train import main as train_main

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
# The run the ``finished_run`` fixture trains once per session: gated MetaGater, evaluated at
# rounds 2 and 4, its per-round metrics in csv/metrics.csv (the logger is not in its identity).
FINISHED_RUN = ["rounds=4", "eval_every=2", "logger=csv"]


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


def train_cli(argv: list[str]) -> None:
    """``python -m mglightning.train ARGV`` in this process, ``sys.argv`` included. What the
    command leaves behind in the process is put back: the root logger's handlers, which Hydra
    replaces by one writing to this test's captured stdout, and Hydra's global state, which its
    main leaves set and which a later compose needs unset."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with mock.patch.object(sys, "argv", ["mglightning.train", *argv]):
            check_overrides(argv)
            train_main()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()


def compose_config(overrides: list[str], tmp_path) -> object:
    """The composed train config with the tiny settings, writing under ``tmp_path``."""
    return build.compose_config([*TINY, f"output_root={tmp_path}", *overrides])


def write_tree(root: Path, classes: dict[str, int], size=(8, 6), mode="L", seed=0,
               suffix=".png") -> dict[Path, np.ndarray]:
    """root/<class>/<n><suffix> with random pixels; returns each file's pixels (H, W[, 3])."""
    rng = np.random.default_rng(seed)
    written = {}
    for class_name, count in classes.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            shape = size if mode == "L" else (*size, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            path = root / class_name / f"{index:03d}{suffix}"
            Image.fromarray(pixels, mode).save(path)
            written[path] = pixels
    return written


@pytest.fixture
def tiny_config(tmp_path):
    return lambda *overrides: compose_config(list(overrides), tmp_path)


def folder_digest(folder: Path) -> str:
    """One hash of every file's path and bytes under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def synthetic_loads(monkeypatch):
    """A list that gains an item each time the synthetic data set is loaded."""
    loads = []
    make_synthetic = datasets.make_synthetic

    def counted(*args, **kwargs):
        loads.append(1)
        return make_synthetic(*args, **kwargs)

    monkeypatch.setattr(datasets, "make_synthetic", counted)
    return loads


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """The config of one tiny run (``FINISHED_RUN``), trained once for every test that only
    reads a finished run's folder. A test that writes into a run takes ``finished_run_copy``:
    a write here fails the session at its end."""
    cfg = compose_config(FINISHED_RUN, tmp_path_factory.mktemp("finished"))
    run(cfg)
    before = folder_digest(Path(cfg.output_dir))
    yield cfg
    assert folder_digest(Path(cfg.output_dir)) == before, (
        f"a test wrote into the shared finished run {cfg.output_dir}: use finished_run_copy")


def copy_finished_run(finished, output_root: Path) -> object:
    """``finished``'s folder copied to where the same config writes under ``output_root``;
    that config (the folder's identity holds, its output_dir is the copy)."""
    cfg = compose_config(FINISHED_RUN, output_root)
    shutil.copytree(finished.output_dir, cfg.output_dir)
    return cfg


@pytest.fixture
def finished_run_copy(finished_run, tmp_path):
    """A fresh copy of ``finished_run`` under ``tmp_path`` (as ``tiny_config(*FINISHED_RUN)``
    finds it), for a test that writes into the run: its config."""
    return copy_finished_run(finished_run, tmp_path)


class FixedBatchClient:
    """A node whose every mini-batch is the same: the local objective becomes deterministic."""

    node_id = 0

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.support_idx = torch.arange(len(labels))

    def sample_support_batch(self, batch_size, generator):
        return self.images, self.labels


def sliced_and_dense_stage_two(network, images, labels, monkeypatch, lr):
    """Stage II computed on the active subnet, and as a dense step with the masks held
    constant ("with the masks of φ_t"): the pair a test finds equal, since slicing is an
    optimization, not a change of the update."""
    sliced = copy.deepcopy(network)
    adapt_backbone(sliced, images, labels, lr=lr)
    dense = copy.deepcopy(network)
    monkeypatch.setattr(
        network_module, "binarize", lambda *args, **kwargs: binarize(*args, **kwargs).detach()
    )
    theta = [p for n, p in dense.named_parameters() if ".gate." not in n]
    grads = torch.autograd.grad(F.cross_entropy(dense(images), labels), theta)
    with torch.no_grad():
        for p, g in zip(theta, grads, strict=True):
            p.sub_(lr * g)
    return sliced, dense
