"""The one spread the package reports: every ``*_std`` of summary.json, the tables and the
figures' error bars is :func:`sample_std`, so "mean ± std" means the same everywhere."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def sample_std(values: Iterable[float]) -> float:
    """The sample standard deviation (n − 1) of ``values``: what a reader takes "± std" over
    seeds or target tasks for. A single value has none to show: 0.0, never NaN, so a table of
    one seed stays a table of numbers."""
    values = [float(value) for value in values]
    return 0.0 if len(values) == 1 else statistics.stdev(values)
