"""Goal 5: resident memory of a federation of 1,000 nodes against its raw image tensor.

Measured in a fresh subprocess (``python -m benchmarks.memory``): RSS once everything
is imported and a tiny synthetic federation has run the same code once (so that library
code paged in on first use is not counted as data), then after building and setting up the
FederatedDataModule. Anonymous RSS (what the data can occupy) is reported beside total RSS.
Nodes are index views into one pooled uint8 tensor (METHOD.md §2), so the increase should be that
tensor plus labels and index tensors, not a copy per node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NUM_NODES = 1000
NODE_OVERRIDES = [  # 1,000 nodes of 30–90 samples: ~60k of the 70k images
    f"dataset.partition.num_nodes={NUM_NODES}",
    "dataset.num_target_nodes=100",
    "dataset.partition.size_range=[30,90]",
]


def memory_kib() -> dict[str, int]:
    """Current (VmRSS), peak (VmHWM), anonymous (RssAnon) and file-backed (RssFile)
    resident memory of this process, in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def measure(overrides: list[str]) -> dict:
    """RSS increase of building the federation, over the bytes of its uint8 images."""
    from benchmarks.workload import compose_config
    from mglightning.build import build_datamodule

    build_datamodule(compose_config(["dataset=synthetic"]))  # warm-up: page in the code
    cfg = compose_config([*overrides, *NODE_OVERRIDES])
    before = memory_kib()
    datamodule = build_datamodule(cfg)
    after = memory_kib()
    image_bytes = datamodule.data.images.numel() * datamodule.data.images.element_size()
    increases = {
        "rss": after["VmRSS"] - before["VmRSS"],
        "anonymous_rss": after["RssAnon"] - before["RssAnon"],
        "peak_rss": max(after["VmHWM"], before["VmRSS"]) - before["VmRSS"],
    }
    return {
        "nodes": len(datamodule.train_clients) + len(datamodule.target_clients),
        "image_bytes": image_bytes,
        **{f"{name}_increase_bytes": kib * 1024 for name, kib in increases.items()},
        **{f"{name}_ratio": kib * 1024 / image_bytes for name, kib in increases.items()},
    }


def measure_in_subprocess(overrides: list[str]) -> dict:
    """:func:`measure` in a fresh interpreter, so nothing loaded earlier is counted."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", json.dumps(overrides)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
