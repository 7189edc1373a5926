"""The node worker against the in-process learner: the same node's solves, bit for bit, over
its socket (gate noise, an injected NaN, a config changed between messages); a failed solve is
the ClientApp's exception, and the worker goes on; only its user can reach the socket."""

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the flower extra (pip install -e '.[flower]') is not installed")

import torch  # noqa: E402
from conftest import TINY  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from mglightning.build import build_datamodule, build_learner  # noqa: E402
from mglightning.errors import ConfigError  # noqa: E402
from mglightning.federated.training_node import node_config  # noqa: E402
from mglightning.flower import wire  # noqa: E402
from mglightning.flower.client_app import make_client_app  # noqa: E402
from mglightning.flower.node_worker import listen, listening  # noqa: E402
from mglightning.flower.protocol import TrainTask, node_config_record, train_message  # noqa: E402
from mglightning.flower.run_config import compose_config  # noqa: E402
from mglightning.flower.shard import load_node_shard  # noqa: E402
from mglightning.run.identity import data_fingerprint  # noqa: E402

NODE = 0  # the training index the tests' node holds
REPO = Path(__file__).resolve().parents[2]
ENVIRONMENT = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
WORKER_START_SECONDS = 120


@pytest.fixture(scope="module")
def node_worker(tmp_path_factory) -> Path:
    """The socket of a node worker started as a SuperNode's owner starts it: a process of its
    own, serving a socket in a private folder (its log beside the folder)."""
    folder = tmp_path_factory.mktemp("node-worker")
    path, log = folder / "private" / "node.sock", folder / "worker.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mglightning.flower.node_worker", "--socket", str(path)],
            stdout=output, stderr=subprocess.STDOUT, env=ENVIRONMENT)
    try:
        deadline = time.monotonic() + WORKER_START_SECONDS
        while not (path.is_socket() and listening(path)):
            assert process.poll() is None, f"the node worker exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the node worker did not start listening"
            time.sleep(0.05)
        yield path
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``tiny(*overrides)``: (learner, the training node, the node config parts as JSON) of the
    tiny config with gate noise; the data set loaded once, the node's shard cut beforehand (as
    by its first message), so that the worker reads it."""
    root = tmp_path_factory.mktemp("tiny")
    base = [*TINY, "method=metagater", "method.gate_noise=logistic", f"output_root={root}",
            f"data_root={root / 'data'}"]
    datamodule = build_datamodule(compose_config(shlex.join(base)))
    data = data_fingerprint(datamodule.data.images, datamodule.data.labels)

    def build(*overrides):
        cfg = compose_config(shlex.join([*base, *overrides]))
        config = node_config(cfg, data)
        load_node_shard(config, NODE)
        return (build_learner(cfg, datamodule), datamodule.train_clients[NODE],
                json.dumps(config, sort_keys=True))

    return build


def in_process(learner, client, x_md: torch.Tensor, round_index: int, position: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (OMP_NUM_THREADS=1)
    try:
        return learner.solve_client(x_md, client, round_index, position)
    finally:
        torch.set_num_threads(threads)


def test_the_worker_solves_as_the_in_process_learner_and_rebuilds_for_another_config(
        tiny, node_worker):
    """Rounds with gate noise; then the node failing with NaN parameters (another config:
    the worker must not solve it with the node it holds); then the first config again."""
    learner, client, config = tiny()
    faulty, _, faulty_config = tiny(f"faults.inject.clients=[{client.node_id}]",
                                    "faults.inject.kind='nan'")
    for node_learner, node_config_json, round_index, position in [
            (learner, config, 1, 0), (learner, config, 2, 3), (faulty, faulty_config, 2, 3),
            (learner, config, 5, 1)]:
        x_md = learner.x + 0.01 * round_index  # any start point
        expected = in_process(node_learner, client, x_md, round_index, position)
        task = TrainTask(x_md.numpy(), round_index, position, NODE)
        result = wire.solve_on_worker(node_worker, node_config_json, NODE, task)
        assert result.params.tobytes() == expected.params.numpy().tobytes()
        assert (result.node_id, result.num_samples, result.loss) == (
            expected.node_id, expected.num_samples, float(expected.loss))
        assert np.isnan(result.params).all() == (node_learner is faulty)


# A ClientApp process as a SuperNode starts one for every message, its node config naming the
# worker: import the app, answer one train message; print the modules of the torch side loaded.
CLIENT_PROCESS = """
import json, sys
import numpy as np
import mglightning.flower.client_app as client_app
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from mglightning.flower.protocol import TrainTask, node_config_record, train_message
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
task = TrainTask(np.load(sys.argv[2]), round_index=2, position=1, training_index=0)
message = train_message(task, 7, node_config_record(json.loads(open(sys.argv[1]).read())))
context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                  node_config={"partition-id": 0, "worker-socket": sys.argv[3]})
reply = client_app.app(message, context)
np.save(sys.argv[4], reply.content["arrays"]["params"].numpy())
print(json.dumps([name for name in ("torch", "omegaconf", "lightning", "hydra")
                  if name in sys.modules]))
