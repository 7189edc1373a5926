"""Measurements of the package, kept beside it and not installed (setup.py packages only
``mglightning``; run them from the repository root): round time, overhead, learning time,
inference, memory, and the batched rounds (:mod:`benchmarks.batched`) timed as candidates for
a GPU round.

Every figure is a ratio of two candidates timed side by side in one process (alternating
A/B, several repeats, median and spread), so that other processes sharing the CPU slow both
alike; absolute times are reported as context only. ``python -m benchmarks`` (``make bench``)
writes ``BENCHMARKS.md`` and ``BENCHMARKS.json``; ``make gpu-check`` runs
:mod:`benchmarks.device_rounds`.
"""
