"""Gate losses: pressure on each gate's on-rate across a batch, added to the local objective
L_i (METHOD.md §7, "Gates that decide per input"; our extension, off by default).

Group Lasso (server side) and the sparsity budget act on the share of channels on, which a
static mask per task satisfies as well as one that changes with the input. The losses here
look at each gate c separately, over the B inputs of a batch, as the conditional-computation
literature does: batch-shaping (Bejnordi, Blankevoort & Welling, ICLR 2020) pulls the batch
distribution of each gate's relaxed value towards a U-shaped Beta prior (on for some inputs,
off for the others); a per-gate target rate (Veit & Belongie, ConvNet-AIG) pulls each gate's
batch on-rate towards a target; an L0 term (the expected share on) lowers the cost.

Each loss is a callable ``loss(gate_logits, masks, temperature, round_index) → scalar``:
``gate_logits`` and ``masks`` hold one (B, C) tensor per gate point (the gate's logits z
before binarization, without the training noise; the 0/1 masks of the forward pass with
their straight-through gradient, METHOD.md §1), τ the round's temperature, the round 1-based.
A loss reads one of two gate values (key ``value`` where both make sense): ``relaxed``,
σ(z/τ), the soft value whose gradient the straight-through estimator uses; or ``hard``, the
mask itself, whose value is the 0/1 decision and whose gradient is that of σ(z/τ). Each term
is averaged over the gates of a gate point and then over the gate points, so that every gate
point pulls as hard whatever its width (with one gate point: the mean over its gates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Protocol

import torch
import torch.nn.functional as F

from mglightning.constraints import integer, neutral, number, one_of, optional

GATE_VALUES = ("relaxed", "hard")  # which gate value a loss reads (module docstring)


class GateLoss(Protocol):
    def __call__(self, gate_logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                 temperature: float, round_index: int) -> torch.Tensor: ...


def gate_values(gate_logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                temperature: float, value: str) -> Sequence[torch.Tensor]:
    """Per gate point, the (B, C) gate values a loss reads: σ(z/τ) or the masks."""
    if value == "hard":
        return masks
    return [torch.sigmoid(logits / temperature) for logits in gate_logits]


def mean_over_points(per_point: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of one scalar per gate point (each already a mean over its gates)."""
    return torch.stack(list(per_point)).mean()


def ramp(round_index: int, warmup_rounds: int, ramp_rounds: int) -> float:
    """0 for the rounds up to ``warmup_rounds``, then (t − warmup) / ramp_rounds, held at 1
    from round warmup + ramp_rounds on; ``ramp_rounds`` 0: 1 right after the warm-up."""
    if round_index <= warmup_rounds:
        return 0.0
    return 1.0 if ramp_rounds == 0 else min(1.0, (round_index - warmup_rounds) / ramp_rounds)


def fade(round_index: int, fade_rounds: int | None) -> float:
    """1 at round 1, linearly to 0 at round ``fade_rounds + 1``, 0 after; None: always 1."""
    if fade_rounds is None:
        return 1.0
    return max(0.0, 1.0 - (round_index - 1) / fade_rounds)


def regularized_incomplete_beta(
    log_x: torch.Tensor, log_y: torch.Tensor, a: float, b: float
) -> torch.Tensor:
    """I_x(a, b), the Beta(a, b) CDF at x, from log x and log(1 − x), both given so that
    neither end loses precision (x = σ(u) has 1 − x = σ(−u)). Not differentiable: see
    :func:`beta_cdf_of_logit`. The continued fraction of I_x(a, b) (DLMF 8.17.22) converges
    fast for x < (a + 1)/(a + b + 2); above it, I_x(a, b) = 1 − I_{1−x}(b, a) is taken
    instead. It is evaluated from its last term back to its first (two tensor operations a
    term) with a fixed number of terms (:func:`continued_fraction_terms`), so that nothing
    is read back to the host: a GPU step never waits. Float64 throughout."""
    log_x, log_y = log_x.double(), log_y.double()
    swap = log_x.exp() > (a + 1) / (a + b + 2)  # take I_x(a, b) as 1 − I_{1−x}(b, a)
    p = torch.full_like(log_x, a).masked_fill_(swap, b)  # the shape parameters taken
    q = torch.full_like(log_x, b).masked_fill_(swap, a)
    x = torch.where(swap, log_y, log_x).exp()
    log_front = (torch.where(swap, log_y, log_x) * p + torch.where(swap, log_x, log_y) * q
                 - log_beta(a, b) - p.log())  # log(x^p (1 − x)^q / (p B(p, q)))
    last_first = range(continued_fraction_terms(a, b), 0, -1)
    kept, swapped = (torch.tensor([_fraction_coefficient(j, *shape) for j in last_first],
                                  dtype=x.dtype, device=x.device).view(-1, *[1] * x.dim())
                     for shape in ((a, b), (b, a)))
    numerators = kept * (x * ~swap) + swapped * (x * swap)  # (terms, *x.shape): d_J … d_1
    fraction = torch.ones_like(x)  # 1 + d_j/(1 + d_{j+1}/(1 + …)), from the last j down
    for numerator in numerators:
        fraction = numerator.div(fraction).add_(1)
    lower_tail = (log_front - fraction.log()).exp()
    return torch.where(swap, 1 - lower_tail, lower_tail)


