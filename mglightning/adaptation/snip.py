"""MetaSNIP's fast adaptation at a target node (METHOD.md §5; Lee et al. 2019 SNIP), and its
structured twin.

From the meta-backbone of MetaGater w/o gating: score every conv and linear weight by its
connection sensitivity |w · ∂L/∂w| on the support set, keep the top fraction over all of
them together (one global threshold, as SNIP does), zero the rest, then take one gradient
step in which only the kept weights (and the biases, never pruned) move. Pruning is
unstructured: it shrinks the model but, unlike MetaGater's channel gates, skips no dense
computation.

``snip_channels`` is the same idea in MetaGater's unit: it scores the output channels of the
layers MetaGater gates by the sensitivity of a channel mask, |∂L/∂m_c| at m = 1, and switches
the lowest off for every input of the task, so its sparsity and MACs skipped compare with the
gates' directly.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from mglightning.adaptation.steps import StepSize
from mglightning.constraints import integer_list, number
from mglightning.models.cost import closest_index, forward_cost
from mglightning.models.network import GatedNetwork

KeepFraction = Annotated[float, number(above=0, at_most=1)]  # the share of weights (channels) kept


def prunable_weights(network: GatedNetwork) -> list[nn.Parameter]:
    """The weight tensors SNIP scores: every conv and linear op's of the backbone, the head's
    included (the network's description lists them; gates are not pruned)."""
    return [network.get_parameter(op.weight) for op in network.describe().backbone_ops]


def snip_masks(
    network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor, keep_fraction: float
) -> list[torch.Tensor]:
    """0/1 masks (one per prunable weight) keeping exactly round(keep_fraction · n) of the n
    weights, those of highest saliency |w · ∂L/∂w|."""
    weights = prunable_weights(network)
    grads = torch.autograd.grad(F.cross_entropy(network(images), labels), weights)
    saliency = torch.cat([(w * g).abs().reshape(-1) for w, g in zip(weights, grads, strict=True)])
    keep = torch.zeros_like(saliency, dtype=torch.bool)
    keep[saliency.topk(round(keep_fraction * saliency.numel())).indices] = True
    pieces = keep.split([w.numel() for w in weights])
    return [piece.view_as(w) for piece, w in zip(pieces, weights, strict=True)]


def snip(
    network: GatedNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: StepSize,
    keep_fraction: KeepFraction,
) -> dict[str, float]:
    """Prune to ``keep_fraction`` of the conv+linear weights by SNIP, then one gradient step
    on the kept weights. Returns the row's ``sparsity``: the share of those weights pruned."""
    masks = snip_masks(network, images, labels, keep_fraction)
    _pruned_step(network, images, labels, lr, dict(zip(prunable_weights(network), masks,
                                                        strict=True)))
    kept = sum(int(mask.sum()) for mask in masks)
    return {"sparsity": 1.0 - kept / sum(mask.numel() for mask in masks)}


def _pruned_step(
    network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor, lr: float,
    masks: dict[nn.Parameter, torch.Tensor],
) -> None:
    """Zero each parameter of ``masks`` where its (broadcastable) 0/1 mask is 0, then one
    gradient step in which the pruned entries stay zero."""
    with torch.no_grad():
        for param, mask in masks.items():
            param.mul_(mask)
    params = list(network.parameters())
    grads = torch.autograd.grad(F.cross_entropy(network(images), labels), params, allow_unused=True)
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            if grad is not None:
                param.sub_(grad * masks.get(param, 1.0), alpha=lr)


def channel_saliency(
    network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor, blocks: list[int]
) -> list[torch.Tensor]:
    """Per gate point of ``blocks`` (0-based), the (C,) saliency |∂L/∂m_c| at m = 1 of a
    mask m scaling the point's channel c where its gate's mask acts: SNIP's connection
    sensitivity of a whole channel."""
    like = network.head.weight  # the parameters' device and dtype
    points = network.describe().points
    scales = {block: torch.ones(points[block].channels, device=like.device, dtype=like.dtype,
                                requires_grad=True) for block in blocks}
    logits = network.forward_with_masks(images, channel_scales=scales).logits
    return [grad.abs() for grad in torch.autograd.grad(F.cross_entropy(logits, labels),
                                                       list(scales.values()))]


def snip_channels(
    network: GatedNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: StepSize,
    keep_fraction: KeepFraction,
    layers: Annotated[list[int], integer_list(1)],
) -> dict[str, float]:
    """Structured SNIP: at each gate point of ``layers`` (1-based, as ``model.gated_layers``)
    keep the max(1, round(keep_fraction · C)) channels of highest :func:`channel_saliency`,
    switch the rest off for every input (their producers zeroed: filter, bias, norm affine;
    ReLU(0) = 0), then one gradient step on what is left. Returns sparsity, MACs skipped and
    executed in the units of MetaGater's rows (channels off at those points; the ops writing
    and reading them)."""
    blocks = [layer - 1 for layer in layers]
    keeps = []
    for saliency in channel_saliency(network, images, labels, blocks):
        keep = torch.zeros_like(saliency)
        keep[saliency.topk(kept_channels(keep_fraction, saliency.numel())).indices] = 1.0
        keeps.append(keep)
    masks = {}
    points = network.describe().points
    for block, keep in zip(blocks, keeps, strict=True):
        for name in points[block].producers:  # entry c along dim 0 makes channel c
            producer = network.get_parameter(name)
            masks[producer] = keep.view(-1, *[1] * (producer.dim() - 1))
    _pruned_step(network, images, labels, lr, masks)
    cost = forward_cost(network, [keep[None] for keep in keeps], blocks)
    return {
        "sparsity": float(cost.gated_sparsity.mean()),
        "flops_skipped": float(cost.flops_skipped.mean()),
        "executed_macs": float(cost.executed_macs.mean()),
        **{f"sparsity_layer{layer}": float(sparsity.mean())
           for layer, sparsity in zip(layers, cost.layer_sparsity, strict=True)},
    }


def kept_channels(keep_fraction: float, channels: int) -> int:
    """How many of a point's ``channels`` structured SNIP keeps: max(1, round(keep_fraction ·
    C)), at least one, so that no layer is cut through."""
    return max(1, round(keep_fraction * channels))


def pruned_macs(network: GatedNetwork, blocks: list[int], kept: list[int]) -> float:
    """Executed MACs of one input with ``kept`` channels on at each gate point of ``blocks``
    (0-based) and no gate paid (:func:`~mglightning.models.cost.forward_cost`): which of
    them does not change the count, only how many."""
    like = network.head.weight  # the parameters' device and dtype
    points = network.describe().points
    masks = [(torch.arange(points[block].channels, device=like.device) < count)[None].float()
             for block, count in zip(blocks, kept, strict=True)]  # (1, C) each
    return float(forward_cost(network, masks, blocks).executed_macs[0])


def keep_fraction_for_macs(network: GatedNetwork, layers: list[int], target_macs: float) -> float:
    """The keep fraction for :func:`snip_channels` on ``layers`` (1-based) whose executed MACs
    come closest to ``target_macs``: the structured SNIP partner of a gated network at equal
    MACs (METHOD.md §7), from the network's description alone. A layer's kept count steps up
    where keep · C crosses k + ½, so the MACs are a step function of the keep fraction that
    never falls; one keep fraction inside each interval between those points (its middle,
    clear of round's ties; 1 for the last) stands for the whole interval."""
    blocks = [layer - 1 for layer in layers]
    points = network.describe().points
    channels = [points[block].channels for block in blocks]
    steps = sorted({(count + 0.5) / total for total in channels for count in range(total)})
    candidates = [*((low + high) / 2 for low, high in pairwise([0.0, *steps])), 1.0]

    def macs(index: int) -> float:
        return pruned_macs(network, blocks,
                           [kept_channels(candidates[index], total) for total in channels])

    return candidates[closest_index(macs, len(candidates), target_macs)]
