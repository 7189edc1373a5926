"""One-step fast adaptation at a target node (METHOD.md §4 and §5).

Each function adapts, in place, a copy of the meta-network that the caller made (so that
the learning time measured around it is the adaptation alone). ``two_stage`` is MetaGater's;
``one_step`` is the target step of FedAvg, Per-FedAvg and MetaGater w/o gating (for which
``two_stage`` reduces to it, having no gates).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from mglightning.constraints import GATES_ONLY, integer, number, optional
from mglightning.models.network import GatedNetwork

StepSize = Annotated[float, number(above=0)]  # η_a, every rule's target step (METHOD.md §4)


def _gradient_step(params: list[nn.Parameter], loss: torch.Tensor, lr: float) -> None:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            if grad is not None:
                param.sub_(grad, alpha=lr)


def _split_parameters(network: GatedNetwork) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(θ backbone, φ gate) parameters."""
    theta, phi = [], []
    for name, param in network.named_parameters():
        (phi if network.is_gate_parameter(name) else theta).append(param)
    return theta, phi


def adapt_gates(
    network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor, lr: float,
    first_block: int | None = None,
) -> None:
    """Stage I: φ_t = φ* − η_a ∇_φ L(θ*, φ*), the backbone fixed. The forward is dense: the
    gate's straight-through gradient needs every channel's output, on or off. ``images``
    may be the input of block ``first_block`` instead (see :func:`two_stage`)."""
    _, phi = _split_parameters(network)
    if phi:
        logits = network.forward_with_masks(images, first_block=first_block).logits
        _gradient_step(phi, F.cross_entropy(logits, labels), lr)


def adapt_backbone(
    network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor, lr: float,
    first_block: int | None = None,
) -> None:
    """Stage II: θ_t = θ* − η_a ∇_θ L(θ*, φ_t) through the sliced forward: only the active
    subnet is computed, so only the active channels' filters (and the weights reading them)
    change; the gates stay as Stage I left them. ``images`` may be the input of block
    ``first_block``, still attached to the graph of the blocks before it."""
    theta, _ = _split_parameters(network)
    logits = network.forward_with_masks(images, sliced=True, first_block=first_block).logits
    _gradient_step(theta, F.cross_entropy(logits, labels), lr)


def two_stage(
    network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor, lr: StepSize,
    gate_lr: Annotated[float | None, optional(number(at_least=0)), GATES_ONLY] = None,
    stage1_steps: Annotated[int, optional(integer(1)), GATES_ONLY] = 1,
) -> None:
    """MetaGater's fast adaptation (METHOD.md §4): Stage I, then Stage II with the new masks.

    Stage I takes ``stage1_steps`` gradient steps of size ``gate_lr`` (None: ``lr``) on the
    gates; METHOD.md §4 is one step of η_a. Stage II takes one step of ``lr`` on the backbone.
    The stem and the blocks before the first gated one depend on θ alone, which Stage I
    leaves as it is: their output is computed once and serves both stages (Stage I reads it
    detached)."""
    gated = network.gated_layers
    first = gated[0] if gated else len(network.blocks)
    features = network.features(images, first)  # input of the first gated block
    for _ in range(stage1_steps):
        adapt_gates(network, features.detach(), labels, lr if gate_lr is None else gate_lr,
                    first_block=first)
    adapt_backbone(network, features, labels, lr, first_block=first)


def one_step(network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor,
             lr: StepSize) -> None:
    """One gradient step on all parameters (the baselines' target step, METHOD.md §5)."""
    _gradient_step(list(network.parameters()), F.cross_entropy(network(images), labels), lr)
