import torch
from conftest import FixedBatchClient

from mglightning.federated.flat import FlatParameters
from mglightning.federated.local import ProximalSGD, proximal_step_
from mglightning.models import build_network


def local_objective(flat, vector, anchor, client, prox_lambda):
    """L_i(x; batch) + (λ/2)‖x − anchor‖², evaluated at ``vector`` (float64)."""
    flat.load(vector)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(flat.module(client.images), client.labels)
    return loss + prox_lambda / 2 * ((vector - anchor) ** 2).sum()


def test_the_proximal_step_by_hand():
    """x ← x − η (g + λ (x − x_start)), x and g updated in place, with η a number or per entry."""
    start = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    parameters = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    gradient = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    returned = proximal_step_(parameters, gradient, start, lr=0.1, prox_lambda=2.0)
    assert returned is parameters
    # proximal gradient: g + 2 (x − start) = [2.5, 1.0, 4.0]
    torch.testing.assert_close(gradient, torch.tensor([2.5, 1.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(parameters, torch.tensor([0.75, 1.9, 3.6], dtype=torch.float64))
    parameters, gradient = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, -1.0, 0.0])
    proximal_step_(parameters, gradient, start.float(), lr=9.0, prox_lambda=0.0,
                   step_sizes=torch.tensor([0.1, 0.0, 1.0]))  # λ = 0: the plain gradient
    torch.testing.assert_close(parameters, torch.tensor([0.95, 2.0, 4.0]))
    torch.testing.assert_close(gradient, torch.tensor([0.5, -1.0, 0.0]))


def test_the_proximal_step_of_k_clients_rows_is_each_clients_own():
    """(K, P) rows against one start and per-entry steps, broadcast: each row steps as a (P,)
    vector would, to the bit (the batched rounds of benchmarks/ rely on it)."""
    generator = torch.Generator().manual_seed(0)
    rows, gradients = torch.randn(3, 7, generator=generator), torch.randn(3, 7, generator=generator)
    start, step_sizes = torch.randn(7, generator=generator), torch.rand(7, generator=generator)
    for sizes in (None, step_sizes):
        alone = [proximal_step_(rows[k].clone(), gradients[k].clone(), start, 0.1, 0.5, sizes)
                 for k in range(3)]
        together = proximal_step_(rows.clone(), gradients.clone(), start, 0.1, 0.5, sizes)
        assert torch.equal(together, torch.stack(alone))


def test_local_step_direction_is_the_proximal_objective_gradient():
    torch.manual_seed(0)
    network = build_network("mlp2", (1, 4, 4), 3).double()
    flat = FlatParameters(network)
    client = FixedBatchClient(
        torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    )
    start = flat.vector.clone()
    lr, prox_lambda = 0.1, 2.5
    x1 = ProximalSGD(steps=1, lr=lr, prox_lambda=prox_lambda, batch_size=8)(
        flat, start, client, None, 1
    ).params
    x2 = ProximalSGD(steps=2, lr=lr, prox_lambda=prox_lambda, batch_size=8)(
        flat, start, client, None, 1
    ).params
    step_direction = (x1 - x2) / lr  # the second step's gradient, taken at x1, anchored at start
    coords = torch.randperm(len(flat), generator=torch.Generator().manual_seed(1))[:25]
    eps = 1e-6
    for k in coords.tolist():
        bump = torch.zeros_like(start)
        bump[k] = eps
        finite = (
            local_objective(flat, x1 + bump, start, client, prox_lambda)
            - local_objective(flat, x1 - bump, start, client, prox_lambda)
        ) / (2 * eps)
        torch.testing.assert_close(step_direction[k], finite, rtol=1e-4, atol=1e-6)
    # The proximal term really is in there: without it the direction differs.
    assert not torch.allclose(
        step_direction, (x1 - ProximalSGD(2, lr, 0.0, 8)(flat, start, client, None, 1).params) / lr
    )


def test_flat_views_share_memory_with_the_module():
    network = build_network("cnn4", (1, 16, 16), 4, gated_layers=[3])
    flat = FlatParameters(network, network.is_gate_parameter)
    flat.vector.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in network.parameters())
    network.zero_grad(set_to_none=True)  # as Lightning's loops do
    flat.zero_grad()
    loss = network(torch.randn(4, 1, 16, 16)).sum()
    loss.backward()
    assert float(flat.grad.abs().sum()) > 0
    gate_entries = sum(p.numel() for n, p in network.named_parameters() if ".gate." in n)
    assert int(flat.gate_mask.sum()) == gate_entries


