import pytest
import torch

from mglightning.federated.prox import L1, GroupLasso
from mglightning.federated.server import (
    AcceleratedProximalStep,
    ClientResult,
    FedAvgStep,
    client_mean,
)


def results_of(*vectors, sizes=None):
    sizes = sizes or [1] * len(vectors)
    return [ClientResult(i, v, n, 0.0) for i, (v, n) in enumerate(zip(vectors, sizes, strict=True))]


def test_special_case_without_acceleration_is_plain_averaging():
    """METHOD.md §3: α_t ≡ 1, c = 0, β = 1/λ, γ = 0 → x and x_ag are the plain average."""
    torch.manual_seed(0)
    prox_lambda = 4.0
    server_step = AcceleratedProximalStep(
        prox_lambda, beta=1 / prox_lambda, c=0.0, accelerated=False
    )
    x, x_ag = torch.randn(10), torch.randn(10)
    x_md = server_step.configure(x, x_ag, round_index=7)
    torch.testing.assert_close(x_md, x)  # α = 1: clients start from x
    local = [torch.randn(10) for _ in range(3)]
    new_x, new_x_ag = server_step.aggregate(x, x_ag, x_md, results_of(*local), 7)
    average = torch.stack(local).mean(0)
    torch.testing.assert_close(new_x, average)
    torch.testing.assert_close(new_x_ag, average)


def test_with_c_one_x_overshoots_the_average_by_a_quarter():
    """METHOD.md §3 note: with α = 1 and c = 1, x takes a 1.25× step, x_ag still averages."""
    server_step = AcceleratedProximalStep(2.0, beta=0.5, c=1.0, accelerated=False)
    x = torch.zeros(4)
    local = [torch.ones(4), 3 * torch.ones(4)]
    new_x, new_x_ag = server_step.aggregate(x, x, x, results_of(*local), 1)
    torch.testing.assert_close(new_x_ag, 2 * torch.ones(4))
    torch.testing.assert_close(new_x, 2.5 * torch.ones(4))


def test_accelerated_sequence_follows_the_formulas():
    server_step = AcceleratedProximalStep(prox_lambda=3.0, beta=0.2, c=1.0)
    x, x_ag = torch.randn(6), torch.randn(6)
    t = 3
    alpha = 2 / (t + 1)
    x_md = server_step.configure(x, x_ag, t)
    torch.testing.assert_close(x_md, (1 - alpha) * x_ag + alpha * x)
    local = [torch.randn(6) for _ in range(4)]
    gradient = 3.0 * (x_md - torch.stack(local).mean(0))
    torch.testing.assert_close(server_step.meta_gradient(x_md, results_of(*local)), gradient)
    new_x, new_x_ag = server_step.aggregate(x, x_ag, x_md, results_of(*local), t)
    torch.testing.assert_close(new_x, x - (1 + alpha / 4) * 0.2 * gradient)
    torch.testing.assert_close(new_x_ag, x_md - 0.2 * gradient)


def test_size_weighted_mean_matches_hand_computation():
    local = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([4.0, 4.0])]
    weighted = client_mean(results_of(*local, sizes=[1, 3, 4]), weighted=True)
    torch.testing.assert_close(weighted, torch.tensor([(1 + 16) / 8, (3 + 16) / 8]))
    torch.testing.assert_close(
        client_mean(results_of(*local), weighted=False), torch.tensor([5 / 3, 5 / 3])
    )
    new_x, new_x_ag = FedAvgStep(weighted=True).aggregate(
        None, None, None, results_of(*local, sizes=[1, 3, 4]), 1
    )
    torch.testing.assert_close(new_x, weighted)
    torch.testing.assert_close(new_x_ag, weighted)


def test_group_lasso_prox_zeroes_small_groups_and_shrinks_the_rest():
    # groups: {0,1} norm 5, {2} norm 0.5, {4,5} norm 1; entry 3 is in no group.
    vector = torch.tensor([3.0, 4.0, -0.5, 7.0, 0.6, 0.8])
    group_ids = torch.tensor([0, 0, 1, -1, 2, 2])
    lasso = GroupLasso(gamma=2.0, group_ids=group_ids, num_groups=3)
    step = 0.5  # threshold s·γ = 1
    out = lasso.prox(vector, step)
    torch.testing.assert_close(out[:2], vector[:2] * (1 - 1 / 5))
    assert out[2] == 0 and torch.all(out[4:] == 0)  # norm 0.5 < 1 and norm 1 == threshold
    assert out[3] == 7.0
    torch.testing.assert_close(lasso.value(vector), torch.tensor(2.0 * (5 + 0.5 + 1)))


def test_group_lasso_prox_is_the_minimizer_of_its_objective():
    """prox_{s h}(v) = argmin_u h(u) + ‖u − v‖²/(2s): no random perturbation does better."""
    torch.manual_seed(1)
    vector = torch.randn(12)
    group_ids = torch.tensor([0] * 4 + [1] * 4 + [2] * 2 + [-1] * 2)
    lasso, step = GroupLasso(0.7, group_ids, 3), 0.9
    objective = lambda u: lasso.value(u) + ((u - vector) ** 2).sum() / (2 * step)
    best = lasso.prox(vector, step)
    for _ in range(200):
        assert objective(best) <= objective(best + 0.05 * torch.randn(12)) + 1e-6


def test_l1_prox_soft_thresholds_gate_entries_only():
    vector = torch.tensor([2.0, -0.3, -2.0, 5.0])
    out = L1(gamma=1.0, gate_mask=torch.tensor([True, True, True, False])).prox(vector, 0.5)
    torch.testing.assert_close(out, torch.tensor([1.5, 0.0, -1.5, 5.0]))


@pytest.mark.parametrize("regularizer", [None, "group"])
def test_gamma_zero_or_no_regularizer_leaves_vectors_alone(regularizer):
    vector = torch.randn(5)
    lasso = GroupLasso(0.0, torch.tensor([0, 0, 1, 1, -1]), 2)
    assert torch.equal(lasso.prox(vector, 1.0), vector)
