"""Gate losses (METHOD.md §7) against hand computations: the Beta CDF against a
high-precision reference, each loss by hand, the schedules at chosen rounds, one local step
against the loss's gradient, and their place in the config and the run's identity."""

import math

import pytest
import torch
from conftest import FixedBatchClient
from omegaconf import OmegaConf

from mglightning.build import build_datamodule, build_learner, compose_config
from mglightning.config import ConfigError, validate
from mglightning.federated.flat import FlatParameters
from mglightning.federated.gate_losses import (
    BatchShaping,
    ExpectedShareOn,
    TargetRate,
    beta_cdf,
    beta_cdf_of_logit,
)
from mglightning.federated.local import ProximalSGD
from mglightning.models import build_network
from mglightning.models.gate import binarize
from mglightning.run.identity import fingerprint

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 50
TARGETS = "mglightning.federated.gate_losses"


def reference_cdf(a: float, b: float, logit: float) -> float:
    """I_x(a, b) at x = σ(logit), by mpmath at 50 digits; above x = 1/2 as 1 − I_{1−x}(b, a),
    so that 1 − x keeps its digits (it is σ(−logit), never 1 − a rounded x)."""
    def sigmoid(value):
        return 1 / (1 + mpmath.exp(-mpmath.mpf(value)))
    if logit > 0:
        return float(1 - mpmath.betainc(b, a, 0, sigmoid(-logit), regularized=True))
    return float(mpmath.betainc(a, b, 0, sigmoid(logit), regularized=True))


@pytest.mark.parametrize("a, b", [(0.6, 0.4), (0.5, 0.5), (0.01, 0.01), (2.0, 3.0),
                                  (20.0, 0.01), (0.1, 50.0), (30.0, 20.0), (1000.0, 1000.0)])
def test_the_beta_cdf_matches_a_high_precision_reference(a, b):
    switch = math.log((a + 1) / (b + 1))  # logit of (a + 1)/(a + b + 2), where it swaps tails
    logits = [-800.0, -40.0, -8.0, -1.0, -1e-3, 0.0, 0.5, 3.0, 12.0, 40.0, 800.0,
              switch, switch - 1e-7, switch + 1e-7]
    got = beta_cdf_of_logit(torch.tensor(logits, dtype=torch.float64), a, b)
    expected = torch.tensor([reference_cdf(a, b, logit) for logit in logits], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-12)
    x = torch.tensor([0.02, 0.3, 0.5, 0.97], dtype=torch.float64)
    torch.testing.assert_close(beta_cdf(x, a, b), beta_cdf_of_logit(torch.logit(x), a, b))


def test_the_beta_cdf_s_gradient_is_finite_and_matches_finite_differences():
    logits = torch.tensor([-30.0, -3.0, -0.4, 0.0, 0.7, 2.5, 30.0], dtype=torch.float64,
                          requires_grad=True)
    for a, b in [(0.6, 0.4), (3.0, 0.2)]:
        assert torch.autograd.gradcheck(lambda u, a=a, b=b: beta_cdf_of_logit(u, a, b), logits)
    x = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: beta_cdf(x, 0.6, 0.4), x)
    # in x the gradient is the density, infinite at the ends; in the logit it is finite
    extreme = torch.tensor([-200.0, 200.0], requires_grad=True)
    beta_cdf_of_logit(extreme, 0.6, 0.4).sum().backward()
    assert torch.isfinite(extreme.grad).all()


def batch_shaping_by_hand(logits: torch.Tensor, a: float, b: float) -> float:
    """(1/C) Σ_c (1/B) Σ_i (i/(B+1) − I_{x_(i)}(a, b))², the column of x = σ(z) sorted."""
    batch, gates = logits.shape
    total = 0.0
    for column in logits.T.tolist():
        for rank, logit in enumerate(sorted(column), start=1):
            total += (rank / (batch + 1) - reference_cdf(a, b, logit)) ** 2 / batch
    return total / gates


def test_batch_shaping_on_a_small_batch_is_the_sorted_cdf_gap():
    torch.manual_seed(0)
    points = [torch.randn(5, 3, dtype=torch.float64) * 2,  # two gate points, B = 5
              torch.randn(5, 2, dtype=torch.float64)]
    temperature = 0.5
    loss = BatchShaping(weight=3.0)(points, [], temperature, round_index=1)
    by_hand = [batch_shaping_by_hand(point / temperature, 0.6, 0.4) for point in points]
    assert float(loss) == pytest.approx(3.0 * sum(by_hand) / 2, rel=1e-10)
    prior = BatchShaping(weight=1.0, a=2.0, b=5.0)(points[:1], [], 1.0, 1)
    assert float(prior) == pytest.approx(batch_shaping_by_hand(points[0], 2.0, 5.0), rel=1e-10)


