"""The paper's backbones (METHOD.md §1), built for any input shape and class count.

A backbone is an object named by a config's ``model._target_``
(``conf/model/cnn4.yaml``: ``_target_: mglightning.models.backbones.cnn4``); called with the
input shape, the class count and the model config's options, it builds the gated network. A
chain of conv/linear layers is a :class:`Backbone` here; another topology is a module of its
own (:mod:`mglightning.models.resnet`) and a YAML file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mglightning.models.cost import closest_index, dense_macs
from mglightning.models.network import (
    GateBiasInit,
    GatedLayers,
    GatedNetwork,
    GateHidden,
    LayerSpec,
    LayerStack,
    Temperature,
    Width,
    scaled_width,
)
from mglightning.models.resnet import ResidualBackbone, cifar_resnet


@dataclass(frozen=True)
class Backbone:
    """A layer list without gates; called, it builds the network with gates on
    ``gated_layers`` (1-based, as "conv3" in the paper; the classifier head is never gated,
    and the config walker checks the layers exist)."""

    layers: tuple[LayerSpec, ...]

    def __call__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        gated_layers: GatedLayers = (),
        gate_hidden: GateHidden = 16,
        temperature: Temperature = 1.0,
        gate_bias_init: GateBiasInit = None,
        width: Width = 1.0,
    ) -> GatedNetwork:
        specs = [
            LayerSpec(spec.kind, scaled_width(spec.out, width), spec.pool,
                      gated=i + 1 in gated_layers)
            for i, spec in enumerate(self.layers)
        ]
        return LayerStack(
            tuple(input_shape), num_classes, specs, gate_hidden, temperature, gate_bias_init
        )

    def layer_count(self, options: Mapping) -> int:
        """How many layers ``model.gated_layers`` may name."""
        return len(self.layers)


mlp2 = Backbone((LayerSpec("linear", 100),))
cnn4 = Backbone((
    LayerSpec("conv", 32, "max"),
    LayerSpec("conv", 64, "max"),
    LayerSpec("conv", 128, "max"),
))
# cnn7's channel counts are not given by the paper: we pick 32-32-64-64-128-128 (widths
# doubling after each max-pool, ending at cnn4's 128), two 2×2 max-pools and a global average
# pool before the classifier.
cnn7 = Backbone((
    LayerSpec("conv", 32),
    LayerSpec("conv", 32, "max"),
    LayerSpec("conv", 64),
    LayerSpec("conv", 64, "max"),
    LayerSpec("conv", 128),
    LayerSpec("conv", 128, "global_avg"),
))
BACKBONES = {"mlp2": mlp2, "cnn4": cnn4, "cnn7": cnn7, "cifar_resnet": cifar_resnet}


def build_network(name: str, input_shape: Sequence[int], num_classes: int,
                  **options) -> GatedNetwork:
    """Backbone ``name`` (``cnn4``, …, ``cifar_resnet``) with ``options`` as a model config
    gives them: for tests, benches and the Flower ClientApp, which build a network without
    Hydra."""
    if name not in BACKBONES:
        raise ValueError(f"model.name={name!r} is not one of the backbones {sorted(BACKBONES)}")
    return BACKBONES[name](input_shape, num_classes, **options)


def width_for_macs(
    backbone: Backbone | ResidualBackbone, input_shape: Sequence[int], num_classes: int,
    target_macs: float, max_width: float = 4.0, resolution: float = 1e-3, **options,
) -> float:
    """The width multiplier (a multiple of ``resolution`` up to ``max_width``) whose ungated
    network's dense MACs come closest to ``target_macs``: the dense narrower partner of a
    gated network at equal MACs (METHOD.md §7); dense MACs never fall as the width grows."""

    def macs(index: int) -> int:  # width (index + 1) · resolution
        with torch.device("meta"):  # shapes only: no memory, no random draws
            network = backbone(input_shape, num_classes, width=(index + 1) * resolution,
                               **options)
        return dense_macs(network)

    index = closest_index(macs, round(max_width / resolution), target_macs)
    return round((index + 1) * resolution, 6)
