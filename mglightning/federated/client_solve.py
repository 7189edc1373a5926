"""One node's local solve in a round (METHOD.md §3 step 3): from x_md, with the node's own streams.

The in-process learner and a Flower ClientApp (through
:meth:`~mglightning.federated.training_node.TrainingNode.solve`) both call :func:`solve_client`,
so a node's result is the same function of (seed, round, position, x_md, its data) on either
side. Light on purpose (torch alone): a ClientApp process imports it for every message.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mglightning.federated.flat import FlatParameters
from mglightning.federated.server import ClientResult
from mglightning.federated.streams import client_streams


def solve_client(
    local_solver: Callable[..., ClientResult],
    flat: FlatParameters,
    x_md: torch.Tensor,
    client,
    seed: int,
    round_index: int,
    position: int,
    gate_noise: float,
) -> ClientResult:
    """``local_solver`` on ``client``, the ``position``-th chosen in round ``round_index``, from
    x_md: its batches from the client's sampling stream and, at scale ``gate_noise``, its gate
    noise from its noise stream (:func:`~mglightning.federated.streams.client_streams`); the
    network (``flat.module``) is left without noise."""
    sampling, noise = client_streams(seed, round_index, position, x_md.device)
    flat.module.set_gate_noise(gate_noise, noise)
    try:
        return local_solver(flat, x_md, client, sampling, round_index)
    finally:
        flat.module.set_gate_noise(0.0)
