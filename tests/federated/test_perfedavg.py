"""Per-FedAvg's local steps (METHOD.md §5) against closed forms on a linear softmax model."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian

from mglightning.config import ConfigError, validate
from mglightning.federated.flat import FlatParameters
from mglightning.federated.local import HESSIAN_PRODUCTS, PerFedAvg

CLASSES, FEATURES = 3, 4


class BatchSequenceClient:
    """A node that hands out the given batches in turn: D, D′, D″, D, ... ."""

    node_id = 7

    def __init__(self, batches):
        self.batches, self.draws = batches, 0
        self.support_idx = torch.arange(50)

    def sample_support_batch(self, batch_size, generator):
        batch = self.batches[self.draws % len(self.batches)]
        self.draws += 1
        return batch


def make_batches(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(6, FEATURES, generator=generator, dtype=torch.float64),
            torch.randint(0, CLASSES, (6,), generator=generator),
        )
        for _ in range(count)
    ]


def softmax_gradient(weight, batch):
    """∇_W of the mean cross-entropy of logits X Wᵀ: (softmax(X Wᵀ) − Y)ᵀ X / n."""
    images, labels = batch
    residual = torch.softmax(images @ weight.T, dim=1) - F.one_hot(labels, CLASSES)
    return residual.T @ images / len(labels)


def exact_hessian_vector(weight, batch, vector):
    """∇²f(W; batch) v by double backpropagation (no finite differences)."""
    images, labels = batch

    def loss(w):
        return F.cross_entropy(images @ w.view(CLASSES, FEATURES).T, labels)

    return torch.autograd.functional.hvp(loss, weight.reshape(-1), vector.reshape(-1))[1]


def run_solver(steps, hessian_free, batches, alpha=0.3, beta=0.2, delta=1e-4, hessian="exact"):
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, CLASSES, bias=False).double()
    flat = FlatParameters(model)
    start = flat.vector.clone()
    solver = PerFedAvg(steps, alpha, beta, batch_size=6, hessian_free=hessian_free,
                       hessian=hessian, delta=delta)
    result = solver(flat, start, BatchSequenceClient(batches), None, 1)
    return start.view(CLASSES, FEATURES), result


def expected_step(weight, batches, alpha, beta, hessian_free):
    """One Per-FedAvg step by hand: D for the inner step, D′ for the outer, D″ for ∇²f."""
    inner, outer, curvature = batches
    direction = softmax_gradient(weight - alpha * softmax_gradient(weight, inner), outer)
    if hessian_free:
        direction = direction - alpha * exact_hessian_vector(weight, curvature, direction).view(
            CLASSES, FEATURES
        )
    return weight - beta * direction


def test_first_order_step_is_the_closed_form():
    batches = make_batches(2)
    start, result = run_solver(1, False, batches)
    expected = expected_step(start, [*batches, None], 0.3, 0.2, hessian_free=False)
    torch.testing.assert_close(result.params.view(CLASSES, FEATURES), expected)
    assert result.node_id == 7 and result.num_samples == 50


@pytest.mark.parametrize("hessian", HESSIAN_PRODUCTS)
def test_hessian_free_step_is_the_closed_form_with_the_hessian_term(hessian):
    batches = make_batches(3)
    start, result = run_solver(1, True, batches, hessian=hessian)
    expected = expected_step(start, batches, 0.3, 0.2, hessian_free=True)
    torch.testing.assert_close(
        result.params.view(CLASSES, FEATURES), expected, rtol=1e-6, atol=1e-9
    )


def test_hessian_free_differs_from_first_order_by_the_hessian_term():
    """θ_HF − θ_FO = β α ∇²f(θ; D″) ∇f(θ − α∇f(θ; D); D′), and it is not zero."""
    batches = make_batches(3)
    start, first_order = run_solver(1, False, batches)
    _, hessian_free = run_solver(1, True, batches)
    direction = softmax_gradient(start - 0.3 * softmax_gradient(start, batches[0]), batches[1])
    hessian_term = 0.2 * 0.3 * exact_hessian_vector(start, batches[2], direction)
    difference = hessian_free.params - first_order.params
    torch.testing.assert_close(difference, hessian_term, rtol=1e-5, atol=1e-10)
    assert difference.abs().max() > 1e-4


def test_two_local_steps_chain_the_closed_form_on_fresh_batches():
    batches = make_batches(6, seed=3)
    start, result = run_solver(2, True, batches)
    middle = expected_step(start, batches[:3], 0.3, 0.2, hessian_free=True)
    expected = expected_step(middle, batches[3:], 0.3, 0.2, hessian_free=True)
    torch.testing.assert_close(
        result.params.view(CLASSES, FEATURES), expected, rtol=1e-6, atol=1e-9
    )


class TanhNetwork(torch.nn.Module):
    """A smooth two-layer network (no kinks), where a small-δ finite difference is exact to
    its truncation error O(δ²)."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(FEATURES, 5)
        self.head = torch.nn.Linear(5, CLASSES)

    def forward(self, images):
        return self.head(torch.tanh(self.hidden(images)))


