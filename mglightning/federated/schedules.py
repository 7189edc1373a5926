"""Per-round values of the gate training options (METHOD.md §1): the scale of the Logistic gate
noise and the Gumbel-sigmoid temperature τ, as functions of the round alone, so that a
resumed run sees exactly the values an uninterrupted one did."""

from __future__ import annotations

from dataclasses import dataclass

# method.gate_noise: none = reading (a) of METHOD.md §1, a deterministic forward; logistic =
# reading (b), Logistic(0, 1) noise in every round; annealed = between them, the noise scale
# going linearly from 1 at round 1 to 0 at the last round.
GATE_NOISE_SCALES = {"none": (0.0, 0.0), "logistic": (1.0, 1.0), "annealed": (1.0, 0.0)}


@dataclass(frozen=True)
class LinearSchedule:
    """``start`` at round 1, ``end`` at round ``rounds``, linear between (and held at ``end``
    after it); a constant when ``start == end``."""

    start: float
    end: float
    rounds: int

    def __call__(self, round_index: int) -> float:
        if self.start == self.end or self.rounds <= 1:
            return self.start
        progress = min(max(round_index - 1, 0), self.rounds - 1) / (self.rounds - 1)
        return self.start + (self.end - self.start) * progress


def gate_noise_schedule(kind: str, rounds: int) -> LinearSchedule:
    """The noise scale of ``method.gate_noise=kind`` (see :data:`GATE_NOISE_SCALES`)."""
    if kind not in GATE_NOISE_SCALES:
        raise ValueError(
            f"method.gate_noise={kind!r} is unknown: choose one of {list(GATE_NOISE_SCALES)}"
        )
    return LinearSchedule(*GATE_NOISE_SCALES[kind], rounds)


def temperature_schedule(start: float, end: float | None, rounds: int) -> LinearSchedule:
    """τ from ``model.temperature`` at round 1 to ``method.temperature_end`` at the last
    round; ``end=None`` keeps τ constant."""
    return LinearSchedule(start, start if end is None else end, rounds)
