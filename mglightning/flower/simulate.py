"""``make flower-sim``: our config's rounds on Flower's simulation engine, one virtual
SuperNode per training node, then the meta-model's place and the round times.

    python -m mglightning.flower.simulate dataset=synthetic rounds=3 [--num-cpus 1]

The way flwr 1.41 recommends (its ``run_simulation`` is deprecated): ``flwr run`` of this
project's Flower app (pyproject.toml ``[tool.flwr.app]``, so a source checkout) against a
SuperLink in simulation mode, started here on a free loopback port with a Flower home of its
own, and stopped after the run. Ray runs the ClientApps in ``--num-cpus`` actors of one CPU
each; every process of the run gets one torch thread (``OMP_NUM_THREADS``, unless set), as
the in-process run it equals bit for bit; on a shared machine keep ``--num-cpus`` small.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mglightning.build import build_datamodule
from mglightning.config import SOURCE_CONF_DIR, ConfigError
from mglightning.flower.run_config import compose_config

try:
    from mglightning.flower.server_app import ROUNDS_FILE, STATE_FILE
except ModuleNotFoundError as error:  # flwr is the optional `flower` extra (pyproject.toml)
    if error.name != "flwr":
        raise
    print("error: Flower is not installed: pip install 'mglightning[flower]'", file=sys.stderr)
    raise SystemExit(2) from None

APP_DIR = SOURCE_CONF_DIR.parent  # the Flower app: pyproject.toml's [tool.flwr.app]
CONNECTION = "simulation"  # the SuperLink connection's name in the run's own Flower home
SUPERLINK_START_SECONDS = 120.0


class SimulationError(RuntimeError):
    """The simulation could not start or ended without the server's results; says where the
    logs are."""


def federation_config(num_nodes: int, num_cpus: int) -> str:
    """One virtual SuperNode per training node; Ray with ``num_cpus`` CPUs, one per ClientApp
    actor, quiet."""
    return (f"num-supernodes={num_nodes} backend=\"ray\" client-resources-num-cpus=1 "
            f"client-resources-num-gpus=0.0 init-args-num-cpus={num_cpus} init-args-num-gpus=0 "
            "init-args-logging-level=\"error\" init-args-log-to-driver=false")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, superlink: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SUPERLINK_START_SECONDS
    while time.monotonic() < deadline:
        if superlink.poll() is not None:
            raise SimulationError(f"the SuperLink exited with code {superlink.returncode}: "
                                  f"see {log_path}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SimulationError(f"the SuperLink did not listen on port {port} within "
                          f"{SUPERLINK_START_SECONDS:.0f} s: see {log_path}")


def stop(superlink: subprocess.Popen) -> None:
    """The SuperLink and what it started (its process group)."""
    if superlink.poll() is None:
        os.killpg(superlink.pid, signal.SIGTERM)
        try:
            superlink.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)
            superlink.wait()


@contextmanager
def simulation_superlink(home: Path, port: int, env: dict) -> Iterator[None]:
    """A SuperLink in simulation mode on 127.0.0.1:``port``, its Flower home ``home`` naming
    it as the default connection; stopped on exit."""
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n'
                                      f'[superlink.{CONNECTION}]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    log_path = home / "superlink.log"
    with open(log_path, "w") as log:
        superlink = subprocess.Popen(
            ["flower-superlink", "--insecure", "--simulation", "--host", "127.0.0.1",
             "--port", str(port), "--database", home / "superlink.db",
             "--disable-runtime-dependency-installation"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, superlink, log_path)
        yield
    finally:
        stop(superlink)


def simulate(overrides: list[str], num_cpus: int = 1) -> Path:
    """Run the simulation; returns the run's output folder."""
    if not (APP_DIR / "pyproject.toml").exists():
        raise SimulationError(f"no Flower app in {APP_DIR}: make flower-sim runs from a "
                              "source checkout (its pyproject.toml is the app)")
    text = shlex.join(overrides)
    cfg = compose_config(text)
    num_nodes = len(build_datamodule(cfg).train_clients)
    home = Path(tempfile.mkdtemp(prefix="mg-flower-sim-"))
    (home / "run_config.toml").write_text(f"overrides = {json.dumps(text)}\n")
    bin_dir = Path(sys.executable).parent  # flwr's commands, beside this interpreter
    env = {**os.environ, "FLWR_HOME": str(home),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.time()
    with simulation_superlink(home, free_port(), env):
        subprocess.run(["flwr", "run", APP_DIR, CONNECTION, "--stream",
                        "--run-config", home / "run_config.toml",
                        "--federation-config", federation_config(num_nodes, num_cpus)],
                       env=env, check=True)
    rounds_file = Path(cfg.output_dir) / ROUNDS_FILE
    if not rounds_file.exists() or rounds_file.stat().st_mtime < started:
        raise SimulationError(f"the run ended without writing {rounds_file}: see the log "
                              f"above and {home / 'superlink.log'}")
    shutil.rmtree(home)  # kept, with the SuperLink's log, when the run failed
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
    except (SimulationError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    with open(output_dir / ROUNDS_FILE) as handle:
        seconds = [float(row["round-seconds"]) for row in csv.DictReader(handle)]
    print(f"{len(seconds)} rounds, {sum(seconds) / max(len(seconds), 1):.3f} s a round "
          f"(first {seconds[0]:.3f} s); server state with x_ag in {output_dir / STATE_FILE}")


if __name__ == "__main__":
    main()
