"""The ClientApp in a fresh process, as a SuperNode starts one for every message, solving
itself (a node without a worker): it imports no Lightning, Hydra, W&B or entry point (each
costs seconds a message), not even while it solves, and its reply equals the in-process
learner's solve of that node bit for bit. With a worker it imports no torch either
(test_node_worker.py)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the flower extra (pip install -e '.[flower]') is not installed")

import torch  # noqa: E402
from conftest import TINY  # noqa: E402

from mglightning.build import build_datamodule, build_learner  # noqa: E402
from mglightning.errors import ConfigError  # noqa: E402
from mglightning.federated.training_node import node_config  # noqa: E402
from mglightning.flower.run_config import compose_config  # noqa: E402
from mglightning.flower.shard import load_node_shard  # noqa: E402
from mglightning.run.identity import DATA_KEY, data_fingerprint  # noqa: E402

HEAVY_MODULES = ["lightning", "pytorch_lightning", "hydra", "wandb", "mglightning.train"]
REPO = Path(__file__).resolve().parents[2]

# A ClientApp process: import the app, then answer one train message (the shard is on disk
# already, as from a node's second message on); print the heavy modules loaded after each step.
CLIENT_PROCESS = """
import json, sys
import torch
torch.set_num_threads(1)
import mglightning.flower.client_app as client_app
heavy = json.loads(sys.argv[1])
loaded = lambda: [name for name in heavy if name in sys.modules]
after_import = loaded()
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from mglightning.flower.protocol import TrainTask, node_config_record, train_message
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
config = json.loads(open(sys.argv[2]).read())
task = TrainTask(torch.load(sys.argv[3]).numpy(), round_index=2, position=1, training_index=0)
message = train_message(task, 7, node_config_record(config))
context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config={})
reply = client_app.app(message, context)
torch.save(reply.content["arrays"].to_torch_state_dict()["params"], sys.argv[4])
print(json.dumps({"after_import": after_import, "after_solve": loaded()}))
"""


def test_a_fresh_client_process_imports_no_heavy_module_and_solves_as_in_process(tmp_path):
    text = shlex.join([*TINY, "method=metagater", "method.gate_noise=logistic",
                       f"output_root={tmp_path}", f"data_root={tmp_path / 'data'}"])
    cfg = compose_config(text)
    datamodule = build_datamodule(cfg)
    config = node_config(cfg, data_fingerprint(datamodule.data.images, datamodule.data.labels))
    load_node_shard(config, 0)  # the node's first message cut its shard
    learner = build_learner(cfg, datamodule)
    x_md = learner.x + 0.01  # any start point
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the client process
    try:
        expected = learner.solve_client(x_md, datamodule.train_clients[0], 2, 1).params
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(x_md, tmp_path / "x_md.pt")
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-c", CLIENT_PROCESS, json.dumps(HEAVY_MODULES),
         str(tmp_path / "config.json"), str(tmp_path / "x_md.pt"), str(tmp_path / "params.pt")],
        capture_output=True, text=True, timeout=300, env=environment, check=False)
    assert process.returncode == 0, process.stderr[-2000:]
    loaded = json.loads(process.stdout.strip().splitlines()[-1])
    assert loaded == {"after_import": [], "after_solve": []}
    assert torch.equal(torch.load(tmp_path / "params.pt"), expected)


def test_changed_data_are_never_served_from_a_stale_shard(tmp_path):
    """A node's shard is filed under the data's fingerprint: the same config on changed data
    (an .npz rewritten) cuts a new shard from them rather than serving the old one; a node
    whose own data differ from the ServerApp's refuses to cut one."""
    path = tmp_path / "data.npz"
    text = shlex.join(["dataset=arrays", f"dataset.source.path={path}", "logger=none",
                       "method.clients_per_round=4", f"output_root={tmp_path}",
                       f"data_root={tmp_path / 'data'}"])

    def write_and_load(seed: int) -> tuple[dict, torch.Tensor]:
        rng = np.random.default_rng(seed)
        np.savez(path, images=rng.integers(0, 256, (600, 8, 8), np.uint8),
                 labels=np.arange(600) % 5)  # the same labels: the same nodes
        cfg = compose_config(text)
        datamodule = build_datamodule(cfg)
        config = node_config(cfg, data_fingerprint(datamodule.data.images,
                                                   datamodule.data.labels))
        return config, datamodule.train_clients[0].support_set()[0]

    old, old_images = write_and_load(0)
    assert load_node_shard(old, 0).client.support_set()[0].equal(old_images)
    new, new_images = write_and_load(1)
    assert new["dataset"] == old["dataset"] and not new_images.equal(old_images)
    assert load_node_shard(new, 0).client.support_set()[0].equal(new_images)
    with pytest.raises(ConfigError, match="this node's data .* differ from the ServerApp's"):
        load_node_shard(new | {DATA_KEY: "0123abcd"}, 0)
