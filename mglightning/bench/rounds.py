"""Goals 1 and 2: seconds per communication round, against common federated code and
against the bare forward/backward passes the round is made of.

The reference round is written the way common federated code does it: a ``copy.deepcopy``
of the model per client, a new ``torch.optim.SGD`` per client, a ``DataLoader`` per client
over that client's support set (per-sample indexing and collation), FedProx's proximal term
added to the loss. It draws the same batches and the same gate noise from the same
per-client streams as ours, so both compute the same update and :func:`max_update_difference` can
check that they do.

A square matrix multiply, timed among them, gives this CPU's single-thread MAC rate: the
share of it that the bare passes reach bounds what faster kernels could still gain.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, Sampler, TensorDataset

from mglightning.bench.alternatives import nchw_layout
from mglightning.bench.timing import alternate, ratio
from mglightning.devices import from_host
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.federated.local import ProximalSGD
from mglightning.federated.server import ClientResult
from mglightning.federated.streams import client_streams
from mglightning.models.cost import forward_cost, layer_macs
from mglightning.models.network import GatedNetwork

MATMUL_SIZE = 1024  # one (n × n) @ (n × n) product: n³ MACs, ~20 ms on one core here


def start_batched_round(learner: FederatedMetaLearner, clients, name: str
                        ) -> tuple[int, torch.Tensor, list]:
    """The start of a round whose clients are computed together, as ``run_round`` starts one:
    its index, x_md, its clients, the round's temperature set. Refused with gate noise: one
    batched pass cannot draw each client's noise from the client's own stream."""
    round_index = learner.current_round()
    if learner.gate_noise(round_index):
        raise ValueError(f"a {name} round draws no per-client gate noise: set "
                         "method.gate_noise=none")
    x_md = learner.strategy.configure_fit(learner.x, learner.x_ag, round_index)
    chosen = [clients[i] for i in learner.round_clients(len(clients), round_index)]
    learner.network.temperature = learner.temperature(round_index)
    return round_index, x_md, chosen


def finish_round(learner: FederatedMetaLearner, x_md: torch.Tensor, results: list[ClientResult],
                 round_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The server step of a bench round: (x, x_ag) from the results, taken as the learner's
    state, the round counted, the network left holding x_ag, as ``run_round`` leaves it."""
    x, x_ag = learner.strategy.aggregate_fit(learner.x, learner.x_ag, x_md, results, round_index)
    learner.x.copy_(x)
    learner.x_ag.copy_(x_ag)
    learner.rounds_done += 1
    learner.flat.load(x_ag)
    return x, x_ag


class StepBatches(Sampler[list[int]]):
    """``steps`` batches of distinct support positions, each a fresh permutation's head: the
    draws ``ClientDataModule.sample_support_batch`` makes, from the same generator."""

    def __init__(self, size: int, batch_size: int, steps: int, generator) -> None:
        self.size, self.batch_size, self.steps, self.generator = size, batch_size, steps, generator

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            positions = torch.randperm(self.size, generator=self.generator)
            yield positions[: min(self.batch_size, self.size)].tolist()

    def __len__(self) -> int:
        return self.steps


class ReferenceRound:
    """One round of Algorithm 1 as common federated code writes it (see module docstring)."""

    def __init__(self, learner: FederatedMetaLearner, clients) -> None:
        self.learner, self.clients = learner, clients
        self.solver: ProximalSGD = learner.local_solver
        self.support_sets = [TensorDataset(*client.support_set()) for client in clients]

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        learner = self.learner
        round_index = int(learner.rounds_done) + 1
        x_md = learner.strategy.configure_fit(learner.x, learner.x_ag, round_index)
        chosen = learner.round_clients(len(self.clients), round_index)
        global_model = copy.deepcopy(learner.network)
        torch.nn.utils.vector_to_parameters(x_md, global_model.parameters())
        global_model.temperature = learner.temperature(round_index)
        noise_scale = learner.gate_noise(round_index)
        results = [self.train_client(global_model, i, client_streams(learner.seed, round_index,
                                                                     position, x_md.device),
                                     noise_scale)
                   for position, i in enumerate(chosen)]
        return finish_round(learner, x_md, results, round_index)

    def train_client(self, global_model, index: int, streams, noise_scale: float) -> ClientResult:
        solver, support = self.solver, self.support_sets[index]
        sampling, noise = streams
        local_model = copy.deepcopy(global_model)
        local_model.set_gate_noise(noise_scale, noise)
        optimizer = torch.optim.SGD(local_model.parameters(), lr=solver.lr)
        batches = StepBatches(len(support), solver.batch_size, solver.steps, sampling)
        loss_sum = 0.0
        for images, labels in DataLoader(support, batch_sampler=batches):
            optimizer.zero_grad()
            loss = F.cross_entropy(local_model(images), labels)
            loss_sum += loss.item()
            if solver.prox_lambda:
                loss = loss + solver.prox_lambda / 2 * sum(
                    (p - g.detach()).pow(2).sum()
                    for p, g in zip(local_model.parameters(), global_model.parameters(),
                                    strict=True))
            loss.backward()
            optimizer.step()
        params = parameters_to_vector(local_model.parameters()).detach()
        return ClientResult(self.clients[index].node_id, params, len(support),
                            loss_sum / solver.steps)


