"""Goals 1 and 2: seconds per communication round, against common federated code and
against the bare forward/backward passes the round is made of.

The reference round is written the way common federated code does it: a ``copy.deepcopy``
of the model per client, a new ``torch.optim.SGD`` per client, a ``DataLoader`` per client
over that client's support set (per-sample indexing and collation), FedProx's proximal term
added to the loss. It draws the same batches and the same gate noise from the same
per-client streams as ours, so both compute the same update and :func:`max_update_difference` can
check that they do. Its round starts and ends at the learner's round seam (``plan_round``,
``finish_round``), as ours does: only the local solves differ.

A square matrix multiply, timed among them, gives this CPU's single-thread MAC rate: the
share of it that the bare passes reach bounds what faster kernels could still gain.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, Sampler, TensorDataset

from benchmarks.timing import alternate, ratio
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.federated.local import ProximalSGD
from mglightning.federated.server import ClientResult
from mglightning.federated.streams import client_streams
from mglightning.models.cost import dense_macs
from mglightning.models.network import GatedNetwork

MATMUL_SIZE = 1024  # one (n × n) @ (n × n) product: n³ MACs, large enough for the core's peak rate


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
    """One round of Algorithm 1 as common federated code writes it (see module docstring).

    Its step is ``torch.optim.SGD`` on the loss with FedProx's term added, not
    :func:`~mglightning.federated.local.proximal_step_`: a computation of the same update of
    its own is what makes :func:`max_update_difference` a check. It takes one step size and
    the cross-entropy alone, and refuses a solver with more."""

    def __init__(self, learner: FederatedMetaLearner, clients) -> None:
        self.learner, self.clients = learner, clients
        self.solver: ProximalSGD = learner.local_solver
        solver = self.solver
        if (solver.gate_lr is not None or solver.sparsity_off is not None
                or solver.gate_loss is not None):
            raise ValueError("the reference round takes one step and the cross-entropy alone: "
                             "set method.local.gate_lr=null, method.local.sparsity_off=null and "
                             "method.local.gate_loss=null")
        self.support_sets = [TensorDataset(*client.support_set()) for client in clients]

    def __call__(self) -> dict[str, float]:
        """One round, started and finished by the learner's round seam."""
        learner = self.learner
        plan = learner.plan_round(range(len(self.clients)))  # chosen: the clients' indices
        global_model = copy.deepcopy(learner.network)
        torch.nn.utils.vector_to_parameters(plan.x_md, global_model.parameters())
        global_model.temperature = plan.temperature
        results = [self.train_client(global_model, i, client_streams(learner.seed, plan.index,
                                                                     position, plan.x_md.device),
                                     plan.noise_scale)
                   for position, i in enumerate(plan.chosen)]
        return learner.finish_round(plan, results, [])

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
                            torch.tensor(loss_sum / solver.steps))


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
    gradients, and as many for the input gradients except the first op's (the images
    need none). Gate MLPs, pooling, norms and ReLUs are left out (under 0.1 % for cnn4)."""
    first = network.describe().backbone_ops[0]
    first_op = first.in_channels * first.out_channels * first.per_pair
    return batch_size * (3 * dense_macs(network) - first_op)


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


def max_update_difference(learner: FederatedMetaLearner, clients) -> float:
    """Largest |difference| between ours and the reference round in the new (x, x_ag), from
    one state."""
    state = RoundState(learner)
    learner.run_round(clients)
    ours = torch.cat([learner.x, learner.x_ag]).clone()
    state.restore()
    ReferenceRound(learner, clients)()
    theirs = torch.cat([learner.x, learner.x_ag])
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
