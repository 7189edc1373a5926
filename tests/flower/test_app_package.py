"""The Flower app's package (FAB, pyproject.toml's [tool.flwr.app]) holds what the ServerApp
and the ClientApp import: from its files alone, in a fresh process, both apps import, the
ServerApp composes its run config and builds its learner, and a node is built and solves."""

import json
import os
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the flower extra (pip install -e '.[flower]') is not installed")

from flwr.cli.build import build_fab_from_files  # noqa: E402
from flwr.common.config import get_fab_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# From the unpacked FAB: what a ServerApp and a ClientApp process do, short of Flower's messages;
# prints the files of every module of ours that was loaded, and the config folder used.
APP_PROCESS = """
import json, shlex, sys
import mglightning.flower.client_app, mglightning.flower.node_worker
from mglightning.build import build_datamodule, build_learner
from mglightning.config import CONF_DIR
from mglightning.federated.training_node import node_config
from mglightning.flower.client_node import ClientNode
from mglightning.flower.protocol import TrainTask
from mglightning.flower.run_config import compose_config
from mglightning.flower.server_app import app
from mglightning.run.identity import data_fingerprint
cfg = compose_config(sys.argv[1] + " " + shlex.join(sys.argv[2:]))
datamodule = build_datamodule(cfg)
learner = build_learner(cfg, datamodule)
config = node_config(cfg, data_fingerprint(datamodule.data.images, datamodule.data.labels))
ClientNode.build(config, 0).solve(TrainTask(learner.x.numpy(), 1, 0, 0))
files = [module.__file__ for name, module in sys.modules.items()
         if name.split(".")[0] == "mglightning" and getattr(module, "__file__", None)]
print(json.dumps({"files": files, "conf": str(CONF_DIR)}))
"""


def fab_files() -> dict[str, Path]:
    """The files a FAB is built from: pyproject.toml's include and exclude patterns choose
    among them, as ``flwr run .`` does."""
    files = {path.relative_to(REPO).as_posix(): path for folder in ("mglightning", "conf")
             for path in (REPO / folder).rglob("*") if path.is_file()}
    return files | {"pyproject.toml": REPO / "pyproject.toml"}


def test_both_apps_run_from_the_fab_alone(tmp_path):
    fab, _ = build_fab_from_files(fab_files())
    app_dir = tmp_path / "app"
    zipfile.ZipFile(BytesIO(fab)).extractall(app_dir)
    assert not (app_dir / "mglightning" / "train.py").exists()  # the exclusions took effect
    overrides = get_fab_config(fab)["tool"]["flwr"]["app"]["config"]["overrides"]
    environment = {**os.environ, "PYTHONPATH": str(app_dir), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-c", APP_PROCESS, overrides, f"output_root={tmp_path / 'outputs'}",
         f"data_root={tmp_path / 'data'}"],
        capture_output=True, text=True, timeout=300, env=environment, cwd=app_dir, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    loaded = json.loads(process.stdout.strip().splitlines()[-1])
    outside = [file for file in loaded["files"] if not Path(file).is_relative_to(app_dir)]
    assert outside == [], "modules the apps load that the FAB leaves out"
    assert Path(loaded["conf"]).is_relative_to(app_dir)