def test_batch_shaping_s_gradient_matches_finite_differences():
    torch.manual_seed(1)
    logits = (torch.randn(6, 4, dtype=torch.float64) * 3).requires_grad_()
    loss = BatchShaping(weight=1.0)
    assert torch.autograd.gradcheck(lambda z: loss([z], [], 0.7, 1), logits)


def test_batch_shaping_fades_while_its_l0_term_ramps_in():
    torch.manual_seed(2)
    points = [torch.randn(8, 4, dtype=torch.float64)]
    shaping = float(BatchShaping(weight=1.0)(points, [], 1.0, 1))
    share = float(torch.sigmoid(points[0]).mean())
    loss = BatchShaping(weight=2.0, fade_rounds=10, l0_weight=3.0, l0_warmup_rounds=5,
                        l0_ramp_rounds=4)
    # round: (batch-shaping's share of its weight, the L0 term's share of its weight)
    for round_index, (fading, ramping) in {1: (1.0, 0.0), 5: (0.6, 0.0), 6: (0.5, 0.25),
                                           8: (0.3, 0.75), 9: (0.2, 1.0), 11: (0.0, 1.0),
                                           40: (0.0, 1.0)}.items():
        expected = 2.0 * fading * shaping + 3.0 * ramping * share
        assert float(loss(points, [], 1.0, round_index)) == pytest.approx(expected, rel=1e-12)


def test_the_expected_share_on_is_off_through_its_warmup_then_ramps():
    torch.manual_seed(3)
    points = [torch.randn(4, 6), torch.randn(4, 2)]
    masks = [binarize(point, 1.0, 0.0) for point in points]
    relaxed = (torch.sigmoid(points[0] / 2).mean() + torch.sigmoid(points[1] / 2).mean()) / 2
    loss = ExpectedShareOn(weight=2.0, warmup_rounds=3, ramp_rounds=4)
    for round_index, ramping in {1: 0.0, 3: 0.0, 4: 0.25, 5: 0.5, 7: 1.0, 100: 1.0}.items():
        got = float(loss(points, masks, 2.0, round_index))
        assert got == pytest.approx(2.0 * ramping * float(relaxed), rel=1e-6)
    at_once = ExpectedShareOn(weight=1.0, warmup_rounds=3, value="hard")
    assert float(at_once(points, masks, 2.0, 3)) == 0.0
    share_on = (masks[0].mean() + masks[1].mean()) / 2  # per gate point, then over the points
    assert float(at_once(points, masks, 2.0, 4)) == pytest.approx(float(share_on))


def test_the_target_rate_loss_by_hand():
    masks = [torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]),
             torch.tensor([[0.0], [0.0], [0.0], [0.0]])]
    # on-rates 0.25, 1, 0.5 against 0.5: (0.0625 + 0.25 + 0) / 3; the second point (0 − 0.5)²
    expected = 4.0 * ((0.0625 + 0.25) / 3 + 0.25) / 2
    loss = TargetRate(weight=4.0, target_rate=0.5)([], masks, 1.0, 1)
    assert float(loss) == pytest.approx(expected)
    logits = [torch.tensor([[0.0, 2.0], [4.0, -2.0]])]
    rates = torch.sigmoid(logits[0] / 2).mean(0)  # relaxed, τ = 2
    relaxed = TargetRate(weight=1.0, target_rate=0.3, value="relaxed")(logits, [], 2.0, 1)
    assert float(relaxed) == pytest.approx(float(((rates - 0.3) ** 2).mean()))


def test_the_hard_value_takes_the_straight_through_gradient():
    """On the masks the value is the 0/1 on-rate, the gradient that of σ(z/τ) (METHOD.md §1):
    d/dz_bc of (1/C) Σ_c (r_c − t)² = (2/C)(r_c − t)(1/B) σ'(z_bc/τ)/τ, r_c the hard rate."""
    torch.manual_seed(4)
    logits = torch.randn(5, 3, requires_grad=True)
    temperature, target = 0.8, 0.3
    masks = binarize(logits, temperature, 0.0)
    TargetRate(weight=1.0, target_rate=target)([logits], [masks], temperature, 1).backward()
    rates = (logits > 0).float().mean(0)
    soft = torch.sigmoid(logits.detach() / temperature)
    expected = 2 / 3 * (rates - target) / 5 * soft * (1 - soft) / temperature
    torch.testing.assert_close(logits.grad, expected)


def gated_flat_and_client():
    torch.manual_seed(0)
    network = build_network("cnn4", (1, 8, 8), 3, gated_layers=[3]).double()
    flat = FlatParameters(network, network.is_gate_parameter)
    client = FixedBatchClient(torch.randn(8, 1, 8, 8, dtype=torch.float64),
                              torch.randint(0, 3, (8,)))
    return flat, client


def gate_loss_gradient(flat, at, client, loss, round_index):
    """∇ of ``loss`` alone at ``at``, from the gated block's logits computed apart."""
    network = flat.module
    flat.load(at)
    flat.zero_grad()
    gated = network.gated_layers[0]
    logits = network.blocks[gated].gate.logits(network.features(client.images, gated))
    masks = binarize(logits, network.temperature, 0.0)
    loss([logits], [masks], network.temperature, round_index).backward()
    return flat.grad.clone()


