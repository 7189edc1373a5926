"""Local solvers: (flat parameters, start point, node data, generator, round) → ClientResult.

They run in place on one shared :class:`FlatParameters` (no model copy per client, no
optimizer objects): load the start point, take the steps, hand back a copy of the result.
Losses are summed on the parameters' device and never read back inside a solve: a GPU runs
the steps of every client of a round without waiting for the host. The round (1-based) is
there for what changes over the rounds (a fault drill, a term with a schedule); these two
solvers do not read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F

from mglightning.constraints import GATES_ONLY, boolean, integer, neutral, number, one_of, optional
from mglightning.federated.flat import FlatParameters
from mglightning.federated.gate_losses import GateLoss
from mglightning.federated.server import ClientResult
from mglightning.targets import bind

Steps = Annotated[int, integer(1)]  # m, local updates
BatchSize = Annotated[int, integer(1)]
# How Per-FedAvg's Hessian term ∇²f(θ; D″) v is taken (``method.local.hessian``).
HESSIAN_PRODUCTS = ("exact", "finite_difference")


def batch_loss(flat: FlatParameters, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(flat.module(images), labels)


def budget_term(masks: list[torch.Tensor], share_off: float, weight: float) -> torch.Tensor:
    """The sparsity budget of METHOD.md §7 (our extension, the paper has none):
    ``weight · max(0, share on − (1 − share_off))``, the share on taken over the batch and
    every gated channel. The masks' straight-through gradient (METHOD.md §1) carries it to the
    gates through the whole solve, unlike a gate-bias init; it pushes only while the batch
    uses more channels than the budget, so which channels stay on is left to the loss."""
    share_on = torch.cat(masks, dim=1).mean()
    return weight * torch.relu(share_on - (1.0 - share_off))


def proximal_step_(
    parameters: torch.Tensor, gradient: torch.Tensor, start: torch.Tensor,
    lr: float, prox_lambda: float, step_sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """One local step of problem (5) (METHOD.md §3 step 3), in place:
    x ← x − η (∇L_i(x; batch) + λ (x − x_start)), η = ``lr``, or per entry ``step_sizes``
    when given (the gates' own step, :meth:`ProximalSGD.step_sizes`).

    Every proximal-SGD solve steps here: one client's (P,) vector, or the (K, P) rows of K
    clients taken together (``start`` and ``step_sizes`` broadcast over the rows).
    Both ``parameters`` and ``gradient`` (the batch gradient at ``parameters``, left holding
    the proximal one) are updated in place: a solve steps on its own buffers. Returns
    ``parameters``."""
    if prox_lambda:
        gradient.add_(parameters - start, alpha=prox_lambda)
    if step_sizes is None:
        return parameters.add_(gradient, alpha=-lr)
    return parameters.addcmul_(gradient, step_sizes, value=-1.0)


def loss_accumulator(like: torch.Tensor) -> torch.Tensor:
    """A float64 zero on ``like``'s device, to sum a solve's step losses in without a sync."""
    return torch.zeros((), dtype=torch.float64, device=like.device)


@dataclass
class ProximalSGD:
    """Inexact solve of problem (5) (METHOD.md §3 step 3): m gradient steps of step η on
    L_i(x_i; batch) + (λ/2)‖x_i − x_start‖². With λ = 0 it is FedAvg's local SGD.
    ``gate_lr`` is the step of the gate parameters φ (None: η, as for θ). ``sparsity_off``
    adds the sparsity budget of :func:`budget_term` to L_i (None: none), with the weight
    ``sparsity_weight``. ``gate_loss`` adds a loss on each gate's values over the batch
    (a ``_target_`` node of :mod:`mglightning.federated.gate_losses`, METHOD.md §7, bound
    once here; None: none); with the budget set too, both are added."""

    steps: Steps
    lr: Annotated[float, number(above=0)]
    prox_lambda: Annotated[float, number(at_least=0)]
    batch_size: BatchSize
    gate_lr: Annotated[float | None, optional(number(at_least=0)), GATES_ONLY] = None
    sparsity_off: Annotated[float | None, optional(number(at_least=0, below=1)), GATES_ONLY,
                            neutral(None, "sparsity_weight")] = None
    sparsity_weight: Annotated[float, number(at_least=0), GATES_ONLY] = 1.0
    # No rule: the config walker checks the node's keys against its own _target_.
    gate_loss: Annotated[Mapping | GateLoss | None, GATES_ONLY, neutral(None)] = None
    gate_loss_term: GateLoss | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.gate_loss_term = (bind(self.gate_loss)() if isinstance(self.gate_loss, Mapping)
                               else self.gate_loss)

    def __call__(
        self, flat: FlatParameters, start: torch.Tensor, client, generator, round_index: int
    ) -> ClientResult:
        flat.load(start)
        step_sizes = self.step_sizes(flat)
        total_loss = loss_accumulator(start)
        for _ in range(self.steps):
            images, labels = client.sample_support_batch(self.batch_size, generator)
            flat.zero_grad()
            loss = self.loss(flat, images, labels, round_index)
            loss.backward()
            proximal_step_(flat.vector, flat.grad, start, self.lr, self.prox_lambda, step_sizes)
            total_loss += loss.detach()
        return ClientResult(
            client.node_id, flat.vector.clone(), len(client.support_idx), total_loss / self.steps
        )

    def loss(
        self, flat: FlatParameters, images: torch.Tensor, labels: torch.Tensor,
        round_index: int = 1,
    ) -> torch.Tensor:
        """L_i on a batch at round ``round_index``: cross-entropy, plus the sparsity budget
        when ``sparsity_off`` is set, plus the gate loss when one is set."""
        if self.sparsity_off is None and self.gate_loss_term is None:
            return batch_loss(flat, images, labels)
        output = flat.module.forward_with_masks(images)
        loss = F.cross_entropy(output.logits, labels)
        if self.sparsity_off is not None:
            loss = loss + budget_term(output.masks, self.sparsity_off, self.sparsity_weight)
        if self.gate_loss_term is not None:
            loss = loss + self.gate_loss_term(output.gate_logits, output.masks,
                                              flat.module.temperature, round_index)
        return loss

    def step_sizes(self, flat: FlatParameters) -> torch.Tensor | None:
        """Per-entry steps: ``gate_lr`` on φ, ``lr`` on θ; None when they are one step."""
        if self.gate_lr is None:
            return None
        return torch.full_like(flat.vector, self.lr).masked_fill_(flat.gate_mask, self.gate_lr)


@dataclass
class PerFedAvg:
    """Per-FedAvg's local solver (METHOD.md §5; Fallah et al. 2020): m steps of

        θ ← θ − β (I − α ∇²f(θ; D″)) ∇f(θ − α ∇f(θ; D); D′)

    with D, D′, D″ independent support batches. First-order (``hessian_free=False``) drops
    the Hessian term. With it, ``hessian`` says how the Hessian-vector product is taken:
    ``"exact"`` by double backpropagation, ∇(∇f(θ; D″) · v), or ``"finite_difference"``
    by central differences, (∇f(θ + δv; D″) − ∇f(θ − δv; D″)) / (2δ), as Fallah et al.'s
    HF variant. The difference is far from the product on a ReLU/max-pool network (cnn4:
    relative error 1.26 at δ = 1e-3 in float64, the kinks), and float32 round-off rules out
    a small δ, so exact is the default. Each step takes two gradients; the Hessian term adds
    two more by differences, about 3.5 gradients' time by double backpropagation (cnn4, one
    thread): the extra cost the paper's Table 1 times show.
    """

    steps: Steps
    alpha: Annotated[float, number(above=0)]
    beta: Annotated[float, number(above=0)]
    batch_size: BatchSize
    hessian_free: Annotated[bool, boolean()] = False
    hessian: Annotated[str, one_of(*HESSIAN_PRODUCTS)] = "exact"
    delta: Annotated[float, number(above=0)] = 1e-3  # δ of the finite difference

    def __call__(
        self, flat: FlatParameters, start: torch.Tensor, client, generator, round_index: int
    ) -> ClientResult:
        """``round_index``: the solver call's common signature; Per-FedAvg reads no round."""
        theta = start.clone()
        total_loss = loss_accumulator(start)
        for _ in range(self.steps):
            inner_grad, loss = self._gradient(flat, theta, client, generator)
            adapted = theta - self.alpha * inner_grad
            direction, _ = self._gradient(flat, adapted, client, generator)
            if self.hessian_free:
                hessian_vector = (self._exact_hessian_vector if self.hessian == "exact"
                                  else self._finite_difference_hessian_vector)
                curvature = hessian_vector(flat, theta, direction, client, generator)
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

    def _exact_hessian_vector(
        self, flat: FlatParameters, point: torch.Tensor, vector: torch.Tensor, client, generator
    ) -> torch.Tensor:
        """∇²f(point; D″) v as the gradient of ∇f(point; D″) · v (double backpropagation:
        one gradient with its graph, one backward through it)."""
        images, labels = client.sample_support_batch(self.batch_size, generator)
        flat.load(point)
        flat.zero_grad()
        parameters = list(flat.module.parameters())  # the order of flat's vector
        gradients = torch.autograd.grad(
            batch_loss(flat, images, labels), parameters, create_graph=True
        )
        torch.dot(torch.cat([gradient.reshape(-1) for gradient in gradients]), vector).backward()
        return flat.grad.clone()

    def _finite_difference_hessian_vector(
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
