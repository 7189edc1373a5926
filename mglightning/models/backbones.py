"""The paper's backbones (SPEC §1), built for any input shape and class count."""

from __future__ import annotations

from collections.abc import Sequence

from mglightning.models.network import GatedNetwork, LayerSpec

# Layer lists without gates; `build_network` marks the gated ones. cnn7's channel counts are
# not given by the paper: we pick 32-32-64-64-128-128 (widths doubling after each max-pool,
# ending at cnn4's 128), two 2×2 max-pools and a global average pool before the classifier.
BACKBONES: dict[str, list[LayerSpec]] = {
    "mlp2": [LayerSpec("linear", 100)],
    "cnn4": [
        LayerSpec("conv", 32, "max"),
        LayerSpec("conv", 64, "max"),
        LayerSpec("conv", 128, "max"),
    ],
    "cnn7": [
        LayerSpec("conv", 32),
        LayerSpec("conv", 32, "max"),
        LayerSpec("conv", 64),
        LayerSpec("conv", 64, "max"),
        LayerSpec("conv", 128),
        LayerSpec("conv", 128, "global_avg"),
    ],
}


def build_network(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    gated_layers: Sequence[int] = (),
    gate_hidden: int = 16,
    temperature: float = 1.0,
    gate_bias_init: float | None = None,
) -> GatedNetwork:
    """Build backbone ``name`` with gates on ``gated_layers`` (1-based, as "conv3" in the paper)."""
    if name not in BACKBONES:
        raise ValueError(f"model.name={name!r} is unknown: choose one of {sorted(BACKBONES)}")
    layers = BACKBONES[name]
    bad = [layer for layer in gated_layers if not 1 <= layer <= len(layers)]
    if bad:
        raise ValueError(
            f"model.gated_layers={list(gated_layers)} names layers {bad} that {name} lacks: "
            f"it has layers 1..{len(layers)} (the classifier head is never gated)"
        )
    specs = [
        LayerSpec(spec.kind, spec.out, spec.pool, gated=i + 1 in gated_layers)
        for i, spec in enumerate(layers)
    ]
    return GatedNetwork(
        tuple(input_shape), num_classes, specs, gate_hidden, temperature, gate_bias_init
    )
