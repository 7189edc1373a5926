"""The check after a loopback deployment (flower_deploy_smoke.sh, flower_drill.sh): the
ServerApp's saved state against the in-process learner of the same config.

    python scripts/flower_check.py "OVERRIDES" [--killed-partition P] [--resumed]

The state must hold all ``rounds`` of the config and an x_ag equal, bit for bit, to the
in-process learner's after as many rounds. Without ``--killed-partition`` no node may have
failed. With it, training node P was killed mid-run and started again: some rounds failed
for it (those ``flower/rounds.csv`` counts), the last round did not (it rejoined), and the
in-process learner in which P fails at those same rounds (``faults.inject``) must give the
same x_ag, since a failed node is left out of its round in both. With ``--resumed`` the last
ServerApp must have run only some of the rounds, having resumed from the saved state of one
that was stopped. Exit 1 with a line saying what differs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from mglightning.build import build_datamodule, build_learner
from mglightning.flower.run_config import compose_config
from mglightning.flower.server_app import ROUNDS_FILE, STATE_FILE


def in_process_x_ag(overrides: str) -> torch.Tensor:
    cfg = compose_config(overrides)
    torch.set_num_threads(1)  # as the ClientApp processes (OMP_NUM_THREADS=1)
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    for _ in range(cfg.rounds):
        learner.run_round(datamodule.train_clients)
    return learner.x_ag


def failed_rounds(rows: list[dict]) -> list[int]:
    return [int(float(row["round"])) for row in rows if int(float(row["failed-clients"])) > 0]


def check(overrides: str, killed_partition: int | None, resumed: bool) -> str:
    """What was checked, in a line; raises AssertionError saying what differs."""
    cfg = compose_config(overrides)
    output_dir = Path(cfg.output_dir)
    state = torch.load(output_dir / STATE_FILE, weights_only=True)["state_dict"]
    assert int(state["rounds_done"]) == cfg.rounds, (
        f"rounds_done={int(state['rounds_done'])}, the config has rounds={cfg.rounds}")
    with open(output_dir / ROUNDS_FILE) as handle:
        rows = list(csv.DictReader(handle))  # the rounds of the last ServerApp process
    failed = failed_rounds(rows)
    if resumed:
        assert 0 < len(rows) < cfg.rounds, (
            f"the last ServerApp ran {len(rows)} of {cfg.rounds} rounds: it did not resume")
    if killed_partition is None:
        assert not failed, f"nodes failed in rounds {failed}"
        reference = overrides
    else:
        assert failed, f"no round failed after training node {killed_partition} was killed"
        assert failed[-1] < cfg.rounds, f"training node {killed_partition} did not rejoin: " \
                                        f"the last round {cfg.rounds} failed too"
        node_id = build_datamodule(cfg).train_clients[killed_partition].node_id
        reference = (f"{overrides} faults.inject.clients=[{node_id}] faults.inject.kind=raise "
                     f"faults.inject.rounds=[{','.join(map(str, failed))}]")
    assert torch.equal(state["x_ag"], in_process_x_ag(reference)), \
        "x_ag differs from the in-process run"
    seconds = ", ".join(f"{float(row['round-seconds']):.1f}" for row in rows)
    return (f"ok: {cfg.rounds} rounds, failed rounds {failed or 'none'}, x_ag equal to the "
            f"in-process run bit for bit; the last ServerApp ran {len(rows)} rounds, "
            f"seconds: {seconds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", help="the run's Hydra overrides, one string")
    parser.add_argument("--killed-partition", type=int, default=None,
                        help="the training node killed and started again mid-run")
    parser.add_argument("--resumed", action="store_true",
                        help="the last ServerApp resumed from a stopped one's saved state")
    args = parser.parse_args()
    try:
        print(check(args.overrides, args.killed_partition, args.resumed))
    except AssertionError as error:
        print(f"check failed: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
