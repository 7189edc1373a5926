"""``make flower-sim``: our config's rounds on Flower's simulation engine, one virtual
SuperNode per training node, then the meta-model's place and the round times.

    python -m mglightning.flower.simulate dataset=synthetic rounds=3 [--num-cpus 1]

Ray runs the ClientApps in ``--num-cpus`` actors of one CPU each (one torch thread each); on a
shared machine keep it small.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from pathlib import Path

from mglightning.build import build_datamodule
from mglightning.config import ConfigError
from mglightning.flower.client_app import make_client_app
from mglightning.flower.run_config import compose_config
from mglightning.flower.server_app import ROUNDS_FILE, STATE_FILE, make_server_app


def backend_config(num_cpus: int) -> dict:
    """Ray with ``num_cpus`` CPUs, one per ClientApp actor, quiet, no dashboard."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "logging_level": "error",
                          "log_to_driver": False}}


def simulate(overrides: list[str], num_cpus: int = 1) -> Path:
    """Run the simulation; returns the run's output folder."""
    from flwr.simulation import run_simulation

    text = shlex.join(overrides)
    cfg = compose_config(text)
    num_nodes = len(build_datamodule(cfg).train_clients)
    run_simulation(make_server_app(text), make_client_app(text), num_supernodes=num_nodes,
                   backend_config=backend_config(num_cpus))
    return Path(cfg.output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for mglightning.train")
    parser.add_argument("--num-cpus", type=int, default=1, help="Ray CPUs (ClientApp actors)")
    args = parser.parse_args(argv)
    try:
        output_dir = simulate(args.overrides, args.num_cpus)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    with open(output_dir / ROUNDS_FILE) as handle:
        seconds = [float(row["round-seconds"]) for row in csv.DictReader(handle)]
    print(f"{len(seconds)} rounds, {sum(seconds) / max(len(seconds), 1):.3f} s a round "
          f"(first {seconds[0]:.3f} s); server state with x_ag in {output_dir / STATE_FILE}")


if __name__ == "__main__":
    main()