"""


def test_a_client_process_with_a_worker_imports_no_torch_and_replies_its_solve(
        tiny, node_worker, tmp_path):
    learner, client, config = tiny()
    x_md = learner.x + 0.01
    expected = in_process(learner, client, x_md, 2, 1)
    (tmp_path / "config.json").write_text(config)
    np.save(tmp_path / "x_md.npy", x_md.numpy())
    process = subprocess.run(
        [sys.executable, "-c", CLIENT_PROCESS, str(tmp_path / "config.json"),
         str(tmp_path / "x_md.npy"), str(node_worker), str(tmp_path / "params.npy")],
        capture_output=True, text=True, timeout=300, env=ENVIRONMENT, check=False)
    assert process.returncode == 0, process.stderr[-2000:]
    assert json.loads(process.stdout.strip().splitlines()[-1]) == []
    assert np.load(tmp_path / "params.npy").tobytes() == expected.params.numpy().tobytes()


def client_context(**node_config) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": NODE, **node_config},
                   state=RecordDict(), run_config={})


def test_a_failed_solve_is_the_client_apps_exception_and_the_worker_goes_on(tiny, node_worker):
    learner, client, _ = tiny()
    _, _, raising = tiny(f"faults.inject.clients=[{client.node_id}]")  # kind: raise
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    try:
        message = train_message(TrainTask(learner.x.numpy(), 1, 0, NODE), 7,
                                node_config_record(json.loads(raising)))
        app = make_client_app()
        with pytest.raises(wire.WorkerError, match="the node worker: InjectedFault: injected "
                                                   f"fault at node {client.node_id}, round 1"):
            app(message, client_context(**{"worker-socket": str(node_worker)}))
        missing = node_worker.parent / "none.sock"
        with pytest.raises(wire.WorkerError, match=f"worker-socket={missing}: no node worker"):
            app(message, client_context(**{"worker-socket": str(missing)}))
    finally:
        TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # not our protocol's
        sock.connect(str(node_worker))
        wire.send_frame(sock, {"version": wire.VERSION + 1})
        with pytest.raises(wire.WorkerError, match="protocol version"):
            wire.read_result(*wire.receive_frame(sock))
    _, _, config = tiny()
    task = TrainTask(learner.x.numpy(), 1, 0, NODE)
    assert np.isfinite(wire.solve_on_worker(node_worker, config, NODE, task).params).all()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_only_the_workers_user_reaches_its_socket(node_worker, tmp_path):
    assert (mode(node_worker), mode(node_worker.parent)) == (0o600, 0o700)
    path = tmp_path / "new" / "node.sock"
    with listen(path):
        assert (mode(path), mode(path.parent)) == (0o600, 0o700)
        with pytest.raises(ConfigError, match="another node worker serves it"):
            listen(path)
    with listen(path):  # the socket of a stopped worker is replaced
        assert path.is_socket()
    os.chmod(path.parent, 0o750)
    with pytest.raises(ConfigError, match=r"open to others.*chmod 700"):
        listen(path)
    os.chmod(path.parent, 0o700)
    path.unlink()
    path.write_text("")
    with pytest.raises(ConfigError, match="a file that is no socket"):
        listen(path)


def test_frames_carry_float_arrays_alone():
    left, right = socket.socketpair()
    with left, right:
        x_md = np.arange(5, dtype=np.float32)
        wire.send_task(left, "{}", 3, TrainTask(x_md, 2, 1, 3))
        config, task = wire.read_task(*wire.receive_frame(right))
        assert (config, task.round_index, task.position, task.training_index) == ("{}", 2, 1, 3)
        assert task.x_md.tobytes() == x_md.tobytes() and task.x_md.flags.writeable
        wire.send_frame(left, {"dtype": "|O", "shape": [1]}, b"\0" * 8)
        with pytest.raises(ValueError, match="float"):
            wire.read_array(*wire.receive_frame(right))
