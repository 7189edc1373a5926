"""A wheel installed as a user would, outside the source tree, carries its configs:
built here, installed with ``pip --no-deps`` into a fresh venv that borrows this interpreter's
dependencies (no torch download), and run from another folder."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from mglightning.config import SOURCE_CONF_DIR
from mglightning.reproduce import compose_run, run_specs

REPO_ROOT = SOURCE_CONF_DIR.parent
setuptools = pytest.importorskip("setuptools", reason="building the wheel needs setuptools>=77")
TWO_ROUNDS = [*TINY, "rounds=2", "eval_every=1"]
SOURCE_FILES = ("pyproject.toml", "setup.py", "README.md", "mglightning", "conf")  # a build's input


def run(command: list, cwd: Path) -> str:
    """``command``'s stdout; its output in the failure message when it fails."""
    done = subprocess.run([str(item) for item in command], cwd=cwd, capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory) -> Path:
    """A venv's interpreter with the wheel installed and this interpreter's packages
    (torch, Lightning, Hydra, ...) on its path through a ``.pth`` file."""
    folder = tmp_path_factory.mktemp("install")
    source = folder / "source"  # a copy: no build/ in the checkout, no stale files in the wheel
    source.mkdir()
    for name in SOURCE_FILES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO_ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", folder / "dist", source], cwd=folder)
    run([sys.executable, "-m", "venv", "--without-pip", folder / "venv"], cwd=folder)
    python = folder / "venv" / "bin" / "python"
    venv_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         cwd=folder).strip())
    (venv_site / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next((folder / "dist").glob("mglightning-*.whl"))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel],
        cwd=folder)
    return python


@pytest.mark.integration  # builds the wheel, makes a venv
def test_the_installed_wheel_trains_two_rounds_from_another_folder(installed_python, tmp_path):
    where = run([installed_python, "-c", "import mglightning.config as c; print(c.CONF_DIR)"],
                cwd=tmp_path).strip()
    assert Path(where).parts[-2:] == ("mglightning", "conf")  # inside the installed package
    assert "site-packages" in where and not Path(where).is_relative_to(REPO_ROOT)
    run([installed_python, "-m", "mglightning.train", *TWO_ROUNDS, "output_root=runs"],
        cwd=tmp_path)
    (summary,) = tmp_path.glob("runs/**/summary.json")
    assert json.loads(summary.read_text())["rounds"] == 2


@pytest.mark.integration  # builds the wheel, makes a venv
def test_the_installed_entry_points_find_their_configs(installed_python, tmp_path):
    sweeps = run([installed_python, "-c",
                  "from mglightning.sweep import SWEEP_DIR; print(*SWEEP_DIR.glob('*.yaml'))"],
                 cwd=tmp_path).split()
    assert {Path(path).name for path in sweeps} == {
        path.name for path in (SOURCE_CONF_DIR / "sweep").glob("*.yaml")}
    labels = run([installed_python, "-c",
                  "from mglightning.reproduce import compose_run, run_specs; "
                  "print(*(spec.label for spec in run_specs(compose_run('table2_fmnist', []))))"],
                 cwd=tmp_path).split()
    assert labels == [spec.label for spec in run_specs(compose_run("table2_fmnist", []))]


# Flower hidden from the import system, as in an install without the `flower` extra.
WITHOUT_FLOWER = """
import runpy, sys
class HideFlower:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "flwr":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, HideFlower())
sys.argv = ["simulate", "dataset=synthetic"]
runpy.run_module("mglightning.flower.simulate", run_name="__main__")
"""


def test_flower_simulate_without_flower_says_in_one_line_to_install_the_extra(tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_FLOWER], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Flower is not installed: pip install 'mglightning[flower]'"]
