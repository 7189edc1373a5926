"""Benchmarks of the issue-#6 goals: round time, overhead, learning time, inference, memory.

Every figure is a ratio of two candidates timed side by side in one process (alternating
A/B, several repeats, median and spread), so that other processes sharing the CPU slow both
alike; absolute times are reported as context only. ``python -m mglightning.bench`` writes
``BENCHMARKS.md`` and ``BENCHMARKS.json``.
"""