@pytest.mark.parametrize("node", [
    {"_target_": f"{TARGETS}.BatchShaping", "weight": 2.0, "a": 0.6, "b": 0.4},
    {"_target_": f"{TARGETS}.TargetRate", "weight": 3.0, "target_rate": 0.2},
])
def test_one_local_step_with_a_gate_loss_adds_its_gradient(node):
    """With one step from x_start the proximal term is zero: the step with the gate loss is
    the plain step minus η ∇(gate loss), on top of the budget's when both are set."""
    flat, client = gated_flat_and_client()
    start, lr = flat.vector.clone(), 0.1
    solver = ProximalSGD(1, lr, 1.0, 8, gate_loss=node)
    gradient = gate_loss_gradient(flat, start, client, solver.gate_loss_term, 1)
    assert float(gradient.abs().sum()) > 0
    plain = ProximalSGD(1, lr, 1.0, 8)(flat, start, client, None, 1).params
    with_loss = solver(flat, start, client, None, 1).params
    torch.testing.assert_close(with_loss - plain, -lr * gradient, rtol=1e-6, atol=1e-12)
    budget = ProximalSGD(1, lr, 1.0, 8, sparsity_off=0.99, sparsity_weight=5.0)
    both = ProximalSGD(1, lr, 1.0, 8, sparsity_off=0.99, sparsity_weight=5.0, gate_loss=node)
    torch.testing.assert_close(both(flat, start, client, None, 1).params
                               - budget(flat, start, client, None, 1).params,
                               -lr * gradient, rtol=1e-6, atol=1e-12)


def test_the_solver_passes_its_round_to_the_gate_loss():
    flat, client = gated_flat_and_client()
    start = flat.vector.clone()
    node = {"_target_": f"{TARGETS}.ExpectedShareOn", "weight": 5.0, "warmup_rounds": 3}
    plain = ProximalSGD(1, 0.1, 1.0, 8)(flat, start, client, None, 1).params
    solver = ProximalSGD(1, 0.1, 1.0, 8, gate_loss=node)
    assert torch.equal(solver(flat, start, client, None, round_index=3).params, plain)
    gradient = gate_loss_gradient(flat, start, client, solver.gate_loss_term, 4)
    torch.testing.assert_close(solver(flat, start, client, None, round_index=4).params - plain,
                               -0.1 * gradient, rtol=1e-6, atol=1e-12)


def test_the_forward_carries_the_gate_logits_its_masks_come_from():
    flat, client = gated_flat_and_client()
    network = flat.module
    output = network.forward_with_masks(client.images)
    gated = network.gated_layers[0]
    logits = network.blocks[gated].gate.logits(network.features(client.images, gated))
    torch.testing.assert_close(output.gate_logits[0], logits)
    assert torch.equal(output.masks[0], (logits > 0).double())


def test_each_gate_loss_node_validates_and_its_keys_are_checked():
    for option in ("batch_shaping", "target_rate", "expected_share_on"):
        validate(compose_config(["dataset=synthetic", f"+method/local/gate_loss={option}"]))
    bad = {"method.local.gate_loss.target_rate=1.5": "must be a number >= 0 and <= 1",
           "+method.local.gate_loss.rate=0.5": "TargetRate takes weight, target_rate, value"}
    for override, message in bad.items():
        cfg = compose_config(["dataset=synthetic", "+method/local/gate_loss=target_rate",
                              override])
        with pytest.raises(ConfigError, match=message):
            validate(cfg)


def test_a_null_gate_loss_keeps_the_fingerprint_and_a_set_one_changes_it(tiny_config):
    cfg = tiny_config()
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["method"]["local"]["gate_loss"]  # a config from before gate losses existed
    assert fingerprint(before) == fingerprint(cfg)
    target_rate = fingerprint(tiny_config("+method/local/gate_loss=target_rate"))
    assert target_rate != fingerprint(cfg)
    assert fingerprint(tiny_config("+method/local/gate_loss=target_rate",
                                   "method.local.gate_loss.weight=2")) != target_rate
    assert fingerprint(tiny_config("+method/local/gate_loss=batch_shaping")) not in (
        target_rate, fingerprint(cfg))


def test_a_gate_loss_without_gates_is_refused_in_one_line(tiny_config):
    cfg = tiny_config("method=metagater_nogate", "+method/local/gate_loss=target_rate")
    with pytest.raises(ConfigError, match="method.local.gate_loss: a gate loss needs gates"):
        build_learner(cfg, build_datamodule(cfg))
    gated = tiny_config("+method/local/gate_loss=target_rate")
    solver = build_learner(gated, build_datamodule(gated)).local_solver
    assert solver.gate_loss_term == TargetRate(weight=1.0, target_rate=0.5, value="hard")
