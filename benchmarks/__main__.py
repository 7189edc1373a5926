"""``python -m benchmarks``: run the suite, write BENCHMARKS.md and BENCHMARKS.json."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from benchmarks.report import render
from benchmarks.suite import BenchConfig, run_suite
from mglightning.run.io import atomic_write_text, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ sits in the repository root
# BENCHMARKS.md's last section, written by hand from `make flower-round-times` (a deployment
# the suite does not run): kept, whole, when the suite rewrites the rest.
FLOWER_SECTION = "\n## Flower: a deployment round against the engine's floor"


def parse_args(argv=None) -> argparse.Namespace:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--clients", type=int, default=defaults.clients_per_round, help="K")
    parser.add_argument("--local-steps", type=int, default=defaults.local_steps, help="m")
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch threads (1: stable when other processes share the cores)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocess")
    parser.add_argument("--no-processes", action="store_true",
                        help="skip the 1 vs 2 process round times")
    parser.add_argument("--no-export", action="store_true",
                        help="skip the compiled task module (goal 4's exported row, the saved "
                             "formats): two C++ compiles")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT)
    return parser.parse_args(argv)


def with_flower_section(rendered: str, previous: str) -> str:
    """The suite's ``rendered`` BENCHMARKS.md, followed by the Flower section of the
    ``previous`` one (if it has one)."""
    return rendered + "".join(previous.partition(FLOWER_SECTION)[1:])


def main(argv=None) -> None:
    args = parse_args(argv)
    config = dataclasses.replace(BenchConfig(), clients_per_round=args.clients,
                                 local_steps=args.local_steps, repeats=args.repeats,
                                 threads=args.threads, memory=not args.no_memory,
                                 processes=not args.no_processes, export=not args.no_export)
    results = run_suite(config)
    command = "make bench" if argv is None else "python -m benchmarks"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "BENCHMARKS.json", results)
    path = args.output_dir / "BENCHMARKS.md"
    previous = path.read_text() if path.exists() else ""
    atomic_write_text(path, with_flower_section(render(results, command), previous))
    print(render(results, command))


if __name__ == "__main__":
    main()