class ConcatenatedRound:
    """Algorithm 1's round for m = 1 as one forward and one backward pass: the GPU candidate.

    With one local step every client starts at x_md, where the proximal term is zero, so its
    model is x_md − η ∇L_k(x_md), and the server reads only the (weighted) mean of the models:
    x_md − η ∇(Σ_k w_k L_k)(x_md). That is one pass over the K support batches concatenated,
    sample j of client k weighted w_k / B_k (the network couples no inputs: no batch norm).
    It draws each client's batch from the client's own stream, as :meth:`run_round` does,
    and leaves the server state where a loop round would (up to float summation order).
    It cannot run gate noise (one draw for the batch is no client's own), per-client
    failures, or m ≥ 2; on a GPU it replaces K small, launch-bound passes by one.
    """

    def __init__(self, learner: FederatedMetaLearner, clients) -> None:
        solver = learner.local_solver
        if not isinstance(solver, ProximalSGD) or solver.steps != 1:
            raise ValueError("a concatenated round needs one proximal-SGD local step (m = 1)")
        self.learner, self.clients, self.solver = learner, clients, solver

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        learner, solver = self.learner, self.solver
        round_index, x_md, chosen = start_batched_round(learner, self.clients, "concatenated")
        batches = [client.sample_support_batch(
                       solver.batch_size, client_streams(learner.seed, round_index, position)[0])
                   for position, client in enumerate(chosen)]
        sizes = [float(len(client.support_idx)) for client in chosen]
        client_weights = ([size / sum(sizes) for size in sizes] if learner.strategy.weighted
                          else [1 / len(chosen)] * len(chosen))
        sample_weights = torch.cat([torch.full((len(labels),), weight / len(labels),
                                               device="cpu")
                                    for weight, (_, labels) in zip(client_weights, batches,
                                                                   strict=True)])
        flat = learner.flat
        flat.load(x_md)
        flat.zero_grad()
        losses = F.cross_entropy(flat.module(torch.cat([images for images, _ in batches])),
                                 torch.cat([labels for _, labels in batches]), reduction="none")
        (losses @ from_host(sample_weights, losses.device)).backward()
        step_sizes = solver.step_sizes(flat)
        mean_model = x_md - (flat.grad * solver.lr if step_sizes is None
                             else flat.grad * step_sizes)
        # The mean model as the one result of the round: the strategy's (weighted) mean of
        # one model is that model.
        mean_result = ClientResult(-1, mean_model, 1, losses.detach().mean())
        return finish_round(learner, x_md, [mean_result], round_index)


class VmappedRound:
    """Algorithm 1's round with the K clients' local steps taken together: the GPU candidate
    for m ≥ 2, where the concatenated round does not apply.

    Each client's parameters are a row of a (K, P) matrix that starts at x_md; step s takes
    every client's gradient on its s-th batch in one ``vmap(grad)`` call (the network run on
    each row's parameters), adds λ (x_k − x_md) and steps, as :class:`ProximalSGD` does for
    one client; the server step then reads the K rows as K results. Each client draws its
    batches from its own stream, as ``run_round`` does. vmap needs full batches of one size
    (every support set at least a batch), draws no per-client gate noise, and runs in NCHW
    layout (it cannot batch channels-last tensors, see :func:`nchw_layout`).
    """

    def __init__(self, learner: FederatedMetaLearner, clients) -> None:
        solver = learner.local_solver
        if not isinstance(solver, ProximalSGD):
            raise ValueError("a vmapped round takes proximal-SGD local steps (not Per-FedAvg's)")
        self.learner, self.clients, self.solver = learner, clients, solver
        network, flat = learner.network, learner.flat
        views = {name: (flat.slices[name], param.shape)
                 for name, param in network.named_parameters()}

        def loss(vector: torch.Tensor, images: torch.Tensor, labels: torch.Tensor):
            parameters = {name: vector[span].view(shape) for name, (span, shape) in views.items()}
            return F.cross_entropy(functional_call(network, parameters, (images,)), labels)

        self.gradients_and_losses = vmap(grad_and_value(loss))

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        learner, solver = self.learner, self.solver
        round_index, x_md, chosen = start_batched_round(learner, self.clients, "vmapped")
        steps: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(solver.steps)]
        for position, client in enumerate(chosen):  # each client's m draws, in solve order
            sampling = client_streams(learner.seed, round_index, position)[0]
            for batches in steps:
                batches.append(client.sample_support_batch(solver.batch_size, sampling))
        if len({len(labels) for batches in steps for _, labels in batches}) > 1:
            raise ValueError("a vmapped round needs every client's batch full: a support set "
                             "is smaller than dataset.batch_size")
        step_sizes = solver.step_sizes(learner.flat)
        models = x_md.expand(len(chosen), -1).clone()
        loss_sums = torch.zeros(len(chosen), dtype=torch.float64, device=x_md.device)
        with nchw_layout():
            for batches in steps:
                gradients, losses = self.gradients_and_losses(
                    models, torch.stack([images for images, _ in batches]),
                    torch.stack([labels for _, labels in batches]))
                if solver.prox_lambda:
                    gradients.add_(models - x_md, alpha=solver.prox_lambda)
                if step_sizes is None:
                    models.add_(gradients, alpha=-solver.lr)
                else:
                    models.addcmul_(gradients, step_sizes, value=-1.0)
                loss_sums += losses.detach()
        results = [ClientResult(client.node_id, models[k], len(client.support_idx),
                                loss_sums[k] / solver.steps)
                   for k, client in enumerate(chosen)]
        return finish_round(learner, x_md, results, round_index)


