"""Two machines (``trainer.num_nodes=2``), started as a cluster starts them: one process per
machine, launched by hand on 127.0.0.1 with the variables a cluster sets (MASTER_ADDR,
MASTER_PORT, NODE_RANK, WORLD_SIZE). The rounds split across them as across devices
(:mod:`mglightning.federated.distributed`), so the run equals one process's bit for bit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mglightning.config import SOURCE_CONF_DIR
from mglightning.train import run

REPO_ROOT = SOURCE_CONF_DIR.parent
SETTINGS = ["dataset=synthetic", "logger=none", "progress_bar=false", "rounds=6", "eval_every=3",
            "method.clients_per_round=5", "checkpoint.every_n_rounds=1"]
NODES = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_machine(node_rank: int, port: int, output_root: Path) -> subprocess.Popen:
    """One machine's process, with what a cluster (or the README's line) gives it; its output
    in ``output_root/node<rank>.out`` and ``.err``."""
    cluster = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node_rank),
               "WORLD_SIZE": str(NODES), "OMP_NUM_THREADS": "1"}  # one thread, as in-process
    output_root.mkdir(parents=True, exist_ok=True)
    with open(output_root / f"node{node_rank}.out", "w") as out, \
            open(output_root / f"node{node_rank}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "mglightning.train", *SETTINGS, f"trainer.num_nodes={NODES}",
             "trainer.accelerator=cpu", f"output_root={output_root}"],
            cwd=REPO_ROOT, env={**os.environ, **cluster}, stdout=out, stderr=err,
        )


def final_state(cfg) -> dict[str, torch.Tensor]:
    return torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt",
                      weights_only=False)["state_dict"]


@pytest.mark.slow  # ~25 s of CPU, a minute on a busy machine
def test_two_machines_started_by_hand_give_one_process_results_bit_for_bit(tiny_config, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machines' thread count: float sums in the same order
    try:
        one = tiny_config(*SETTINGS, f"output_root={tmp_path / 'one'}")
        run(one)
    finally:
        torch.set_num_threads(threads)
    port = free_port()
    machines = [start_machine(rank, port, tmp_path / "two") for rank in range(NODES)]
    try:
        codes = [machine.wait(timeout=300) for machine in machines]
    finally:
        for machine in machines:
            machine.kill()  # a no-op once it has ended
    stdout, stderr = ([(tmp_path / "two" / f"node{rank}.{kind}").read_text()
                       for rank in range(NODES)] for kind in ("out", "err"))
    for rank, code in enumerate(codes):
        assert code == 0, f"node {rank}:\n{stderr[rank][-3000:]}"
        assert "Traceback" not in stderr[rank]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in stderr[1]  # node 1 joined as the second rank
    assert [text.count("target accuracy") for text in stdout] == [1 + 2, 0]  # rank 0 alone
    two = tiny_config(*SETTINGS, f"output_root={tmp_path / 'two'}")
    for key in ("x", "x_ag", "rounds_done"):
        assert torch.equal(final_state(two)[key], final_state(one)[key]), key
    tasks = [(Path(cfg.output_dir) / "tasks.csv").read_text().splitlines() for cfg in (one, two)]
    columns = tasks[0][0].split(",")
    kept = [i for i, name in enumerate(columns) if name != "learning_seconds"]
    assert [[row.split(",")[i] for i in kept] for row in tasks[0]] == \
        [[row.split(",")[i] for i in kept] for row in tasks[1]]
