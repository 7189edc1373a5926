"""The analysis notebooks run green on the output of real tiny runs, and are stored clean."""

from __future__ import annotations

import itertools
import math
import re
import statistics
from pathlib import Path

import matplotlib
import nbformat
import pandas as pd
import pytest
from conftest import FINISHED_RUN, compose_config, copy_finished_run
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from omegaconf import OmegaConf

from mglightning.analysis import finished_runs, tables
from mglightning.run.io import write_csv, write_json
from mglightning.train import run

matplotlib.use("Agg")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TWO_METHODS = ("metagater", "metagater_nogate")


@pytest.fixture(scope="module")
def runs_root(finished_run, tmp_path_factory):
    """MetaGater with and without gates, 4 rounds each, evaluated at rounds 2 and 4: a copy of
    the shared finished run (per-round timings in csv/metrics.csv) and the run w/o gating."""
    root = tmp_path_factory.mktemp("runs")
    copy_finished_run(finished_run, root)
    run(compose_config([*FINISHED_RUN, "logger=none", "method=metagater_nogate"], root))
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


def selected_runs(root, filters=None):
    return finished_runs.select_runs(root, filters)


def test_the_runs_are_found_and_labelled(runs_root):
    runs = selected_runs(runs_root)
    summaries = tables.load_summaries(runs)
    assert sorted(summaries["group"]) == sorted(TWO_METHODS)  # one run each: nothing differs
    assert set(summaries["dataset"]) == {"synthetic"} and set(summaries["seed"]) == {0}
    tasks = tables.load_tasks(runs)
    ungated = tasks[tasks["group"] == "metagater_nogate"]
    assert (ungated["sparsity"] == 0).all() and ungated["sparsity_layer3"].isna().all()
    assert tables.sparse_groups(tasks) == ["metagater"]
    round_metrics = tables.load_round_metrics(runs)
    assert round_metrics["round"].tolist() == [1, 2, 3, 4]  # the CSV-logged run only
    assert (round_metrics["group"] == "metagater").all()
    assert (round_metrics["round_seconds"] >= round_metrics["local_seconds"]).all()


def execute(path: Path, runs_root: Path, monkeypatch, filters: dict | None = None):
    """The notebook run headless on ``runs_root``; ``filters`` replace its FILTERS as papermill
    would (a cell after the parameters). Returns the executed notebook."""
    monkeypatch.setenv(finished_runs.RUNS_DIR_VARIABLE, str(runs_root))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # PNGs
    notebook = nbformat.read(path, as_version=4)
    if filters is not None:
        at = parameters_cell(notebook) + 1
        notebook.cells.insert(at, nbformat.v4.new_code_cell(f"FILTERS = {filters!r}"))
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}}
    ).execute()
    return notebook


def parameters_cell(notebook) -> int:
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    (index,) = tagged
    return index


def html_outputs(notebook) -> list[str]:
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    return [output.data["text/html"] for output in outputs if "text/html" in output.get("data", {})]


