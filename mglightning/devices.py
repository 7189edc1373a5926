"""Two device habits every module shares: timing that waits for the device, host-to-device
copies that do not.

On a GPU, work is queued and runs later: a wall clock read without waiting for the queue
measures the launches, not the work, so every timer reads :func:`device_clock`. And a plain
``tensor.to(cuda)`` from host memory waits for the queue to drain before it copies, stalling
the host once per call; :func:`from_host` copies without that wait. On the CPU both are plain.
"""

from __future__ import annotations

import time

import torch


def device_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    torch.get_device_module(device).synchronize(device)
    return time.perf_counter()


def from_host(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` (a small host tensor: indices, weights) on ``device``, copied without
    waiting for the device's queue (the driver stages the host memory at once)."""
    return values.to(device, non_blocking=True)
