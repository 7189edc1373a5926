"""A Flower node's worker: the node's solves in one process that outlives the messages.

    python -m mglightning.flower.node_worker --socket PATH

flwr 1.41's SuperNode starts a fresh ClientApp process for every message, and importing torch
is most of such a process's time beyond the engine's own. So each SuperNode gets a worker,
started beside it and living as long as it, which imports torch and the node builder once and
keeps the node (shard, network, local solver: :func:`.client_node.client_node`, rebuilt for
a message of another config) across the messages; the SuperNode's ``--node-config`` names its
socket (``worker-socket=PATH``), and the ClientApp, importing numpy and flwr alone, forwards
x_md there (:mod:`.wire`) and replies with the result. The same solve, on the same node, as
a ClientApp that solves itself, bit for bit.

The socket passes x_md and the node's results, and a connection makes the node solve: it is
created 0600 in a folder closed to others (0700, made so if new, refused otherwise), so only the
node's own user connects. One solve per connection, one at a time. A solve that raises, or a
request that is not the protocol's, is answered with the error, which the ClientApp raises:
Flower's error reply then counts the node as failed, as when the ClientApp solves itself; the
worker goes on serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path

from mglightning.errors import ConfigError, one_line
from mglightning.flower import wire
from mglightning.flower.client_node import client_node

log = logging.getLogger(__name__)

PRIVATE_FOLDER = 0o700
PRIVATE_SOCKET_UMASK = 0o177  # bind creates the socket 0600
TRANSFER_SECONDS = 60.0  # for a request or a reply to pass (not the solve): a stuck peer is dropped


def private_folder(folder: Path) -> None:
    """Make ``folder`` (0700) if new; refuse one that another user owns or may open."""
    folder.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
    status = folder.stat()
    if status.st_uid != os.getuid() or stat.S_IMODE(status.st_mode) & 0o077:
        raise ConfigError(
            f"--socket: its folder {folder} (mode {stat.S_IMODE(status.st_mode):o}, owner uid "
            f"{status.st_uid}) is open to others, who could make the node solve and read x_md; "
            f"give a folder of your own with mode 700 (chmod 700 {folder})")


def listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(str(path)) == 0


def listen(path: Path) -> socket.socket:
    """A Unix socket at ``path``, 0600 in a private folder, listening. A socket left by a
    stopped worker is replaced; one another worker serves, or a file that is no socket, is
    refused."""
    private_folder(path.parent)
    if path.exists() or path.is_symlink():
        if not path.is_socket() or path.is_symlink():
            raise ConfigError(f"--socket {path}: a file that is no socket is there; remove it "
                              "or choose another path")
        if listening(path):
            raise ConfigError(f"--socket {path}: another node worker serves it; stop it or "
                              "choose another path")
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(PRIVATE_SOCKET_UMASK)
    try:
        server.bind(str(path))
    except OSError as error:
        server.close()
        raise ConfigError(f"--socket {path}: cannot listen there ({one_line(error)}); a Unix "
                          "socket's path has at most 107 bytes") from error
    finally:
        os.umask(umask)
    server.listen()
    return server


def answer(connection: socket.socket) -> None:
    """One request: the node's solve of its task, or the error that stopped it."""
    header, payload = wire.receive_frame(connection)
    try:
        node_config, task = wire.read_task(header, payload)
        result = client_node(node_config, task.training_index).solve(task)
    except Exception as error:  # the node's failure, whatever it is: the ClientApp raises it
        log.warning("solve failed: %s: %s", type(error).__name__, one_line(error))
        wire.send_error(connection, f"{type(error).__name__}: {one_line(error)}")
        return
    wire.send_result(connection, result)


def serve(server: socket.socket) -> None:
    """Answer connections one at a time, for ever; a client that goes away (its SuperNode
    stopped) ends its connection only."""
    while True:
        connection, _ = server.accept()
        with connection:
            connection.settimeout(TRANSFER_SECONDS)
            try:
                answer(connection)
            except (OSError, ValueError) as error:  # a peer gone or stuck, or a frame not ours
                log.warning("connection dropped: %s", one_line(error))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mglightning.flower.node_worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True,
                        help="the Unix socket to serve, as the SuperNode's --node-config "
                             "worker-socket names it (its folder: yours, mode 700)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop through the finally below
    path = args.socket.absolute()
    try:
        server = listen(path)
    except ConfigError as error:
        sys.exit(f"node_worker: {error}")
    with server:
        log.info("serving %s", path)
        try:
            serve(server)
        finally:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