def _fraction_coefficient(term: int, p: float, q: float) -> float:
    """d_j / x of the continued fraction of I_x(p, q) (DLMF 8.17.22), j = ``term``."""
    m = term // 2
    if term % 2:  # d_{2m+1} = −(p + m)(p + q + m) x / ((p + 2m)(p + 2m + 1))
        return -(p + m) * (p + q + m) / ((p + 2 * m) * (p + 2 * m + 1))
    return m * (q - m) / ((p + 2 * m - 1) * (p + 2 * m))  # d_{2m}


def continued_fraction_terms(a: float, b: float) -> int:
    """Terms of the continued fraction that reach float64 round-off for every x: it takes
    O(√max(a, b)) of them; measured on a grid of a, b in [0.01, 1000] against a convergence
    test (relative change < 1e-15), this count is at least 1.5 times the most needed."""
    return 2 * math.ceil(8 * math.sqrt(max(a, b, 1.0)) + 16)


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


class _BetaCdfOfLogit(torch.autograd.Function):
    """F_Beta(σ(u); a, b) with its derivative in u, σ(u)^a σ(−u)^b / B(a, b): the density
    f(x) = x^(a−1) (1−x)^(b−1) / B(a, b) times dx/du = x (1 − x). Taken in u, not in x, the
    derivative is finite everywhere (f is infinite at 0 and 1 when a < 1 or b < 1)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, a: float, b: float) -> torch.Tensor:
        log_x, log_y = F.logsigmoid(logits.double()), F.logsigmoid(-logits.double())
        ctx.save_for_backward(log_x, log_y)
        ctx.shape_parameters = (a, b)
        return regularized_incomplete_beta(log_x, log_y, a, b).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        log_x, log_y = ctx.saved_tensors
        a, b = ctx.shape_parameters
        density = (a * log_x + b * log_y - log_beta(a, b)).exp()  # dF/du
        return grad_output * density.to(grad_output.dtype), None, None


def beta_cdf_of_logit(logits: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The Beta(a, b) CDF at x = σ(``logits``), differentiable in the logits."""
    return _BetaCdfOfLogit.apply(logits, a, b)


