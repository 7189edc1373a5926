"""A round's clients split across processes (``trainer.devices=N``), on Lightning's DDP.

Lightning launches the N processes and sets up the process group (gloo on CPUs, NCCL on GPUs);
each rank solves the clients at positions ``rank, rank + N, …`` of the round, and the results
are gathered back into position order, so that every rank finishes the round
(``FederatedMetaLearner.finish_round``: non-finite results left out, the server step) on the
identical list (METHOD.md §3 step 4) and a run's results do not depend on N. Each client draws
from its own streams (:mod:`mglightning.federated.streams`), so where it is solved does not
matter either.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy

from mglightning.federated.server import ClientResult


class ClientParallelStrategy(DDPStrategy):
    """DDP's processes and collectives without its model wrapper: the ranks solve different
    clients, whose gradients must never be averaged across ranks (DDP's wrapper would do that
    in every local step's backward)."""

    def configure_ddp(self) -> None:
        """Keep the LightningModule unwrapped."""


def world() -> tuple[int, int]:
    """(rank, number of processes) of this process in the run; (0, 1) without a group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def own_positions(num_positions: int) -> range:
    """The positions (of a round's clients, or of the target tasks) this rank takes."""
    rank, size = world()
    return range(rank, num_positions, size)


def gather_results(
    module: L.LightningModule, own: list[tuple[int, ClientResult]], node_ids: list[int],
    like: torch.Tensor,
) -> list[ClientResult]:
    """Every rank's successful results, in position order, on every rank.

    Fixed-shape tensors travel (``all_gather``): per position the parameters and (ok, number
    of samples, loss) in float64, so the gathered values are the solved ones, bit for bit.
    ``node_ids`` are the round's chosen nodes by position; ``like`` a parameter vector."""
    _, size = world()
    if size == 1:
        return [result for _, result in sorted(own, key=lambda pair: pair[0])]
    num_positions = len(node_ids)
    params = like.new_zeros((num_positions, like.numel()))  # (positions, P)
    status = torch.zeros((num_positions, 3), dtype=torch.float64, device=like.device)
    for position, result in own:
        params[position] = result.params
        status[position, 0] = 1.0
        status[position, 1] = result.num_samples
        status[position, 2] = result.loss
    all_params, all_status = module.all_gather(params), module.all_gather(status)  # (ranks, …)
    positions = torch.arange(num_positions, device=like.device)
    owners = positions % size  # the rank that solved each position
    gathered = all_status[owners, positions]  # (positions, 3)
    flags = gathered[:, :2].tolist()  # one read back: (ok, number of samples) per position
    return [ClientResult(node_id, all_params[position % size, position], int(samples),
                         gathered[position, 2])
            for position, (node_id, (solved, samples))
            in enumerate(zip(node_ids, flags, strict=True)) if solved]


def gather_rows(rows: list[dict], key: str) -> list[dict]:
    """Every rank's rows (picklable dicts) on every rank, sorted by ``key``."""
    _, size = world()
    if size > 1:
        gathered: list[list[dict]] = [[] for _ in range(size)]
        dist.all_gather_object(gathered, rows)
        rows = [row for rank_rows in gathered for row in rank_rows]
    return sorted(rows, key=lambda row: row[key])
