"""The analysis notebooks run green on the output of real tiny runs, and are stored clean."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib
import nbformat
import pytest
from conftest import compose_config
from nbclient import NotebookClient
from omegaconf import OmegaConf

from mglightning import analysis
from mglightning.io import write_csv, write_json
from mglightning.train import run

matplotlib.use("Agg")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TWO_METHODS = {
    "metagater": ["logger=csv"],  # per-round timings in csv/metrics.csv
    "metagater_nogate": ["method=metagater_nogate"],
}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """MetaGater with and without gates, 4 rounds each, evaluated at rounds 2 and 4."""
    root = tmp_path_factory.mktemp("runs")
    for overrides in TWO_METHODS.values():
        run(compose_config(["rounds=4", "eval_every=2", *overrides], root))
    return root


def test_both_notebooks_exist():
    assert {path.stem for path in NOTEBOOKS} == {"sparsity_histograms", "convergence"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebooks_carry_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_the_runs_are_found_and_labelled(runs_root):
    summaries = analysis.load_summaries(runs_root)
    assert sorted(summaries["method"]) == sorted(TWO_METHODS)
    assert set(summaries["dataset"]) == {"synthetic"} and set(summaries["seed"]) == {0}
    tasks = analysis.load_tasks(runs_root)
    ungated = tasks[tasks["method"] == "metagater_nogate"]
    assert (ungated["sparsity"] == 0).all() and ungated["sparsity_layer3"].isna().all()
    assert analysis.sparse_methods(tasks) == ["metagater"]
    round_metrics = analysis.load_round_metrics(runs_root)
    assert round_metrics["round"].tolist() == [1, 2, 3, 4]  # the CSV-logged run only
    assert (round_metrics["method"] == "metagater").all()
    assert (round_metrics["round_seconds"] >= round_metrics["local_seconds"]).all()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes_on_finished_runs(path, runs_root, monkeypatch):
    monkeypatch.setenv(analysis.RUNS_DIR_VARIABLE, str(runs_root))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # PNGs
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}}
    ).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    tables = [output for output in outputs if "text/html" in output.get("data", {})]
    assert tables, "the notebook shows no table"
    assert "metagater_nogate" in "".join(output["data"]["text/html"] for output in tables)
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 2, "the notebook draws fewer than two figures"


def write_run(run_dir: Path, tasks: list[dict], curve: list[dict], config: dict | None = None):
    """A finished run folder as ``mglightning.train.run`` (and the reproduce command) leave it."""
    write_csv(run_dir / "tasks.csv", tasks)
    write_csv(run_dir / "curve.csv", curve)
    write_json(run_dir / "summary.json", {"rounds": curve[-1]["round"]})
    if config is not None:
        OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")


def task_rows(sparsities: list[float], accuracy: float = 0.5) -> list[dict]:
    return [
        {"task": i, "accuracy": accuracy, "sparsity": s, "sparsity_layer3": s}
        for i, s in enumerate(sparsities)
    ]


def reproduce_config(method: str, steps: int, seed: int) -> dict:
    return {
        "experiment": "table1_fmnist",
        "seed": seed,
        "dataset": {"name": "fmnist"},
        "model": {"name": "cnn4"},
        "method": {"name": method, "local": {"steps": steps}},
    }


def test_runs_are_found_in_both_layouts_and_labelled(tmp_path):
    curve = [{"round": 2, "training_seconds": 1.0, "accuracy_mean": 0.5}]
    write_run(
        tmp_path / "outputs/default/fmnist-cnn4-metagater_nogate-seed3", task_rows([0]), curve
    )
    for steps in (1, 2):
        config = reproduce_config("metagater", steps, seed=0)
        runs = tmp_path / f"results/table1_fmnist/runs/metagater-m{steps}-seed0"
        write_run(runs, task_rows([0.5]), curve, config)
    outputs = analysis.load_summaries(tmp_path / "outputs")
    assert outputs[["experiment", "method", "dataset", "model", "seed"]].values.tolist() == [
        ["default", "metagater_nogate", "fmnist", "cnn4", 3]
    ]
    results = analysis.load_summaries(tmp_path / "results")
    assert sorted(results["method"]) == ["metagater-m1", "metagater-m2"]  # Table 1's rows
    assert set(results["experiment"]) == {"table1_fmnist"}
    assert len(analysis.load_tasks(tmp_path)) == 3  # both layouts under one root


def test_sparsity_diversity_is_mean_std_min_max_over_tasks_in_percent(tmp_path):
    curve = [{"round": 2, "training_seconds": 1.0, "accuracy_mean": 0.5}]
    write_run(tmp_path / "a/synthetic-cnn4-gated-seed0", task_rows([0.1, 0.3]), curve)
    write_run(tmp_path / "a/synthetic-cnn4-gated-seed1", task_rows([0.2, 0.4]), curve)
    write_run(tmp_path / "a/synthetic-cnn4-plain-seed0", task_rows([0.0, 0.0]), curve)
    table = analysis.sparsity_diversity(analysis.load_tasks(tmp_path))
    # tasks of both seeds pooled: 10, 30, 20, 40 % -> mean 25, population std sqrt(125)
    assert table.loc["gated", ["mean", "min", "max", "tasks"]].tolist() == [25, 10, 40, 4]
    assert table.loc["gated", "std"] == pytest.approx(math.sqrt(125))
    assert table.loc["plain", ["mean", "std", "max"]].tolist() == [0, 0, 0]
    assert analysis.sparse_methods(analysis.load_tasks(tmp_path)) == ["gated"]


def test_curves_average_over_seeds_and_round_seconds_divide_intervals(tmp_path):
    for seed, accuracy in ((0, 0.5), (1, 0.7)):
        curve = [
            {"round": 2, "training_seconds": 3.0, "accuracy_mean": accuracy},
            {"round": 4, "training_seconds": 7.0, "accuracy_mean": accuracy},
        ]
        write_run(tmp_path / f"e/synthetic-cnn4-gated-seed{seed}", task_rows([0.1]), curve)
    curves = analysis.load_curves(tmp_path)
    averaged = analysis.accuracy_curves(curves)
    assert averaged["accuracy"].tolist() == pytest.approx([60, 60])
    assert averaged["accuracy_std"].tolist() == pytest.approx([statistics.stdev([50, 70])] * 2)
    assert analysis.round_seconds(curves)["seconds_per_round"].tolist() == [1.5, 2.0] * 2