def solve_tanh_network(hessian, delta=1e-3):
    """One HF step on the tanh network from a fixed start: (start vector, flat, result)."""
    torch.manual_seed(1)
    flat = FlatParameters(TanhNetwork().double())
    start = flat.vector.clone()
    solver = PerFedAvg(1, 0.3, 0.2, batch_size=6, hessian_free=True, hessian=hessian,
                       delta=delta)
    return start, flat, solver(flat, start, BatchSequenceClient(make_batches(3, seed=5)), None, 1)


def flat_loss(flat, batch):
    """f(vector; batch) as a pure function of a flat vector (torch.func's view of the net)."""
    images, labels = batch
    names = list(flat.slices)
    shapes = {name: param.shape for name, param in flat.module.named_parameters()}

    def loss(vector):
        params = {name: vector[flat.slices[name]].view(shapes[name]) for name in names}
        return F.cross_entropy(functional_call(flat.module, params, (images,)), labels)

    return loss


def test_exact_hessian_term_is_torch_func_hessian_times_the_direction():
    """The whole step against one written with torch.func: the full Hessian matrix of the
    tanh network's loss on D″ (forward-over-reverse, another code path) times the direction."""
    start, flat, result = solve_tanh_network("exact")
    inner, outer, curvature = make_batches(3, seed=5)
    adapted = start - 0.3 * grad(flat_loss(flat, inner))(start)
    direction = grad(flat_loss(flat, outer))(adapted)
    hessian_matrix = hessian(flat_loss(flat, curvature))(start)  # (P, P)
    expected = start - 0.2 * (direction - 0.3 * hessian_matrix @ direction)
    torch.testing.assert_close(result.params, expected, rtol=1e-12, atol=1e-14)


def test_the_finite_difference_converges_to_the_exact_product_as_delta_squared():
    """float64 and no kinks: the central difference's error is O(δ²), so the two steps agree
    to round-off at δ = 1e-5, and the gap shrinks 100-fold from δ = 1e-2 to 1e-3."""
    start, _, exact = solve_tanh_network("exact")
    step = (exact.params - start).abs().max()

    def gap(delta):
        _, _, finite_difference = solve_tanh_network("finite_difference", delta)
        return float((finite_difference.params - exact.params).abs().max() / step)

    assert gap(1e-5) < 1e-10
    assert gap(1e-2) / gap(1e-3) == pytest.approx(100, rel=0.01)


def test_an_unknown_hessian_product_is_refused_naming_the_key(tiny_config):
    """The config walker reads the rule beside PerFedAvg.hessian (no constructor re-check)."""
    with pytest.raises(ConfigError, match="method.local.hessian='fd': must be one of"):
        validate(tiny_config("method=perfedavg_hf", "method.local.hessian=fd"))
