"""The socket protocol between a ClientApp and its node's worker (:mod:`.node_worker`).

One solve per connection: the ClientApp sends the task, the worker answers with the node's
result or with the error its solve raised. Each is one frame: two lengths (8 bytes each, big
endian), a JSON header and the raw bytes of one float array whose dtype and shape the header
gives. No pickle: nothing received is ever executed, and a header names a float dtype or is
refused. Torch-free, like :mod:`.protocol`: the ClientApp's process imports numpy and flwr
alone.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import numpy as np

from mglightning.flower.protocol import NodeResult, TrainTask

VERSION = 1  # both sides' frames; a worker refuses another (a node whose package is older)
LENGTHS = struct.Struct("!QQ")  # header bytes, payload bytes
MAX_HEADER_BYTES = 1 << 24  # a node config is a few kB
CHUNK_BYTES = 1 << 20


class WorkerError(RuntimeError):
    """A solve that the node's worker could not do, or a worker that cannot be reached; the
    ClientApp raises it, and Flower's error reply counts the node as failed."""


def send_frame(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    encoded = json.dumps(header).encode()
    sock.sendall(LENGTHS.pack(len(encoded), len(payload)) + encoded + payload)


def receive_frame(sock: socket.socket) -> tuple[dict, bytearray]:
    """The next frame's header and payload; ConnectionError if the peer closed early."""
    header_bytes, payload_bytes = LENGTHS.unpack(receive_exactly(sock, LENGTHS.size))
    if header_bytes > MAX_HEADER_BYTES:
        raise ValueError(f"a frame header of {header_bytes} bytes: not the node worker's "
                         f"protocol (at most {MAX_HEADER_BYTES})")
    header = json.loads(receive_exactly(sock, header_bytes))
    return header, receive_exactly(sock, payload_bytes)


def receive_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray()  # grows with what arrives, however large a size the peer claims
    while len(buffer) < size:
        chunk = sock.recv(min(size - len(buffer), CHUNK_BYTES))
        if not chunk:
            raise ConnectionError(f"the peer closed the connection after {len(buffer)} of "
                                  f"{size} bytes")
        buffer += chunk
    return buffer


def array_fields(array: np.ndarray) -> dict:
    return {"dtype": array.dtype.str, "shape": list(array.shape)}


def read_array(header: dict, payload: bytearray) -> np.ndarray:
    """The float array of ``payload`` (writable: it owns its bytes) as ``header`` describes
    it; ValueError if it does not match."""
    dtype = np.dtype(header["dtype"])
    if dtype.kind != "f":
        raise ValueError(f"dtype {dtype}: the node worker's arrays are float")
    return np.frombuffer(payload, dtype=dtype).reshape(header["shape"])


def send_task(sock: socket.socket, node_config: str, training_index: int,
              task: TrainTask) -> None:
    """``task`` for the node of ``training_index`` (the ClientApp's ``partition-id``) built
    from ``node_config`` (the train message's JSON)."""
    header = {"version": VERSION, "node-config": node_config, "training-index": training_index,
              "round": task.round_index, "position": task.position, **array_fields(task.x_md)}
    send_frame(sock, header, task.x_md.tobytes())


def read_task(header: dict, payload: bytearray) -> tuple[str, TrainTask]:
    """(node config JSON, the task for the node of its training index) of a task frame."""
    if header.get("version") != VERSION:
        raise ValueError(f"protocol version {header.get('version')}, this worker speaks "
                         f"{VERSION}: run the worker and the ClientApp from the same release")
    task = TrainTask(read_array(header, payload), int(header["round"]),
                     int(header["position"]), int(header["training-index"]))
    return str(header["node-config"]), task


def send_result(sock: socket.socket, result: NodeResult) -> None:
    header = {"node-id": result.node_id, "num-samples": result.num_samples,
              "loss": result.loss, **array_fields(result.params)}
    send_frame(sock, header, result.params.tobytes())


def send_error(sock: socket.socket, message: str) -> None:
    send_frame(sock, {"error": message})


def read_result(header: dict, payload: bytearray) -> NodeResult:
    """The result of a reply frame; :class:`WorkerError` if the worker's solve failed."""
    if "error" in header:
        raise WorkerError(f"the node worker: {header['error']}")
    return NodeResult(int(header["node-id"]), read_array(header, payload),
                      int(header["num-samples"]), float(header["loss"]))


def solve_on_worker(path: str | Path, node_config: str, training_index: int,
                    task: TrainTask) -> NodeResult:
    """``task`` solved by the node's worker listening at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError as error:
            raise WorkerError(
                f"node config worker-socket={path}: no node worker answers there "
                f"({error.strerror}); start `python -m mglightning.flower.node_worker --socket "
                f"{path}` beside the SuperNode, or drop worker-socket") from error
        send_task(sock, node_config, training_index, task)
        return read_result(*receive_frame(sock))
