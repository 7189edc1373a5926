"""Local solvers: (flat parameters, start point, node data, generator) → ClientResult.

They run in place on one shared :class:`FlatParameters` (no model copy per client, no
optimizer objects): load the start point, take the steps, hand back a copy of the result.
Losses are summed on the parameters' device and never read back inside a solve: a GPU runs
the steps of every client of a round without waiting for the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F

from mglightning.constraints import boolean, integer, number, optional
from mglightning.federated.flat import FlatParameters
from mglightning.federated.server import ClientResult

Steps = Annotated[int, integer(1)]  # m, local updates
BatchSize = Annotated[int, integer(1)]


def batch_loss(flat: FlatParameters, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(flat.module(images), labels)


def loss_accumulator(like: torch.Tensor) -> torch.Tensor:
    """A float64 zero on ``like``'s device, to sum a solve's step losses in without a sync."""
    return torch.zeros((), dtype=torch.float64, device=like.device)


@dataclass
class ProximalSGD:
    """Inexact solve of problem (5) (SPEC §3 step 3): m gradient steps of step η on
    L_i(x_i; batch) + (λ/2)‖x_i − x_start‖². With λ = 0 it is FedAvg's local SGD.
    ``gate_lr`` is the step of the gate parameters φ (None: η, as for θ)."""

    steps: Steps
    lr: Annotated[float, number(above=0)]
    prox_lambda: Annotated[float, number(at_least=0)]
    batch_size: BatchSize
    gate_lr: Annotated[float | None, optional(number(at_least=0))] = None

    def __call__(
        self, flat: FlatParameters, start: torch.Tensor, client, generator
    ) -> ClientResult:
        flat.load(start)
        step_sizes = self.step_sizes(flat)
        total_loss = loss_accumulator(start)
        for _ in range(self.steps):
            images, labels = client.sample_support_batch(self.batch_size, generator)
            flat.zero_grad()
            loss = batch_loss(flat, images, labels)
            loss.backward()
            if self.prox_lambda:
                flat.grad.add_(flat.vector - start, alpha=self.prox_lambda)
            if step_sizes is None:
                flat.vector.add_(flat.grad, alpha=-self.lr)
            else:
                flat.vector.addcmul_(flat.grad, step_sizes, value=-1.0)
            total_loss += loss.detach()
        return ClientResult(
            client.node_id, flat.vector.clone(), len(client.support_idx), total_loss / self.steps
        )

    def step_sizes(self, flat: FlatParameters) -> torch.Tensor | None:
        """Per-entry steps: ``gate_lr`` on φ, ``lr`` on θ; None when they are one step."""
        if self.gate_lr is None:
            return None
        return torch.full_like(flat.vector, self.lr).masked_fill_(flat.gate_mask, self.gate_lr)


@dataclass
class PerFedAvg:
    """Per-FedAvg's local solver (SPEC §5; Fallah et al. 2020): m steps of

        θ ← θ − β (I − α ∇²f(θ; D″)) ∇f(θ − α ∇f(θ; D); D′)

    with D, D′, D″ independent support batches. First-order (``hessian_free=False``) drops
    the Hessian term; Hessian-free estimates the Hessian-vector product by central finite
    differences, (∇f(θ + δv; D″) − ∇f(θ − δv; D″)) / (2δ). Each step takes two gradients
    (four with the Hessian term): the extra cost the paper's Table 1 times show.
    """

    steps: Steps
    alpha: Annotated[float, number(above=0)]
    beta: Annotated[float, number(above=0)]
    batch_size: BatchSize
    hessian_free: Annotated[bool, boolean()] = False
    delta: Annotated[float, number(above=0)] = 1e-3

    def __call__(
        self, flat: FlatParameters, start: torch.Tensor, client, generator
    ) -> ClientResult:
        theta = start.clone()
        total_loss = loss_accumulator(start)
        for _ in range(self.steps):
            inner_grad, loss = self._gradient(flat, theta, client, generator)
            adapted = theta - self.alpha * inner_grad
            direction, _ = self._gradient(flat, adapted, client, generator)
            if self.hessian_free:
                curvature = self._hessian_vector(flat, theta, direction, client, generator)
                direction -= self.alpha * curvature
            theta -= self.beta * direction
            total_loss += loss
        flat.load(theta)
        return ClientResult(
            client.node_id, theta, len(client.support_idx), total_loss / self.steps
        )

    def _gradient(
        self, flat: FlatParameters, point: torch.Tensor, client, generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """∇f(point; batch) on a fresh support batch, and the batch loss (0-dim, detached)."""
        images, labels = client.sample_support_batch(self.batch_size, generator)
        flat.load(point)
        flat.zero_grad()
        loss = batch_loss(flat, images, labels)
        loss.backward()
        return flat.grad.clone(), loss.detach()

    def _hessian_vector(
        self, flat: FlatParameters, point: torch.Tensor, vector: torch.Tensor, client, generator
    ) -> torch.Tensor:
        """∇²f(point; D″) v by central differences, both gradients on the same batch D″."""
        images, labels = client.sample_support_batch(self.batch_size, generator)
        grads = []
        for sign in (1.0, -1.0):
            flat.load(point + sign * self.delta * vector)
            flat.zero_grad()
            batch_loss(flat, images, labels).backward()
            grads.append(flat.grad.clone())
        return (grads[0] - grads[1]) / (2 * self.delta)
