"""MetaSNIP's fast adaptation at a target node (SPEC §5; Lee et al. 2019 SNIP).

From the meta-backbone of MetaGater w/o gating: score every conv and linear weight by its
connection sensitivity |w · ∂L/∂w| on the support set, keep the top fraction over all of
them together (one global threshold, as SNIP does), zero the rest, then take one gradient
step in which only the kept weights (and the biases, never pruned) move. Pruning is
unstructured: it shrinks the model but, unlike MetaGater's channel gates, skips no dense
computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mglightning.models.network import GatedNetwork


def prunable_weights(network: GatedNetwork) -> list[nn.Parameter]:
    """The weight tensors SNIP scores: every conv and linear layer's, the head's included."""
    return [
        module.weight
        for name, module in network.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear) and not network.is_gate_parameter(f"{name}.")
    ]


def snip_masks(
    network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor, keep_fraction: float
) -> list[torch.Tensor]:
    """0/1 masks (one per prunable weight) keeping exactly round(keep_fraction · n) of the n
    weights, those of highest saliency |w · ∂L/∂w|."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"method.adaptation.keep_fraction={keep_fraction} must lie in (0, 1]")
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
    lr: float,
    keep_fraction: float,
) -> dict[str, float]:
    """Prune to ``keep_fraction`` of the conv+linear weights by SNIP, then one gradient step
    on the kept weights. Returns the row's ``sparsity``: the share of those weights pruned."""
    masks = snip_masks(network, images, labels, keep_fraction)
    weights = prunable_weights(network)
    with torch.no_grad():
        for weight, mask in zip(weights, masks, strict=True):
            weight.mul_(mask)
    params = list(network.parameters())
    grads = torch.autograd.grad(F.cross_entropy(network(images), labels), params, allow_unused=True)
    masked = {id(weight): mask for weight, mask in zip(weights, masks, strict=True)}
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            if grad is not None:
                param.sub_(grad * masked.get(id(param), 1.0), alpha=lr)
    kept = sum(int(mask.sum()) for mask in masks)
    return {"sparsity": 1.0 - kept / sum(mask.numel() for mask in masks)}