def beta_cdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The Beta(a, b) CDF at x ∈ (0, 1), differentiable in x (its derivative, the density, is
    infinite at 0 and 1 when a < 1 or b < 1): :func:`beta_cdf_of_logit` at logit(x)."""
    return beta_cdf_of_logit(torch.logit(x), a, b)


@dataclass
class ExpectedShareOn:
    """The L0 term: ``weight(t) · mean of the gates' values`` over the batch, per gate point,
    then over the points: the expected share of gates on. Relaxed: σ(z/τ), at τ = 1 each
    gate's probability of being on under the Logistic-noise forward (METHOD.md §1, reading
    (b)); hard: the share on itself, the budget's quantity. ``weight(t)`` is 0 up to round
    ``warmup_rounds`` and reaches ``weight`` ``ramp_rounds`` rounds later (:func:`ramp`), so
    the gates first learn what to decide, then how little to use (Bejnordi et al.)."""

    weight: Annotated[float, number(at_least=0)]
    warmup_rounds: Annotated[int, integer(0)] = 0
    ramp_rounds: Annotated[int, integer(0)] = 0
    value: Annotated[str, one_of(*GATE_VALUES)] = "relaxed"

    def __call__(self, gate_logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                 temperature: float, round_index: int) -> torch.Tensor:
        values = gate_values(gate_logits, masks, temperature, self.value)
        weight = self.weight * ramp(round_index, self.warmup_rounds, self.ramp_rounds)
        return weight * mean_over_points([point.mean() for point in values])


@dataclass
class TargetRate:
    """ConvNet-AIG's target-rate loss, per gate: ``weight · mean_c (r_c − target_rate)²``,
    r_c the mean of gate c's values over the batch, averaged over the gates of a point, then
    over the points. Unlike the budget (one share over the layer), it asks every gate to be
    on for a share of the inputs, which a gate on or off for every input cannot meet. Hard
    (the default): r_c is the gate's on-rate, its gradient the straight-through one."""

    weight: Annotated[float, number(at_least=0)]
    target_rate: Annotated[float, number(at_least=0, at_most=1)]
    value: Annotated[str, one_of(*GATE_VALUES)] = "hard"

    def __call__(self, gate_logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                 temperature: float, round_index: int) -> torch.Tensor:
        values = gate_values(gate_logits, masks, temperature, self.value)
        return self.weight * mean_over_points(
            [((point.mean(dim=0) - self.target_rate) ** 2).mean() for point in values])


@dataclass
class BatchShaping:
    """Batch-shaping (Bejnordi et al., ICLR 2020): for each gate c, its relaxed values over
    the batch sorted, x_(1) ≤ … ≤ x_(B), and (1/B) Σ_i (i/(B+1) − F_Beta(x_(i); a, b))², the
    squared gap between their empirical CDF and the prior's; averaged over the gates of a
    point, then over the points. a = 0.6, b = 0.4 (U-shaped, on 40 % of the time) pushes
    each gate towards on for some inputs and off for the others. Relaxed values only: the
    hard ones are 0 or 1, where F is flat and its density infinite.

    Its weight fades, ``weight`` at round 1 to 0 at round ``fade_rounds + 1`` (:func:`fade`;
    None: no fade), while an L0 term (:class:`ExpectedShareOn`, relaxed) of weight
    ``l0_weight`` ramps in after ``l0_warmup_rounds`` over ``l0_ramp_rounds``: the gates
    learn to be conditional first, then to be sparse, as the paper trains them."""

    weight: Annotated[float, number(at_least=0)]
    a: Annotated[float, number(above=0, at_most=1000)] = 0.6
    b: Annotated[float, number(above=0, at_most=1000)] = 0.4
    fade_rounds: Annotated[int | None, optional(integer(1))] = None
    l0_weight: Annotated[float, number(at_least=0),
                         neutral(0.0, "l0_warmup_rounds", "l0_ramp_rounds")] = 0.0
    l0_warmup_rounds: Annotated[int, integer(0)] = 0
    l0_ramp_rounds: Annotated[int, integer(0)] = 0
    l0: ExpectedShareOn = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.l0 = ExpectedShareOn(self.l0_weight, self.l0_warmup_rounds, self.l0_ramp_rounds)

    def __call__(self, gate_logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                 temperature: float, round_index: int) -> torch.Tensor:
        shaping = self.weight * fade(round_index, self.fade_rounds) * mean_over_points(
            [self.shaping_loss(logits / temperature) for logits in gate_logits])
        return shaping + self.l0(gate_logits, masks, temperature, round_index)

    def shaping_loss(self, scaled_logits: torch.Tensor) -> torch.Tensor:
        """The batch-shaping loss of one gate point's (B, C) values σ(z/τ), from z/τ: σ is
        monotone, so sorting z/τ sorts the values, and the CDF is taken in z/τ."""
        batch = scaled_logits.shape[0]
        ordered = scaled_logits.sort(dim=0).values  # (B, C), each column ascending
        empirical = torch.arange(1, batch + 1, dtype=ordered.dtype,
                                 device=ordered.device) / (batch + 1)  # (B,)
        prior = beta_cdf_of_logit(ordered, self.a, self.b)  # (B, C)
        return ((empirical[:, None] - prior) ** 2).mean()
