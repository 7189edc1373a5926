"""The paper's backbones (SPEC §1), built for any input shape and class count.

A backbone is a :class:`Backbone` object named by a config's ``model._target_``
(``conf/model/cnn4.yaml``: ``_target_: mglightning.models.backbones.cnn4``); a new backbone is
a new object here and a YAML file there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from mglightning.constraints import GATES_ONLY, integer, integer_list, number, optional
from mglightning.models.network import GatedNetwork, LayerSpec


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
        gated_layers: Annotated[Sequence[int], integer_list(1), GATES_ONLY] = (),
        gate_hidden: Annotated[int, integer(1), GATES_ONLY] = 16,
        temperature: Annotated[float, number(above=0), GATES_ONLY] = 1.0,
        gate_bias_init: Annotated[float | None, optional(number()), GATES_ONLY] = None,
    ) -> GatedNetwork:
        specs = [
            LayerSpec(spec.kind, spec.out, spec.pool, gated=i + 1 in gated_layers)
            for i, spec in enumerate(self.layers)
        ]
        return GatedNetwork(
            tuple(input_shape), num_classes, specs, gate_hidden, temperature, gate_bias_init
        )


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


def build_network(name: str, input_shape: Sequence[int], num_classes: int,
                  **options) -> GatedNetwork:
    """Backbone ``name`` of this module (``cnn4``, …) by the name the model config gives it:
    for tests and benches, which build a network without a config."""
    backbone = globals().get(name)
    if not isinstance(backbone, Backbone):
        raise ValueError(f"model.name={name!r} is not a backbone of {__name__}")
    return backbone(input_shape, num_classes, **options)
