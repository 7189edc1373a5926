"""The workload every benchmark runs on: the real config, data module and learner.

Fashion-MNIST comes from the offline files when present (Debian's dataset-fashion-mnist or
torchvision's folder); otherwise a synthetic data set of the same shape (1×28×28, 10 classes,
70 000 images) stands in, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from mglightning import build
from mglightning.data.datamodule import FederatedDataModule
from mglightning.data.datasets import DataError, fmnist
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.models.network import GatedNetwork

FMNIST_STAND_IN = [  # synthetic data of Fashion-MNIST's shape and size
    "dataset=synthetic",
    "dataset.source.num_classes=10",
    "dataset.source.shape=[1,28,28]",
    "dataset.source.samples_per_class=7000",
    "dataset.batch_size=32",
    "dataset.partition.num_nodes=120",
    "dataset.num_target_nodes=20",
    "dataset.partition.size_range=[100,800]",
]


def fmnist_available() -> bool:
    """Whether Fashion-MNIST loads offline here."""
    try:
        fmnist(download=False)
    except DataError:
        return False
    return True


def dataset_overrides() -> tuple[list[str], str]:
    """Config overrides selecting the bench's data set, and a line naming it for the report."""
    if fmnist_available():
        return ["dataset=fmnist", "dataset.source.download=false"], "Fashion-MNIST (offline files)"
    return FMNIST_STAND_IN, "synthetic stand-in of Fashion-MNIST's shape (files not found)"


def compose_config(overrides: list[str]) -> DictConfig:
    """The training config (cnn4, MetaGater, K = 20, batch 32 by default) with overrides."""
    return build.compose_config(["logger=none", "progress_bar=false", *overrides])


@dataclass
class Workload:
    """A set-up federation: config, data module and a fresh learner at x_0."""

    cfg: DictConfig
    datamodule: FederatedDataModule
    learner: FederatedMetaLearner


def build_workload(overrides: list[str]) -> Workload:
    cfg = compose_config(overrides)
    datamodule = build.build_datamodule(cfg)
    learner = build.build_learner(cfg, datamodule)
    return Workload(cfg, datamodule, learner)


GATE_BIAS = 10.0  # far beyond the gates' input-dependent logits: the channel is decided


def sparsify_gates(
    network: GatedNetwork, off_fraction: float, varying_fraction: float, seed: int
) -> None:
    """Give every gated layer a realistic share of off channels by setting gate biases:
    ``off_fraction`` of the channels are always off (bias −10), ``varying_fraction`` keep
    their input-dependent logits, the rest are always on (bias +10). A freshly initialized
    or briefly trained gate leaves nearly all channels on, which would measure nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for index in network.gated_layers:
            bias = network.blocks[index].gate.out.bias
            order = torch.randperm(bias.numel(), generator=generator)
            num_off = round(off_fraction * bias.numel())
            num_varying = round(varying_fraction * bias.numel())
            bias[order[:num_off]] = -GATE_BIAS
            bias[order[num_off + num_varying:]] = GATE_BIAS
