"""The random streams of a round: one for the choice of clients, two per client.

A client's draws (its support batches and its gate noise) come from generators seeded by
(seed, round, position in the round) alone, never from a stream shared with the other clients.
So a client's result is a function of (seed, round, position, x_md, its data): the clients of a
round can be solved in any order, on any number of devices or processes, and a resumed run
draws exactly what an uninterrupted one would. A multi-device split and a Flower ClientApp
call :func:`client_streams` with the same arguments and get the same streams.
"""

from __future__ import annotations

import numpy as np
import torch

ROUND_SEED_STRIDE = 1_000_003  # a prime above any round count: (seed, round) pairs never collide


def round_generator(seed: int, round_index: int) -> torch.Generator:
    """The generator of round ``round_index`` (1-based) that chooses its clients."""
    return torch.Generator().manual_seed(seed * ROUND_SEED_STRIDE + round_index)


def client_streams(
    seed: int, round_index: int, position: int, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, torch.Generator]:
    """(sampling generator on the CPU, gate-noise generator on ``device``) of the client at
    ``position`` (0-based, in the order the round chose its clients) of round ``round_index``.

    Batches are drawn as index permutations on the CPU, so a client draws the same batches on
    every device; the gate noise is drawn where the gate logits are, so its generator is on
    the run's device (a CUDA generator draws other numbers than a CPU one from the same
    seed). Both seeds come from a NumPy ``SeedSequence`` spawned at key (round, position):
    independent streams per client.
    """
    sampling_seed, noise_seed = np.random.SeedSequence(
        seed, spawn_key=(round_index, position)
    ).generate_state(2, dtype=np.uint64)
    sampling = torch.Generator().manual_seed(int(sampling_seed))
    noise = torch.Generator(device=device).manual_seed(int(noise_seed))
    return sampling, noise
