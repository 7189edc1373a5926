"""Per-client random streams: a client's result depends only on (seed, round, position,
x_md, its data), not on which other clients run, nor in which order."""

import pytest
import torch

from mglightning.build import build_datamodule, build_learner
from mglightning.federated.streams import client_streams


def draws(streams) -> list[torch.Tensor]:
    return [torch.rand(8, generator=generator) for generator in streams]


def test_client_streams_are_a_function_of_seed_round_and_position():
    first, again = draws(client_streams(3, 5, 2)), draws(client_streams(3, 5, 2))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    sampling, noise = first
    assert not torch.equal(sampling, noise)  # two streams, not one drawn twice
    for other in [(4, 5, 2), (3, 6, 2), (3, 5, 3), (3, 2, 5)]:
        assert not torch.equal(draws(client_streams(*other))[0], sampling), other


def test_client_streams_put_the_noise_generator_on_the_given_device():
    sampling, noise = client_streams(0, 1, 0, torch.device("cpu"))
    assert sampling.device.type == "cpu" and noise.device.type == "cpu"
    if torch.cuda.is_available():
        assert client_streams(0, 1, 0, "cuda")[1].device.type == "cuda"


def round_clients(tiny_config, method: str):
    """A tiny learner of ``method`` (MetaGater with gate noise, a stream of its own), the
    clients of its round 1 as (position, client) pairs, and x_md."""
    noise = ["method.gate_noise=logistic"] if method == "metagater" else []
    cfg = tiny_config(f"method={method}", "method.local.steps=2", *noise)
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    clients = datamodule.train_clients
    chosen = learner.sample_clients(len(clients), torch.Generator().manual_seed(0))
    x_md = learner.server_step.configure(learner.x, learner.x_ag, 1)
    return learner, list(enumerate(clients[i] for i in chosen)), x_md


def solved(learner, pairs, x_md) -> dict[int, torch.Tensor]:
    results, failures = learner.solve_clients(pairs, x_md, round_index=1)
    assert not failures
    return {result.node_id: result.params for _, result in results}


@pytest.mark.parametrize("method", ["metagater", "perfedavg_hf"])
def test_a_clients_result_does_not_depend_on_the_others_nor_their_order(tiny_config, method):
    learner, pairs, x_md = round_clients(tiny_config, method)
    assert (learner.gate_noise(1) > 0) == (method == "metagater")
    in_order = solved(learner, pairs, x_md)
    in_reverse = solved(learner, pairs[::-1], x_md)
    alone = solved(learner, pairs[2:3], x_md)
    assert len(in_order) == len(pairs)
    for node_id, params in in_reverse.items():
        assert torch.equal(params, in_order[node_id])
    (node_id, params), = alone.items()
    assert torch.equal(params, in_order[node_id])
    # The same client at another position draws other batches (and noise): another result.
    client, other_position = pairs[2][1], pairs[3][0]
    moved = solved(learner, [(other_position, client)], x_md)
    assert not torch.equal(moved[client.node_id], in_order[client.node_id])
