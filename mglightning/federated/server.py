"""Server steps (``method.server``): ``configure`` says what clients start from (x_md),
``aggregate`` turns their results into the next server state.

Shaped as a Flower strategy's configure → aggregate, but named as our own: they are not
Flower's methods (``configure_fit``, ``aggregate_fit`` take other arguments), and a Flower
strategy wraps them unchanged (:mod:`mglightning.flower.strategy`). Both are pure functions of
tensors so that METHOD.md §3's special cases can be tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from mglightning.constraints import boolean, number
from mglightning.devices import from_host
from mglightning.federated.prox import L1, GroupLasso


@dataclass
class ClientResult:
    """What a node sends back: its local parameters, its support size and mean local loss
    (a 0-dim tensor on the parameters' device, read once per round, not once per client)."""

    node_id: int
    params: torch.Tensor
    num_samples: int
    loss: torch.Tensor


def client_mean(results: list[ClientResult], weighted: bool) -> torch.Tensor:
    """Mean of the local models, optionally weighted by node size."""
    stacked = torch.stack([result.params for result in results])  # (clients, P)
    if not weighted:
        return stacked.mean(dim=0)
    sizes = from_host(torch.tensor([float(result.num_samples) for result in results],
                                   dtype=stacked.dtype, device="cpu"), stacked.device)
    return (sizes / sizes.sum()) @ stacked


@dataclass
class AcceleratedProximalStep:
    """Algorithm 1's server (METHOD.md §3): accelerated proximal meta-gradient steps.

    x_md = (1−α_t) x_ag + α_t x;  G = λ (x_md − mean x_i);
    x ← prox_{λ_t h}(x − λ_t G);  x_ag ← prox_{β h}(x_md − β G);
    α_t = 2/(t+1) (or 1 with ``accelerated=False``), λ_t = (1 + c α_t/4) β.
    """

    prox_lambda: Annotated[float, number(at_least=0)]
    beta: Annotated[float, number(above=0)]
    c: Annotated[float, number(at_least=0)] = 1.0
    accelerated: Annotated[bool, boolean()] = True
    weighted: Annotated[bool, boolean()] = False
    regularizer: GroupLasso | L1 | None = None

    def alpha(self, round_index: int) -> float:
        return 2.0 / (round_index + 1) if self.accelerated else 1.0

    def configure(self, x: torch.Tensor, x_ag: torch.Tensor, round_index: int) -> torch.Tensor:
        alpha = self.alpha(round_index)
        return (1 - alpha) * x_ag + alpha * x

    def meta_gradient(self, x_md: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        """G = λ (x_md − mean_i x_i), the average of ∇F_i(x_md) = λ (x_md − x_i*)."""
        return self.prox_lambda * (x_md - client_mean(results, self.weighted))

    def aggregate(
        self,
        x: torch.Tensor,
        x_ag: torch.Tensor,
        x_md: torch.Tensor,
        results: list[ClientResult],
        round_index: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gradient = self.meta_gradient(x_md, results)
        step_x = (1 + self.c * self.alpha(round_index) / 4) * self.beta
        new_x = self._prox(x - step_x * gradient, step_x)
        new_x_ag = self._prox(x_md - self.beta * gradient, self.beta)
        return new_x, new_x_ag

    def _prox(self, vector: torch.Tensor, step: float) -> torch.Tensor:
        return vector if self.regularizer is None else self.regularizer.prox(vector, step)


@dataclass
class FedAvgStep:
    """FedAvg / Per-FedAvg server (METHOD.md §5): the next model is the (size-weighted) average."""

    weighted: Annotated[bool, boolean()] = True

    def configure(self, x: torch.Tensor, x_ag: torch.Tensor, round_index: int) -> torch.Tensor:
        return x

    def aggregate(
        self,
        x: torch.Tensor,
        x_ag: torch.Tensor,
        x_md: torch.Tensor,
        results: list[ClientResult],
        round_index: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        average = client_mean(results, self.weighted)
        return average, average.clone()
