"""Sparsity and multiply-accumulate counts of a gated forward pass (METHOD.md §1).

Counts are MACs of the conv/linear ops the network's description lists
(:mod:`mglightning.models.gate_points`; pooling, norms, ReLU and residual additions are
negligible and left out). "Dense" is the plain backbone; "executed" is what a sliced forward
computes for one input: an op computes only the active channels of the gate point that sets
its outputs, reads only those of the point that sets its inputs, and the gates' own MLPs are
added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mglightning.models.gate_points import MacOp
from mglightning.models.network import GatedNetwork


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


def dense_macs(network: GatedNetwork) -> int:
    """MACs of one input through the backbone with every channel on, no gate."""
    return sum(op.out_channels * op.in_channels * op.per_pair
               for op in network.describe().backbone_ops)


def forward_cost(
    network: GatedNetwork, masks: list[torch.Tensor], blocks: list[int] | None = None
) -> ForwardCost:
    """Cost of the inputs whose channel ``masks`` (one (B, C) per gate point of ``blocks``,
    0-based; default: the gated points, masks from their gates) are given. A mask on an
    ungated point is a fixed channel pruning (structured SNIP): its channels are skipped, no
    gate is paid."""
    description = network.describe()
    blocks = description.gated if blocks is None else list(blocks)
    batch = masks[0].shape[0] if masks else 1
    device = network.head.weight.device  # where the masks are, and the counts go
    masks = [mask.detach() for mask in masks]
    active = {block: mask.sum(dim=1).float() for block, mask in zip(blocks, masks, strict=True)}

    def active_count(point: int | None, channels: int) -> torch.Tensor:  # (B,)
        if point in active:
            return active[point]
        return torch.full((batch,), float(channels), device=device)

    dense, executed = 0.0, torch.zeros(batch, device=device)
    for op in description.ops:  # summed in forward order, as float32 rounds
        if isinstance(op, MacOp):
            dense += op.out_channels * op.in_channels * op.per_pair
            executed += (active_count(op.out_point, op.out_channels)
                         * active_count(op.in_point, op.in_channels) * op.per_pair)
        else:  # a gate MLP: its inputs → hidden → one logit per channel of its point
            inputs = active_count(op.in_point, op.in_channels) * op.inputs_per_channel
            executed += inputs * op.hidden + op.hidden * op.outputs
    layer_sparsity = [1.0 - mask.float().mean(dim=1) for mask in masks]
    total_channels = sum(mask.shape[1] for mask in masks)
    gated_sparsity = (
        1.0 - sum(mask.float().sum(dim=1) for mask in masks) / total_channels
        if masks
        else torch.zeros(batch, device=device)
    )
    return ForwardCost(dense, executed, layer_sparsity, gated_sparsity)


def closest_index(cost: Callable[[int], float], count: int, target: float) -> int:
    """The index i in 0..count-1 whose ``cost(i)`` comes closest to ``target``, for a cost that
    never falls as i grows (a network's MACs against its width or keep fraction): a bisection
    finds the last index at or under the target; it or the next is closest."""
    low, high = 0, count - 1
    if cost(low) > target:
        return low
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= target:
            low = middle
        else:
            high = middle - 1
    if low + 1 < count and cost(low + 1) - target < target - cost(low):
        low += 1
    return low
