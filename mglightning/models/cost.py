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


def layer_macs(network: GatedNetwork, index: int, in_channels, out_channels):
    """MACs for one input of block ``index`` (the head when ``index`` is past the last block)
    computing ``out_channels`` outputs from ``in_channels`` input channels; a linear layer
    reading a conv output reads each channel's whole map. Counts may be (B,) tensors."""
    in_shape = network.layer_shapes[index]  # shapes[-1], the last output, is the head's input
    is_conv = index < len(network.blocks) and network.blocks[index].spec.kind == "conv"
    per_pair = _numel(in_shape[1:]) * (9 if is_conv else 1)  # 3×3 kernels; 1 for flat inputs
    return out_channels * in_channels * per_pair


def forward_cost(
    network: GatedNetwork, masks: list[torch.Tensor], blocks: list[int] | None = None
) -> ForwardCost:
    """Cost of the inputs whose channel ``masks`` (one (B, C_out) per block of ``blocks``;
    default: the gated blocks, masks from their gates) are given. A mask on an ungated block
    is a fixed channel pruning (structured SNIP): its channels are skipped, no gate is paid."""
    blocks = network.gated_layers if blocks is None else list(blocks)
    batch = masks[0].shape[0] if masks else 1
    device = network.head.weight.device  # where the masks are, and the counts go
    masks = [mask.detach() for mask in masks]
    active_out = {block: mask.sum(dim=1) for block, mask in zip(blocks, masks, strict=True)}
    dense, executed = 0.0, torch.zeros(batch, device=device)
    in_active = torch.full((batch,), float(network.input_shape[0]), device=device)
    for index, block in enumerate(network.blocks):
        in_shape, out = network.layer_shapes[index], block.spec.out
        dense += layer_macs(network, index, in_shape[0], out)
        out_active = (active_out[index].float() if index in active_out
                      else torch.full((batch,), float(out), device=device))
        executed += layer_macs(network, index, in_active, out_active)
        if block.gate is not None:  # a conv's gate reads pooled channels, a linear's the inputs
            gate_inputs = in_active * (1 if block.spec.kind == "conv" else _numel(in_shape[1:]))
            hidden = block.gate.hidden.out_features
            executed += gate_inputs * hidden + hidden * out
        in_active = out_active
    classes, head = network.head.out_features, len(network.blocks)
    dense += layer_macs(network, head, network.layer_shapes[head][0], classes)
    executed += layer_macs(network, head, in_active, classes)
    layer_sparsity = [1.0 - mask.float().mean(dim=1) for mask in masks]
    total_channels = sum(mask.shape[1] for mask in masks)
    gated_sparsity = (
        1.0 - sum(mask.float().sum(dim=1) for mask in masks) / total_channels
        if masks
        else torch.zeros(batch, device=device)
    )
    return ForwardCost(dense, executed, layer_sparsity, gated_sparsity)