class BareRound:
    """The K·m forward and backward passes of a round, back to back: same network, batch
    shapes and gate noise, none of the federated bookkeeping (no sampling, no normalizing,
    no updates, no aggregation). Batches are drawn once, outside the timing."""

    def __init__(self, learner: FederatedMetaLearner, clients, num_clients: int) -> None:
        self.network = learner.network
        solver: ProximalSGD = learner.local_solver
        generator = torch.Generator().manual_seed(learner.seed)
        self.batches = [clients[i % len(clients)].sample_support_batch(solver.batch_size,
                                                                       generator)
                        for i in range(num_clients * solver.steps)]
        self.noise_generator = generator

    def __call__(self) -> None:
        self.network.set_gate_noise(1.0, self.noise_generator)
        for images, labels in self.batches:
            F.cross_entropy(self.network(images), labels).backward()
        self.network.set_gate_noise(0.0)


def step_macs(network: GatedNetwork, batch_size: int) -> float:
    """MACs of one dense training step: the forward pass, as many again for the weight
    gradients, and as many for the input gradients except the first layer's (the images
    need none). Gate MLPs, pooling and ReLUs are left out (under 0.1 % for cnn4)."""
    all_on = [torch.ones(1, network.blocks[i].spec.out) for i in network.gated_layers]
    forward = forward_cost(network, all_on).dense_macs
    first_layer = layer_macs(network, 0, network.input_shape[0], network.blocks[0].spec.out)
    return batch_size * (3 * forward - first_layer)


class Matmul:
    """One square float32 matrix product: the CPU's best case for dense arithmetic."""

    def __init__(self, size: int = MATMUL_SIZE) -> None:
        generator = torch.Generator().manual_seed(0)
        self.left = torch.randn(size, size, generator=generator)
        self.right = torch.randn(size, size, generator=generator)
        self.macs = float(size) ** 3

    def __call__(self) -> None:
        torch.mm(self.left, self.right)


class RoundState:
    """Saves and restores the learner's server state, so every timed round is the same one."""

    def __init__(self, learner: FederatedMetaLearner) -> None:
        self.learner = learner
        self.saved = {name: buffer.clone() for name, buffer in learner.named_buffers()}

    def restore(self) -> None:
        buffers = dict(self.learner.named_buffers())
        for name, value in self.saved.items():
            buffers[name].copy_(value)


def max_update_difference(learner: FederatedMetaLearner, clients,
                          other: type = ReferenceRound) -> float:
    """Largest |difference| between ours and ``other``'s round (the reference, or the
    concatenated one) in the new (x, x_ag), from one state."""
    state = RoundState(learner)
    learner.run_round(clients)
    ours = torch.cat([learner.x, learner.x_ag]).clone()
    state.restore()
    theirs = torch.cat(other(learner, clients)())
    state.restore()
    return float((ours - theirs).abs().max())


def bench_rounds(learner: FederatedMetaLearner, clients, repeats: int) -> dict:
    """Ours vs reference (goal 1) and ours vs bare passes (goal 2), all three alternating."""
    state = RoundState(learner)
    reference = ReferenceRound(learner, clients)
    bare = BareRound(learner, clients, learner.clients_per_round)
    matmul = Matmul()

    def ours() -> None:
        learner.run_round(clients)
        state.restore()

    def common() -> None:
        reference()
        state.restore()

    seconds = alternate({"ours": ours, "reference": common, "bare": bare, "matmul": matmul},
                        repeats)
    learner.flat.zero_grad()
    solver: ProximalSGD = learner.local_solver
    bare_macs = (learner.clients_per_round * solver.steps
                 * step_macs(learner.network, solver.batch_size))
    matmul_over_bare = ratio(seconds, "matmul", "bare").summary()
    return {
        "reference_over_ours": ratio(seconds, "reference", "ours").summary(),
        "ours_over_bare": ratio(seconds, "ours", "bare").summary(),
        "reference_over_bare": ratio(seconds, "reference", "bare").summary(),
        "max_update_difference": max_update_difference(learner, clients),
        "bare_macs": bare_macs,
        "matmul_macs_per_second": matmul.macs / matmul_over_bare["numerator_seconds"],
        # (MACs/s of the bare passes) ÷ (MACs/s of the matmul), per repeat
        "bare_share_of_matmul_rate": {
            key: value * bare_macs / matmul.macs if key.startswith("ratio_") else value
            for key, value in matmul_over_bare.items()},
    }
