"""Speed tricks tried for a round's passes, against the plain loop the learner runs.

The issue asked to try ``torch.func.vmap`` over the clients and ``torch.compile``, and keep
what wins. Each candidate computes the K clients' gradients at the parameters every client
starts a round from (vmap holds one copy per client, as later local steps would need) on the
same K batches (gate noise off: vmap cannot draw from a seeded generator). vmap cannot batch
channels-last tensors (torch 2.14 raises "NYI: Tensor.clone(memory_format)"), so it runs
in NCHW layout, and the loop is timed in NCHW too, to tell the layout's cost from vmap's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from mglightning.bench.timing import alternate, ratio
from mglightning.models import network as network_module
from mglightning.models.network import GatedNetwork, _pool


@contextmanager
def nchw_layout() -> Iterator[None]:
    """While inside, the network keeps its input in NCHW and its blocks pool in NCHW (ReLU,
    then pool) instead of channels-last."""
    channels_last = network_module.pool_relu, network_module._channels_last
    network_module.pool_relu = lambda y, pool: _pool(torch.relu(y), pool)
    network_module._channels_last = lambda x: x
    try:
        yield
    finally:
        network_module.pool_relu, network_module._channels_last = channels_last


class ClientPasses:
    """K clients' forward and backward passes, one client after another (the learner's way)."""

    def __init__(self, network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 nchw: bool = False) -> None:
        self.network, self.images, self.labels, self.nchw = network, images, labels, nchw
        self.parameters = [p for p in network.parameters() if p.requires_grad]

    def __call__(self) -> list[list[torch.Tensor]]:
        with nchw_layout() if self.nchw else nullcontext():
            gradients = []
            for images, labels in zip(self.images, self.labels, strict=True):
                loss = F.cross_entropy(self.network(images), labels)
                gradients.append(torch.autograd.grad(loss, self.parameters))
            return gradients


class VmappedPasses:
    """The same K passes as one ``vmap(grad(loss))`` over per-client parameter copies."""

    def __init__(self, network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        clients = images.shape[0]
        self.parameters = {name: param.detach().expand(clients, *param.shape).clone()
                           for name, param in network.named_parameters()}

        def loss(parameters, images, labels):
            return F.cross_entropy(functional_call(network, parameters, (images,)), labels)

        self.gradients = vmap(grad(loss))

    def __call__(self) -> dict[str, torch.Tensor]:
        with nchw_layout():
            return self.gradients(self.parameters, self.images, self.labels)


def client_batches(clients, count: int, batch_size: int, seed: int):
    """(K, B, ...) images and (K, B) labels: one support batch from each of ``count`` clients."""
    generator = torch.Generator().manual_seed(seed)
    batches = [clients[i % len(clients)].sample_support_batch(batch_size, generator)
               for i in range(count)]
    size = min(len(labels) for _, labels in batches)  # a small client gives a short batch
    return (torch.stack([images[:size] for images, _ in batches]),
            torch.stack([labels[:size] for _, labels in batches]))


def bench_alternatives(network: GatedNetwork, clients, count: int, batch_size: int,
                       repeats: int, seed: int, compile_network: bool = True) -> dict:
    """Time ratios candidate ÷ loop (above 1: slower than the loop), side by side."""
    network.set_gate_noise(0.0)
    images, labels = client_batches(clients, count, batch_size, seed)
    candidates = {"loop": ClientPasses(network, images, labels),
                  "loop_nchw": ClientPasses(network, images, labels, nchw=True),
                  "vmap": VmappedPasses(network, images, labels)}
    compile_seconds = compile_error = None
    if compile_network:
        started = time.perf_counter()
        compiled = ClientPasses(torch.compile(network), images, labels)
        try:
            compiled()  # compiles forward and backward
        except Exception as error:  # e.g. no C++ compiler on this machine: report, go on
            compile_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        else:
            candidates["compiled"] = compiled
            compile_seconds = time.perf_counter() - started
    seconds = alternate(candidates, repeats)
    return {
        "clients": count,
        "batch_size": int(images.shape[1]),
        **{f"{name}_over_loop": ratio(seconds, name, "loop").summary()
           for name in candidates if name != "loop"},
        "vmap_over_loop_nchw": ratio(seconds, "vmap", "loop_nchw").summary(),
        "compile_seconds": compile_seconds,
        "compile_error": compile_error,
    }
