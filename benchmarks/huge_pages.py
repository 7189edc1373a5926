"""Transparent huge pages for large CPU tensors (``THP_MEM_ALLOC_ENABLE``, which importing the
package sets): the time of a round and of an evaluation of the targets with them and without.

PyTorch reads the setting once per process, so each setting runs in fresh processes
(``python -m benchmarks.huge_pages --child``), alternating (on, off, off, on) so that a
change in the machine's load falls on both. A child runs the CIFAR-10 stand-in of
:mod:`benchmarks.device_rounds` (``overrides`` after it): warm-up rounds, timed rounds,
then one evaluation of the first ``targets`` target nodes as the accuracy curve takes it,
counting the page faults the evaluation made. The results are the same bits either way
(``tests/test_package.py`` checks the faults, ``tests/benchmarks/test_bench.py`` the
results).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTING_ORDER = ("1", "0", "0", "1")  # THP_MEM_ALLOC_ENABLE of each child, in turn
WARMUP_ROUNDS = 1


def page_faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(overrides: list[str], rounds: int, targets: int) -> dict:
    """One child's figures: median round, one evaluation of ``targets`` targets, its faults."""
    from benchmarks.device_rounds import CIFAR10_STAND_IN
    from benchmarks.workload import compose_config
    from mglightning.build import build_adapter, build_datamodule, build_learner

    cfg = compose_config([*CIFAR10_STAND_IN, *overrides])
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    round_seconds = [learner.run_round(datamodule.train_clients)["round_seconds"]
                     for _ in range(WARMUP_ROUNDS + rounds)][WARMUP_ROUNDS:]
    adapter = build_adapter(cfg)
    adapter.set_meta_network(learner.meta_network())
    faults, start = page_faults(), time.perf_counter()
    rows = adapter.evaluate_targets(datamodule.target_clients[:targets], measure_gating=False)
    return {"round_seconds": statistics.median(round_seconds),
            "evaluation_seconds": time.perf_counter() - start,
            "evaluation_page_faults": page_faults() - faults,
            "accuracies": [row["accuracy"] for row in rows]}


def bench_huge_pages(overrides: list[str] | tuple[str, ...] = (), rounds: int = 4,
                     targets: int = 8, order: tuple[str, ...] = SETTING_ORDER) -> dict:
    """Per setting ("on", "off") the medians of its children's figures; the time off ÷ on of
    a round and of an evaluation; whether every child's target accuracies agreed. ``order``:
    the children's settings in turn, each of "1" and "0" at least once."""
    children: dict[str, list[dict]] = {"on": [], "off": []}
    for setting in order:
        command = [sys.executable, "-m", "benchmarks.huge_pages", "--child",
                   f"--rounds={rounds}", f"--targets={targets}", *overrides]
        done = subprocess.run(command, check=True, capture_output=True, text=True, env={
            **os.environ, "OMP_NUM_THREADS": "1", "THP_MEM_ALLOC_ENABLE": setting})
        children["on" if setting == "1" else "off"].append(json.loads(done.stdout.splitlines()[-1]))
    figures = {name: {key: statistics.median(child[key] for child in runs)
                      for key in ("round_seconds", "evaluation_seconds", "evaluation_page_faults")}
               for name, runs in children.items()}
    return {**figures,
            "round_off_over_on": figures["off"]["round_seconds"] / figures["on"]["round_seconds"],
            "evaluation_off_over_on": (figures["off"]["evaluation_seconds"]
                                       / figures["on"]["evaluation_seconds"]),
            "same_accuracies": len({tuple(child["accuracies"])
                                    for runs in children.values() for child in runs}) == 1,
            "rounds": rounds, "targets": targets,
            "children_per_setting": min(len(runs) for runs in children.values()),
            "overrides": list(overrides)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.huge_pages",
                                     description=__doc__)
    parser.add_argument("--child", action="store_true", help="measure this process, print JSON")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="config overrides, after the stand-in's")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.overrides, args.rounds, args.targets)))
    else:
        print(json.dumps(bench_huge_pages(args.overrides, args.rounds, args.targets), indent=2))


if __name__ == "__main__":
    main()
