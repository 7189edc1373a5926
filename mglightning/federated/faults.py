"""Client faults on purpose: a wrapper around any local solver that makes chosen nodes fail at
chosen rounds, so that drills and tests show a round surviving them (config ``faults.inject``).

The wrapped solver runs first and the fault comes after, at the end of the local solve: the
round's random stream is then the same as without the fault, and only the failing node's
result differs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

import torch

from mglightning.federated.server import ClientResult

FAULT_KINDS = ("raise", "nan")


class ClientError(RuntimeError):
    """A failure of one client's own making: its round goes on without it (see
    :mod:`mglightning.federated.learner`). Client code raises a subclass of it."""


class InjectedFault(ClientError):
    """The failure a :class:`FaultInjection` raises for ``kind="raise"``."""


@dataclass
class FaultInjection:
    """A local solver whose ``clients`` (node ids) fail at ``rounds`` (None: every round),
    raising :class:`InjectedFault` or returning NaN parameters; ``current_round()`` says
    which round is under way."""

    solver: Callable[..., ClientResult]
    clients: Collection[int]
    kind: str
    rounds: Collection[int] | None
    current_round: Callable[[], int]

    def __call__(self, flat, start: torch.Tensor, client, generator,
                 round_index: int = 1) -> ClientResult:
        result = self.solver(flat, start, client, generator, round_index)
        if not self.fails(client.node_id):
            return result
        if self.kind == "raise":
            raise InjectedFault(f"injected fault at node {client.node_id}, round "
                                f"{self.current_round()}")
        return replace(result, params=torch.full_like(result.params, float("nan")))

    def fails(self, node_id: int) -> bool:
        return node_id in self.clients and (
            self.rounds is None or self.current_round() in self.rounds
        )
