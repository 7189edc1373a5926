"""Local solvers: (flat parameters, start point, node data, generator) → ClientResult.

They run in place on one shared :class:`FlatParameters` (no model copy per client, no
optimizer objects): load the start point, take the steps, hand back a copy of the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mglightning.federated.flat import FlatParameters
from mglightning.federated.server import ClientResult


def batch_loss(flat: FlatParameters, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(flat.module(images), labels)


@dataclass
class ProximalSGD:
    """Inexact solve of problem (5) (SPEC §3 step 3): m gradient steps of step η on
    L_i(x_i; batch) + (λ/2)‖x_i − x_start‖². With λ = 0 it is FedAvg's local SGD."""

    steps: int
    lr: float
    prox_lambda: float
    batch_size: int

    def __call__(
        self, flat: FlatParameters, start: torch.Tensor, client, generator
    ) -> ClientResult:
        flat.load(start)
        total_loss = 0.0
        for _ in range(self.steps):
            images, labels = client.sample_support_batch(self.batch_size, generator)
            flat.zero_grad()
            loss = batch_loss(flat, images, labels)
            loss.backward()
            if self.prox_lambda:
                flat.grad.add_(flat.vector - start, alpha=self.prox_lambda)
            flat.vector.add_(flat.grad, alpha=-self.lr)
            total_loss += loss.item()
        return ClientResult(
            client.node_id, flat.vector.clone(), len(client.support_idx), total_loss / self.steps
        )
