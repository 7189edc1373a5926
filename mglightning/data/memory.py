"""Whether what an input asks for fits in memory, asked before a byte of it is allocated.

A run that takes more memory than the machine has is not refused by anyone else: it grows until
the kernel kills it (exit 137), and other processes with it. So every input that scales memory
(an image size, a number of images, a node count, a network's width) is priced first, from
headers and shapes, and refused in one line when the price exceeds :data:`MEMORY_SHARE` of the
memory available now: the share leaves room for what no estimate counts (the interpreter, the
libraries, the allocator's slack) and for the machine's other work.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mglightning.errors import ConfigError

MEMORY_SHARE = 0.5  # a run plans to take at most this share of the memory available
MEMINFO = Path("/proc/meminfo")
CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")  # a container's own limit (cgroup v2)
CGROUP_USAGE = Path("/sys/fs/cgroup/memory.current")


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Bytes that can be allocated on ``device`` now: a GPU's free memory; on the host the
    kernel's MemAvailable, or less where a container's limit leaves less."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = _meminfo_available()
    if CGROUP_LIMIT.is_file() and CGROUP_USAGE.is_file():
        limit = CGROUP_LIMIT.read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(CGROUP_USAGE.read_text()))
    return available


def _meminfo_available() -> int:
    """The kernel's estimate of memory available without swapping (Linux), else the free pages
    (other Unix), else the physical memory."""
    if MEMINFO.is_file():
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    page_size = os.sysconf("SC_PAGE_SIZE")
    pages = "SC_AVPHYS_PAGES" if "SC_AVPHYS_PAGES" in os.sysconf_names else "SC_PHYS_PAGES"
    return os.sysconf(pages) * page_size


def check_fits(needed: int, what: str, remedy: str, device: torch.device | str = "cpu") -> None:
    """Refuse (:class:`ConfigError`) what :func:`shortfall` finds too large."""
    problem = shortfall(needed, what, remedy, device)
    if problem:
        raise ConfigError(problem)


def shortfall(needed: int, what: str, remedy: str,
              device: torch.device | str = "cpu") -> str | None:
    """One line when ``needed`` bytes exceed :data:`MEMORY_SHARE` of what ``device`` has
    available (``what`` says what needs them, ``remedy`` which key to change), else None."""
    available = available_bytes(device)
    if needed <= MEMORY_SHARE * available:
        return None
    return (f"{what} need {size_text(needed)} of memory but {torch.device(device)} has "
            f"{size_text(available)} available, and a run plans for at most "
            f"{MEMORY_SHARE:.0%} of it: {remedy}")


def size_text(num_bytes: float) -> str:
    """``num_bytes`` in the largest unit that leaves at least 1: ``"1.5 GB"``."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    exponent = 0
    while num_bytes >= 1000 and exponent < len(units) - 1:
        num_bytes /= 1000
        exponent += 1
    return f"{num_bytes:.0f} B" if exponent == 0 else f"{num_bytes:.1f} {units[exponent]}"
