"""The ServerApp: our config's rounds on the connected Flower nodes, resumable.

It builds the same learner as ``mglightning.train`` (same seed: same x_0), restores its saved
state if there is one (``<output_dir>/flower/server_state.ckpt``, written every
``checkpoint.every_n_rounds`` rounds and after the last), finds which Flower node holds which
training node, and runs the remaining rounds with :class:`FederatedRoundStrategy`. Its final
x_ag, in that file, is the meta-model; ``flower/rounds.csv`` beside it times the rounds.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mglightning.build import build_datamodule, build_learner
from mglightning.federated.training_node import node_config
from mglightning.flower.protocol import node_config_record
from mglightning.flower.run_config import compose_config, run_overrides
from mglightning.flower.strategy import (
    FederatedRoundStrategy,
    PromptGrid,
    ServerState,
    discover_nodes,
)
from mglightning.run.identity import data_fingerprint
from mglightning.run.io import write_csv

FLOWER_FOLDER = Path("flower")  # under the run's output_dir
STATE_FILE = FLOWER_FOLDER / "server_state.ckpt"
ROUNDS_FILE = FLOWER_FOLDER / "rounds.csv"  # one row per round run by this server process
REPLY_TIMEOUT_SECONDS = 600.0  # per round, and for all nodes to connect


def server_state(cfg) -> ServerState:
    return ServerState(Path(cfg.output_dir) / STATE_FILE, cfg.checkpoint.every_n_rounds)


def make_server_app(overrides: str | None = None) -> ServerApp:
    """A ServerApp for the config ``overrides`` (None: the run config's ``overrides``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        grid = PromptGrid(grid)
        cfg = compose_config(run_overrides(overrides, context.run_config))
        datamodule = build_datamodule(cfg)  # the number of training nodes and the input shape
        learner = build_learner(cfg, datamodule)
        state = server_state(cfg)
        state.restore(learner)
        node_ids = discover_nodes(grid, len(datamodule.train_clients), REPLY_TIMEOUT_SECONDS)
        strategy = FederatedRoundStrategy(learner, node_ids, cfg.rounds, state)
        result = strategy.start(grid, strategy.state_arrays(),
                                num_rounds=cfg.rounds - int(learner.rounds_done),
                                timeout=REPLY_TIMEOUT_SECONDS,
                                train_config=node_config_record(node_config(
                                    cfg, data_fingerprint(datamodule.data.images,
                                                          datamodule.data.labels))))
        write_csv(Path(cfg.output_dir) / ROUNDS_FILE,
                  [dict(metrics) for metrics in result.train_metrics_clientapp.values()])

    return app


app = make_server_app()  # for flwr run: [tool.flwr.app.components] serverapp
