"""Sparsity and multiply-accumulate counts of a gated forward pass (SPEC §1).

Counts are MACs of the conv/linear layers (pooling and ReLU are negligible and left out).
"Dense" is the plain backbone; "executed" is what a sliced forward computes for one input:
a gated layer computes only its active filters, the next layer reads only active channels,
and the gates' own MLPs are added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mglightning.models.network import GatedNetwork, _numel


@dataclass
class ForwardCost:
    """Per-input cost of one forward pass. Tensors are (B,)."""

    dense_macs: float
    executed_macs: torch.Tensor
    layer_sparsity: list[torch.Tensor]  # per gated layer: fraction of its channels off
    gated_sparsity: torch.Tensor  # all gated layers together

    @property
    def flops_skipped(self) -> torch.Tensor:
        """Share of the dense network's MACs not executed (negative if gates cost more)."""
        return 1.0 - self.executed_macs / self.dense_macs


def forward_cost(network: GatedNetwork, masks: list[torch.Tensor]) -> ForwardCost:
    """Cost of the inputs whose gate ``masks`` (one (B, C_out) per gated layer) are given."""
    batch = masks[0].shape[0] if masks else 1
    masks = [mask.detach() for mask in masks]
    active_out = iter(mask.sum(dim=1) for mask in masks)
    dense, executed = 0.0, torch.zeros(batch)
    in_active = torch.full((batch,), float(network.input_shape[0]))
    for block, in_shape in zip(network.blocks, network.layer_shapes, strict=False):
        spec = block.spec
        if spec.kind == "linear" and len(in_shape) > 1:  # flattened conv features
            in_active, in_full = in_active * _numel(in_shape[1:]), _numel(in_shape)
        else:
            in_full = in_shape[0]
        per_channel = 9 * _numel(in_shape[1:]) if spec.kind == "conv" else 1  # MACs per in×out pair
        dense += spec.out * in_full * per_channel
        out_active = (
            next(active_out).float()
            if block.gate is not None
            else torch.full((batch,), float(spec.out))
        )
        executed += out_active * in_active * per_channel
        if block.gate is not None:
            hidden = block.gate.hidden.out_features
            executed += in_active * hidden + hidden * spec.out
        in_active = out_active
    last_shape = network.layer_shapes[-1]
    if len(last_shape) > 1:
        in_active = in_active * _numel(last_shape[1:])
    dense += network.head.out_features * _numel(last_shape)
    executed += network.head.out_features * in_active
    layer_sparsity = [1.0 - mask.float().mean(dim=1) for mask in masks]
    total_channels = sum(mask.shape[1] for mask in masks)
    gated_sparsity = (
        1.0 - sum(mask.float().sum(dim=1) for mask in masks) / total_channels
        if masks
        else torch.zeros(batch)
    )
    return ForwardCost(dense, executed, layer_sparsity, gated_sparsity)
