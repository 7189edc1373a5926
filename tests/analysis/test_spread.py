"""The one spread: the sample standard deviation, 0 for a single value, in every summary."""

import math
import statistics

import pytest

from mglightning.analysis.spread import sample_std
from mglightning.analysis.task_summary import SPREAD_KEYS, summarize_tasks


def test_the_spread_is_the_sample_standard_deviation():
    # mean 5, squared deviations 9 + 1 + 1 + 1 + 0 + 0 + 4 + 16 = 32, over n − 1 = 7
    assert sample_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))
    assert sample_std(value for value in (1.0, 3.0)) == pytest.approx(math.sqrt(2))


def test_a_single_value_has_no_spread_and_no_values_are_refused():
    assert sample_std([0.7]) == 0.0
    with pytest.raises(statistics.StatisticsError):
        sample_std([])


def test_the_task_summary_reports_the_sample_spread_over_tasks():
    rows = [dict.fromkeys(SPREAD_KEYS, value) for value in (0.5, 0.7, 0.9)]
    summary = summarize_tasks(rows)
    for key in SPREAD_KEYS:  # deviations ±0.2 and 0, over n − 1 = 2: 0.2
        assert summary[f"{key}_std"] == pytest.approx(0.2)
    assert summarize_tasks(rows[:1])["accuracy_std"] == 0.0