@pytest.mark.integration  # a Jupyter kernel each
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes_on_finished_runs(path, runs_root, monkeypatch):
    notebook = execute(path, runs_root, monkeypatch)
    tables = html_outputs(notebook)
    assert tables, "the notebook shows no table"
    assert "metagater_nogate" in "".join(tables)
    gating_title = "after Stage I" if path.stem == "convergence" else "Jaccard between tasks"
    assert gating_title in "".join(tables), "the notebook shows no gating table"
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 2, "the notebook draws fewer than two figures"


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_on_an_empty_root_stops_in_its_first_cell_with_one_line(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(finished_runs.RUNS_DIR_VARIABLE, str(tmp_path))
        with pytest.raises(CellExecutionError):
            client.execute()
    failed = [i for i, cell in enumerate(notebook.cells) if cell.get("execution_count")]
    assert failed[-1] == parameters_cell(notebook) + 1  # the first cell after the parameters
    (error,) = [o for o in notebook.cells[failed[-1]].outputs if o.output_type == "error"]
    (line,) = error.traceback
    assert error.ename == "RunSelectionError" and f"no runs were found under {tmp_path}" in line
    assert "make train" in line and "make reproduce EXP=table1_fmnist" in line


def write_run(run_dir: Path, tasks: list[dict], curve: list[dict], config: dict | None = None):
    """A finished run folder as ``mglightning.train.run`` (and the reproduce command) leave it."""
    write_csv(run_dir / "tasks.csv", tasks)
    write_csv(run_dir / "curve.csv", curve)
    rounds, seconds = curve[-1]["round"], curve[-1]["training_seconds"]
    summary = {"rounds": rounds, "training_seconds": seconds, "rounds_per_second": rounds / seconds}
    summary |= {"accuracy_mean": curve[-1]["accuracy_mean"], "learning_seconds_mean": 0.01}
    write_json(run_dir / "summary.json", summary)
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


def beta_config(beta: float, seed: int, dataset: str = "fmnist") -> dict:
    return {
        "experiment": "default",
        "seed": seed,
        "dataset": {"name": dataset},
        "model": {"name": "cnn4"},
        "method": {"name": "metagater", "server": {"beta": beta}},
        "output_dir": f"outputs/default/{dataset}-metagater-beta{beta}-seed{seed}",  # not identity
    }


def accuracy_curve(accuracy: float) -> list[dict]:
    return [{"round": 2, "training_seconds": 1.0, "accuracy_mean": accuracy}]


@pytest.fixture
def beta_root(tmp_path):
    """metagater at β=2 and β=0.5 on Fashion-MNIST, seeds 0 and 1 each, target accuracy
    0.8/0.9 and 0.5/0.6; and one synthetic-data run of β=2."""
    accuracies = {(2.0, 0): 0.8, (2.0, 1): 0.9, (0.5, 0): 0.5, (0.5, 1): 0.6}
    for (beta, seed), accuracy in accuracies.items():
        run_dir = tmp_path / f"default/fmnist-beta{beta}-seed{seed}"
        write_run(run_dir, task_rows([0.2]), accuracy_curve(accuracy), beta_config(beta, seed))
    synthetic = tmp_path / "default/synthetic-beta2.0-seed0"
    write_run(synthetic, task_rows([0.4]), accuracy_curve(0.1), beta_config(2.0, 0, "synthetic"))
    return tmp_path


def group_rows(html: str) -> dict[str, str]:
    """A group table's rows as shown (HTML): group label → its seeds column."""
    return dict(re.findall(r"<tr>\s*<th>([^<]+)</th>\s*<td>(\d+)</td>", html))


def test_two_configs_of_one_method_are_two_groups_averaged_over_their_own_seeds(beta_root):
    runs = selected_runs(beta_root, {"dataset": "fmnist"})
    groups = finished_runs.group_table(runs)
    beta_low, beta_high = "metagater (method.server.beta=0.5)", "metagater (method.server.beta=2.0)"
    assert groups["seeds"].to_dict() == {beta_low: 2, beta_high: 2}
    assert groups.loc[beta_low, "seed"] == "0, 1"
    curves = tables.accuracy_curves(tables.load_curves(runs)).set_index("group")
    assert curves.loc[[beta_low, beta_high], "accuracy"].tolist() == pytest.approx([55, 85])
    assert tables.timing_table(tables.load_summaries(runs))["runs"].tolist() == [2, 2]


def test_runs_of_other_data_sets_are_other_groups_named_by_data_set(beta_root):
    labels = {labels["group"] for _, labels in selected_runs(beta_root)}
    assert labels == {
        "fmnist-metagater (method.server.beta=0.5)",
        "fmnist-metagater (method.server.beta=2.0)",
        "synthetic-metagater",  # its only run: nothing differs among its data set's runs
    }


def test_filters_take_labels_and_config_keys_and_name_an_unknown_key(beta_root):
    runs = selected_runs(beta_root, {"method.server.beta": 0.5})
    assert sorted(labels["run"] for _, labels in runs) == [
        "default/fmnist-beta0.5-seed0", "default/fmnist-beta0.5-seed1"
    ]
    assert {labels["group"] for _, labels in runs} == {"metagater"}  # nothing differs within
    assert len(selected_runs(beta_root, {"dataset": ["fmnist", "synthetic"], "seed": 0})) == 3
    with pytest.raises(finished_runs.RunSelectionError, match="'method.server.bta'"):
        selected_runs(beta_root, {"method.server.bta": 0.5})
    with pytest.raises(finished_runs.RunSelectionError, match="none of the 5 runs"):
        selected_runs(beta_root, {"dataset": "cifar10"})


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_shows_two_configs_apart_and_filters_out_other_data_sets(
    path, beta_root, monkeypatch
):
    notebook = execute(path, beta_root, monkeypatch, filters={"dataset": "fmnist"})
    tables = html_outputs(notebook)
    assert group_rows(tables[0]) == {  # the first table: which runs each group holds
        "metagater (method.server.beta=0.5)": "2",
        "metagater (method.server.beta=2.0)": "2",
    }
    shown = "".join(str(cell.get("outputs", "")) for cell in notebook.cells)
    assert "synthetic" not in shown


def test_a_run_without_config_is_grouped_by_folder_never_with_configured_runs(beta_root):
    legacy = beta_root / "default/fmnist-cnn4-metagater-seed1"
    write_run(legacy, task_rows([0.3]), accuracy_curve(0.7))
    groups = finished_runs.group_table(selected_runs(beta_root, {"method": "metagater"}))
    assert groups.loc["default/fmnist-cnn4-metagater (no config.yaml)", "seeds"] == 1
    assert groups["seeds"].sum() == 6


def test_keys_reproduce_derives_from_each_seed_do_not_split_a_group(tmp_path):
    """MetaSNIP's meta checkpoint and keep fraction come from its seed's runs (METHOD.md §5): one
    setup when the run's config says the reproduce command derived them, two otherwise."""
    spec = {"method": "metasnip", "local_steps": 1, "meta_from": "a", "sparsity_from": "b"}
    for seed, keep in ((0, 0.6), (1, 0.7)):
        config = reproduce_config("metasnip", 1, seed) | {"reproduce": {"runs": [spec]}}
        config["method"] |= {
            "meta_checkpoint": f"runs/metagater_nogate-m1-seed{seed}/checkpoints/last.ckpt",
            "adaptation": {"keep_fraction": keep},
        }
        curve = accuracy_curve(0.5)
        write_run(tmp_path / f"reproduced/metasnip-m1-seed{seed}", task_rows([0.4]), curve, config)
        del config["reproduce"]
        write_run(tmp_path / f"by_hand/metasnip-seed{seed}", task_rows([0.4]), curve, config)
    reproduced = finished_runs.group_table(selected_runs(tmp_path / "reproduced"))
    assert reproduced["seeds"].to_dict() == {"metasnip": 2}
    by_hand = finished_runs.group_table(selected_runs(tmp_path / "by_hand"))
    assert by_hand["seeds"].tolist() == [1, 1]


def test_a_width_reproduce_sets_at_another_runs_macs_does_not_split_a_group(tmp_path):
    """A dense partner at a gated run's MACs (METHOD.md §7.4) gets its seed's width: the
    seeds of its row stay one group."""
    spec = {"method": "metagater_nogate", "local_steps": 1, "macs_from": "metagater-m1"}
    for seed, width in ((0, 0.61), (1, 0.64)):
        config = reproduce_config("metagater_nogate", 1, seed) | {"reproduce": {"runs": [spec]}}
        config["model"] |= {"width": width}
        write_run(tmp_path / f"metagater_nogate-m1-seed{seed}", task_rows([0.0]),
                  accuracy_curve(0.5), config)
    assert finished_runs.group_table(selected_runs(tmp_path))["seeds"].to_dict() == {
        "metagater_nogate": 2}


def test_runs_are_found_in_both_layouts_and_labelled(tmp_path):
    curve = accuracy_curve(0.5)
    write_run(
        tmp_path / "outputs/default/fmnist-cnn4-metagater_nogate-seed3", task_rows([0]), curve
    )
    for steps in (1, 2):
        config = reproduce_config("metagater", steps, seed=0)
        runs = tmp_path / f"results/table1_fmnist/runs/metagater-m{steps}-seed0"
        write_run(runs, task_rows([0.5]), curve, config)
    outputs = tables.load_summaries(selected_runs(tmp_path / "outputs"))
    assert outputs[["experiment", "method", "dataset", "model", "seed"]].values.tolist() == [
        ["default", "metagater_nogate", "fmnist", "cnn4", 3]
    ]
    results = tables.load_summaries(selected_runs(tmp_path / "results"))
    assert sorted(results["group"]) == [  # Table 1's rows
        "metagater (method.local.steps=1)", "metagater (method.local.steps=2)"
    ]
    assert set(results["experiment"]) == {"table1_fmnist"}
    assert len(tables.load_tasks(selected_runs(tmp_path))) == 3  # both layouts under one root


def test_sparsity_diversity_is_mean_std_min_max_over_tasks_in_percent(tmp_path):
    curve = accuracy_curve(0.5)
    write_run(tmp_path / "a/synthetic-cnn4-gated-seed0", task_rows([0.1, 0.3]), curve)
    write_run(tmp_path / "a/synthetic-cnn4-gated-seed1", task_rows([0.2, 0.4]), curve)
    write_run(tmp_path / "a/synthetic-cnn4-plain-seed0", task_rows([0.0, 0.0]), curve)
    tasks = tables.load_tasks(selected_runs(tmp_path))
    table = tables.sparsity_diversity(tasks)
    gated, plain = (f"a/synthetic-cnn4-{name} (no config.yaml)" for name in ("gated", "plain"))
    # tasks of both seeds pooled: 10, 30, 20, 40 % -> mean 25, sample std sqrt(500 / 3)
    assert table.loc[gated, ["mean", "min", "max", "tasks"]].tolist() == [25, 10, 40, 4]
    assert table.loc[gated, "std"] == pytest.approx(math.sqrt(500 / 3))
    assert table.loc[plain, ["mean", "std", "max"]].tolist() == [0, 0, 0]
    assert tables.sparse_groups(tasks) == [gated]


def test_curves_average_over_seeds_and_round_seconds_divide_intervals(tmp_path):
    for seed, accuracy in ((0, 0.5), (1, 0.7)):
        curve = [
            {"round": 2, "training_seconds": 3.0, "accuracy_mean": accuracy},
            {"round": 4, "training_seconds": 7.0, "accuracy_mean": accuracy},
        ]
        config = reproduce_config("metagater", 1, seed)
        write_run(tmp_path / f"e/synthetic-cnn4-gated-seed{seed}", task_rows([0.1]), curve, config)
    curves = tables.load_curves(selected_runs(tmp_path))
    averaged = tables.accuracy_curves(curves)
    assert averaged["accuracy"].tolist() == pytest.approx([60, 60])
    assert averaged["accuracy_std"].tolist() == pytest.approx([statistics.stdev([50, 70])] * 2)
    assert averaged["seeds"].tolist() == [2, 2]
    assert tables.round_seconds(curves)["seconds_per_round"].tolist() == [1.5, 2.0] * 2
    one_seed = tables.accuracy_curves(curves[curves["seed"] == 0])
    assert one_seed["accuracy_std"].tolist() == [0.0, 0.0]  # no spread to show, and no NaN


def test_gating_tables_show_gated_groups_only_and_average_their_seeds(runs_root):
    runs = finished_runs.select_runs(runs_root, {})
    summaries = tables.load_summaries(runs)
    gated = summaries[summaries["method"] == "metagater"].iloc[0]
    accuracies = tables.adaptation_accuracies(summaries)
    assert list(accuracies.index) == [gated["group"]]  # the w/o-gating group has no Stage I
    assert accuracies.loc[gated["group"], "after Stage I"] == pytest.approx(
        100 * gated["accuracy_stage1_mean"])
    measures = tables.gating_measures(summaries)
    row = measures.loc[(gated["group"], 3)]
    assert row["Jaccard between tasks"] == pytest.approx(100 * gated["task_jaccard_layer3"])
    assert row["groups zeroed"] == gated["zeroed_groups_layer3"]  # a count, not a share
    shares = row[["always off", "always on", "input-dependent"]]
    assert shares.sum() == pytest.approx(100)
    # Two seeds of one group: their mean.
    both = tables.gating_measures(pd.concat([summaries, summaries.assign(seed=1)]))
    assert both.loc[(gated["group"], 3), "seeds"] == 2
    overall = tables.overall_gating_measures(summaries)
    assert list(overall.index) == [gated["group"]]
    row = overall.loc[gated["group"]]
    assert row[["always off", "always on", "input-dependent"]].sum() == pytest.approx(100)
    assert row["input-dependent"] == pytest.approx(100 * gated["input_dependent_mean"])
    assert row["tasks ÷ inputs"] == pytest.approx(gated["task_input_jaccard_ratio"])  # a ratio


def two_sparse_groups() -> pd.DataFrame:
    """Two gated groups whose per-task sparsities fall into the same bins, and a dense one."""
    rows = [{"group": group, "task": task, "sparsity": sparsity, "sparsity_layer3": sparsity,
             "accuracy": 0.9}
            for group, values in (("a", [0.40, 0.42, 0.50, 0.50]), ("b", [0.41, 0.50, 0.50, 0.6]))
            for task, sparsity in enumerate(values)]
    return pd.DataFrame(rows + [{"group": "dense", "task": 0, "sparsity": 0.0,
                                 "sparsity_layer3": None, "accuracy": 0.8}])


def test_histogram_groups_stand_side_by_side_opaque():
    """Bars of two groups in one bin share no x range and do not blend (no transparency)."""
    figure = tables.plot_sparsity_histograms(two_sparse_groups())
    bars = [bar for bar in figure.axes[0].patches if bar.get_height() > 0]
    assert len({bar.get_facecolor() for bar in bars}) == 2  # a and b; dense has no sparsity
    for first, second in itertools.combinations(bars, 2):
        assert (first.get_x() + first.get_width() <= second.get_x() + 1e-9
                or second.get_x() + second.get_width() <= first.get_x() + 1e-9)
    assert all(bar.get_alpha() in (None, 1) for bar in bars)


def test_every_figures_legend_stays_clear_of_its_axes_and_their_labels(runs_root):
    runs = selected_runs(runs_root)
    tasks, curves = tables.load_tasks(runs), tables.load_curves(runs)
    front = pd.DataFrame([{"method": method, "settings": "", "accuracy_mean": 0.9,
                           "accuracy_std": 0.01, "macs_skipped_mean": skipped,
                           "macs_skipped_std": 0.0}
                          for method, skipped in (("w/ gating", 0.5), ("w/o gating", 0.0))])
    figures = [tables.plot_sparsity_histograms(two_sparse_groups()),
               tables.plot_accuracy_vs_sparsity(tasks), tables.plot_accuracy_curves(curves),
               tables.plot_round_timings(curves), tables.plot_accuracy_vs_macs(front)]
    for figure in figures:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        (legend,) = figure.legends
        assert not any(axis.get_legend() for axis in figure.axes)
        legend_box = legend.get_window_extent(renderer)
        for axis in figure.axes:  # the axes with ticks, tick labels, axis labels and title
            assert not legend_box.overlaps(axis.get_tightbbox(renderer))
