"""Side-by-side timing: candidates run in alternation, each repeat yields one ratio."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class Ratio:
    """Per-repeat ratios time(numerator) / time(denominator), with both candidates' times."""

    ratios: list[float]
    numerator_seconds: list[float]
    denominator_seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def summary(self) -> dict:
        """Median ratio, its min–max spread, and the median seconds of either candidate."""
        return {
            "ratio_median": self.median,
            "ratio_min": min(self.ratios),
            "ratio_max": max(self.ratios),
            "repeats": len(self.ratios),
            "numerator_seconds": statistics.median(self.numerator_seconds),
            "denominator_seconds": statistics.median(self.denominator_seconds),
        }


def time_call(run: Callable[[], object], calls: int) -> float:
    """Mean seconds of one call over ``calls`` calls back to back."""
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def alternate(
    candidates: Mapping[str, Callable[[], object]], repeats: int, calls: int = 1, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, per repeat. Within a repeat the candidates run in
    turn (their order reversed every other repeat), so load from other processes and
    frequency changes fall on all of them alike."""
    for run in candidates.values():
        for _ in range(warmup):
            run()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            seconds[name].append(time_call(candidates[name], calls))
    return seconds


def ratio(seconds: Mapping[str, list[float]], numerator: str, denominator: str) -> Ratio:
    """The per-repeat ratio of two candidates timed by :func:`alternate`."""
    top, bottom = seconds[numerator], seconds[denominator]
    return Ratio([a / b for a, b in zip(top, bottom, strict=True)], list(top), list(bottom))
