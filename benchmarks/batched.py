"""Rounds whose K clients are computed together: the GPU candidates for Algorithm 1's round.

Both run the learner's round seam (``plan_round`` → their batched local steps →
``finish_round``), so the server step, the non-finite check, the failed-round count and the
timings are the loop's own. Each client draws its batches from its own stream, as
``run_round`` does, so a round leaves the server state a loop round leaves, up to the order
of float sums. What they cannot compute, they refuse: gate noise (one batched draw is no
client's own stream), and per-client failures (a client's error is the round's).
``make gpu-check`` times them against the loop (:mod:`benchmarks.device_rounds`); the
learner keeps its loop until they earn a place on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from mglightning.devices import from_host
from mglightning.federated.learner import FederatedMetaLearner, RoundPlan
from mglightning.federated.local import ProximalSGD, proximal_step_
from mglightning.federated.server import ClientResult
from mglightning.federated.streams import client_streams


def refuse_gate_noise(plan: RoundPlan, name: str) -> None:
    """A batched pass cannot draw each client's gate noise from the client's own stream."""
    if plan.noise_scale:
        raise ValueError(f"a {name} round draws no per-client gate noise: set "
                         "method.gate_noise=none")


def refuse_sparsity_budget(solver: ProximalSGD, name: str) -> None:
    """A batched pass takes the cross-entropy alone: the budget's share on and a gate loss's
    batch statistics are per client."""
    if solver.sparsity_off is not None:
        raise ValueError(f"a {name} round takes no sparsity budget: set "
                         "method.local.sparsity_off=null")
    if solver.gate_loss is not None:
        raise ValueError(f"a {name} round takes no gate loss: set method.local.gate_loss=null")


class ConcatenatedRound:
    """Algorithm 1's round for m = 1 as one forward and one backward pass.

    With one local step every client starts at x_md, where the proximal term is zero, so its
    model is x_md − η ∇L_k(x_md), and the server reads only the (weighted) mean of the models:
    x_md − η ∇(Σ_k w_k L_k)(x_md). That is one pass over the K support batches concatenated,
    sample j of client k weighted w_k / B_k (the network couples no inputs: no batch norm).
    It cannot run m ≥ 2; on a GPU it replaces K small, launch-bound passes by one.
    """

    def __init__(self, learner: FederatedMetaLearner, clients) -> None:
        solver = learner.local_solver
        if not isinstance(solver, ProximalSGD) or solver.steps != 1:
            raise ValueError("a concatenated round needs one proximal-SGD local step (m = 1)")
        refuse_sparsity_budget(solver, "concatenated")
        self.learner, self.clients, self.solver = learner, clients, solver

    def __call__(self) -> dict[str, float]:
        """One round; its metrics, as ``run_round`` returns them."""
        learner, solver = self.learner, self.solver
        plan = learner.plan_round(self.clients)
        refuse_gate_noise(plan, "concatenated")
        batches = [client.sample_support_batch(
                       solver.batch_size, client_streams(learner.seed, plan.index, position)[0])
                   for position, client in enumerate(plan.chosen)]
        sizes = [float(len(client.support_idx)) for client in plan.chosen]
        client_weights = ([size / sum(sizes) for size in sizes] if learner.server_step.weighted
                          else [1 / len(plan.chosen)] * len(plan.chosen))
        sample_weights = torch.cat([torch.full((len(labels),), weight / len(labels),
                                               device="cpu")
                                    for weight, (_, labels) in zip(client_weights, batches,
                                                                   strict=True)])
        flat = learner.flat
        flat.load(plan.x_md)
        flat.zero_grad()
        losses = F.cross_entropy(flat.module(torch.cat([images for images, _ in batches])),
                                 torch.cat([labels for _, labels in batches]), reduction="none")
        (losses @ from_host(sample_weights, losses.device)).backward()
        mean_model = proximal_step_(plan.x_md.clone(), flat.grad, plan.x_md, solver.lr,
                                    solver.prox_lambda, solver.step_sizes(flat))
        # The mean model as the one result of the round: the server step's (weighted) mean of
        # one model is that model.
        mean_result = ClientResult(-1, mean_model, 1, losses.detach().mean())
        return learner.finish_round(plan, [mean_result], [],
                                    clients_per_result=len(plan.chosen))


class VmappedRound:
    """Algorithm 1's round with the K clients' local steps taken together: the candidate for
    m ≥ 2, where the concatenated round does not apply.

    Each client's parameters are a row of a (K, P) matrix that starts at x_md; step s takes
    every client's gradient on its s-th batch in one ``vmap(grad)`` call (the network run on
    each row's parameters) and steps all rows by :func:`proximal_step_`, as
    :class:`ProximalSGD` steps one client; the server step then reads the K rows as K
    results. vmap needs full batches of one size (every support set at least a batch), and
    runs the network in NCHW layout (it cannot batch channels-last tensors, see
    :meth:`GatedNetwork.set_layout`).
    """

    def __init__(self, learner: FederatedMetaLearner, clients) -> None:
        solver = learner.local_solver
        if not isinstance(solver, ProximalSGD):
            raise ValueError("a vmapped round takes proximal-SGD local steps (not Per-FedAvg's)")
        refuse_sparsity_budget(solver, "vmapped")
        self.learner, self.clients, self.solver = learner, clients, solver
        network, flat = learner.network, learner.flat
        views = {name: (flat.slices[name], param.shape)
                 for name, param in network.named_parameters()}

        def loss(vector: torch.Tensor, images: torch.Tensor, labels: torch.Tensor):
            parameters = {name: vector[span].view(shape) for name, (span, shape) in views.items()}
            return F.cross_entropy(functional_call(network, parameters, (images,)), labels)

        self.gradients_and_losses = vmap(grad_and_value(loss))

    def __call__(self) -> dict[str, float]:
        """One round; its metrics, as ``run_round`` returns them."""
        learner, solver = self.learner, self.solver
        plan = learner.plan_round(self.clients)
        refuse_gate_noise(plan, "vmapped")
        steps: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(solver.steps)]
        for position, client in enumerate(plan.chosen):  # each client's m draws, in solve order
            sampling = client_streams(learner.seed, plan.index, position)[0]
            for batches in steps:
                batches.append(client.sample_support_batch(solver.batch_size, sampling))
        if len({len(labels) for batches in steps for _, labels in batches}) > 1:
            raise ValueError("a vmapped round needs every client's batch full: a support set "
                             "is smaller than dataset.batch_size")
        models, loss_sums = self.local_models(plan.x_md, steps)
        results = [ClientResult(client.node_id, models[k], len(client.support_idx),
                                loss_sums[k] / solver.steps)
                   for k, client in enumerate(plan.chosen)]
        return learner.finish_round(plan, results, [])

    def local_models(self, x_md: torch.Tensor, steps: list[list[tuple[torch.Tensor, torch.Tensor]]]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every client's model after its m steps on its batches ``steps[s][k]``, (K, P), and
        the sum of its m losses, (K,)."""
        solver, network = self.solver, self.learner.network
        step_sizes = solver.step_sizes(self.learner.flat)
        models = x_md.expand(len(steps[0]), -1).clone()  # (K, P)
        loss_sums = torch.zeros(len(steps[0]), dtype=torch.float64, device=x_md.device)
        channels_last = network.channels_last
        network.set_layout(channels_last=False)
        try:
            for batches in steps:
                gradients, losses = self.gradients_and_losses(
                    models, torch.stack([images for images, _ in batches]),
                    torch.stack([labels for _, labels in batches]))
                proximal_step_(models, gradients, x_md, solver.lr, solver.prox_lambda,
                               step_sizes)
                loss_sums += losses.detach()
        finally:
            network.set_layout(channels_last)
        return models, loss_sums