def gated_flat_and_client():
    torch.manual_seed(0)
    network = build_network("cnn4", (1, 8, 8), 3, gated_layers=[3])
    flat = FlatParameters(network, network.is_gate_parameter)
    client = FixedBatchClient(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    return flat, client


def test_gate_lr_zero_keeps_the_gates_while_the_backbone_moves():
    flat, client = gated_flat_and_client()
    start = flat.vector.clone()
    moved = ProximalSGD(2, 0.1, 1.0, 8, gate_lr=0.0)(flat, start, client, None, 1).params
    assert torch.equal(moved[flat.gate_mask], start[flat.gate_mask])
    assert not torch.equal(moved[~flat.gate_mask], start[~flat.gate_mask])


def test_gate_lr_scales_only_the_gate_step():
    flat, client = gated_flat_and_client()
    start = flat.vector.clone()
    plain = ProximalSGD(1, 0.1, 1.0, 8)(flat, start, client, None, 1).params
    same = ProximalSGD(1, 0.1, 1.0, 8, gate_lr=0.1)(flat, start, client, None, 1).params
    fast = ProximalSGD(1, 0.1, 1.0, 8, gate_lr=0.3)(flat, start, client, None, 1).params
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-7)
    gates = flat.gate_mask
    assert torch.equal(fast[~gates], plain[~gates])  # one step: θ's step ignores φ's size
    torch.testing.assert_close(fast[gates] - start[gates], 3 * (plain[gates] - start[gates]))


def share_on(flat, client) -> float:
    with torch.no_grad():
        return float(torch.cat(flat.module.forward_with_masks(client.images).masks, 1).mean())


def test_a_met_sparsity_budget_changes_nothing():
    flat, client = gated_flat_and_client()
    start = flat.vector.clone()
    plain = ProximalSGD(2, 0.1, 1.0, 8)(flat, start, client, None, 1).params
    met = ProximalSGD(2, 0.1, 1.0, 8, sparsity_off=0.0, sparsity_weight=5.0)(
        flat, start, client, None, 1).params  # every channel on is within a budget of 100 %
    assert torch.equal(met, plain)


def test_the_budget_pushes_the_share_on_along_the_gates_soft_gradient():
    """Above its budget the term adds weight · ∇ mean σ(z/τ) (METHOD.md §1's straight-through
    gradient of the share on), on the gates and on the layers feeding them, nothing else."""
    flat, client = gated_flat_and_client()
    network, start = flat.module, flat.vector.clone()
    assert share_on(flat, client) > 0.01  # above a budget of 1 % on
    lr, weight = 0.1, 3.0
    plain = ProximalSGD(1, lr, 1.0, 8)(flat, start, client, None, 1).params
    budget = ProximalSGD(1, lr, 1.0, 8, sparsity_off=0.99, sparsity_weight=weight)(
        flat, start, client, None, 1).params
    flat.load(start)
    flat.zero_grad()
    gated = network.gated_layers[0]
    logits = network.blocks[gated].gate.logits(network.features(client.images, gated))
    torch.sigmoid(logits / network.temperature).mean().backward()
    torch.testing.assert_close(budget - plain, -lr * weight * flat.grad, rtol=1e-4, atol=1e-7)
    assert float(flat.grad.abs().sum()) > 0


def test_a_lasting_budget_brings_the_share_on_down_to_it():
    flat, client = gated_flat_and_client()
    start = flat.vector.clone()
    before = share_on(flat, client)
    ProximalSGD(40, 0.1, 0.0, 8, gate_lr=1.0, sparsity_off=0.75, sparsity_weight=20.0)(
        flat, start, client, None, 1)
    after = share_on(flat, client)
    assert before > 0.4 and 0.05 < after <= 0.3, (before, after)  # not every channel off
