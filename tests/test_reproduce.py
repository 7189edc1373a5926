"""`make reproduce`: runs shared between tables, reuse, stale runs redone, and the tables."""

import csv
import json
import statistics
from pathlib import Path

import pytest
from conftest import TINY
from omegaconf import OmegaConf

from mglightning.analysis.report import MethodRuns, markdown_table, table_rows
from mglightning.reproduce import Reproduction, main, run_specs


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def fake_run(run_dir, accuracy, sparsity, training, learning):
    run_dir.mkdir(parents=True)
    summary = {
        "accuracy_mean": accuracy,
        "sparsity_mean": sparsity,
        "flops_skipped_mean": sparsity / 2,
        "training_seconds": training,
        "learning_seconds_mean": learning,
        "sparsity_std": sparsity / 10,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_table_is_mean_and_sample_std_over_seeds(tmp_path):
    values = [(0.80, 0.30, 10.0, 0.002), (0.90, 0.50, 14.0, 0.004), (0.85, 0.10, 12.0, 0.003)]
    for seed, value in enumerate(values):
        fake_run(tmp_path / f"s{seed}", *value)
    row = MethodRuns("metagater", 2, tuple(tmp_path / f"s{seed}" for seed in range(3)))
    (entry,) = table_rows([row])
    accuracies = [0.80, 0.90, 0.85]
    assert entry["accuracy_mean"] == pytest.approx(0.85)
    assert entry["accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    assert entry["training_seconds_mean"] == pytest.approx(12.0)
    assert entry["sparsity_std"] == pytest.approx(0.2)
    assert entry["task_sparsity_spread_mean"] == pytest.approx(0.03)
    assert entry["seeds"] == 3 and entry["local_steps"] == 2
    line = markdown_table([entry]).splitlines()[2]
    assert line.startswith(
        "| MetaGater w/ gating | 2 | 3 | 85.00 ± 5.00 | 30.00 ± 20.00 | 15.00 ± 10.00 |"
    )


def test_reproduce_table2_tiny(tmp_path, capsys):
    """Table 2's four runs on the tiny config: MetaSNIP and its structured twin reuse the
    w/o-gating meta-model and MetaGater's sparsity; a second call reuses the runs."""
    overrides = [*TINY, "rounds=2", "eval_every=2"]
    main(["table2_fmnist", *overrides, "--seeds", "0", "--results-root", str(tmp_path)])
    runs = tmp_path / "fmnist" / "runs"  # the runs group shared with table1_fmnist
    summary = {
        label: json.loads((runs / f"{label}-seed0" / "summary.json").read_text())
        for label in ("metagater_nogate-m1", "metagater-m1", "metasnip-m1",
                      "metasnip_structured-m1")
    }
    snip, gater, nogate = (
        summary["metasnip-m1"],
        summary["metagater-m1"],
        summary["metagater_nogate-m1"],
    )
    assert snip["training_seconds"] == nogate["training_seconds"]
    assert snip["sparsity_mean"] == pytest.approx(gater["sparsity_mean"], abs=1e-3)
    structured = summary["metasnip_structured-m1"]  # whole channels: within one of conv3's
    assert structured["sparsity_mean"] == pytest.approx(gater["sparsity_mean"], abs=0.5 / 128)
    assert structured["accuracy_meta_mean"] == nogate["accuracy_meta_mean"]
    assert structured["flops_skipped_mean"] > 0  # real MACs skipped, unlike MetaSNIP's
    table = read_csv(tmp_path / "table2_fmnist" / "table.csv")
    assert [row["method"] for row in table] == ["metagater_nogate", "metagater", "metasnip",
                                                "metasnip_structured"]
    assert float(table[2]["accuracy_mean"]) == pytest.approx(snip["accuracy_mean"])
    for name in ("table.md", "convergence.png", "sparsity_histogram.png", "curve.csv",
                 "accuracy_vs_macs.png"):
        assert (tmp_path / "table2_fmnist" / name).stat().st_size > 0
    curve_methods = {row["method"] for row in read_csv(tmp_path / "table2_fmnist" / "curve.csv")}
    assert curve_methods == {"metagater_nogate", "metagater"}  # MetaSNIP trains nothing

    stamp = (runs / "metagater-m1-seed0" / "summary.json").stat().st_mtime_ns
    reproduction = Reproduction("table2_fmnist", overrides, tmp_path)
    assert reproduction.ensure_run(reproduction.specs[1], 0) == "reused"
    assert (runs / "metagater-m1-seed0" / "summary.json").stat().st_mtime_ns == stamp


def test_a_run_made_with_another_config_is_redone(tmp_path, monkeypatch):
    """The folder's config.yaml tells a stale run folder from a reusable one (no training)."""
    calls = []

    def fake_train(cfg):
        calls.append(cfg.output_dir)
        (Path(cfg.output_dir) / "summary.json").write_text("{}")

    monkeypatch.setattr("mglightning.reproduce.run", fake_train)
    overrides = [*TINY, "rounds=2"]
    first = Reproduction("table2_fmnist", overrides, tmp_path)
    assert first.ensure_run(first.specs[0], 0) == "ran"
    assert first.ensure_run(first.specs[0], 0) == "reused"
    changed = Reproduction("table2_fmnist", [*overrides, "method.local.lr=0.01"], tmp_path)
    assert changed.ensure_run(changed.specs[0], 0) == "redone (stale)"
    assert len(calls) == 2 and calls[0] == calls[1]


def test_a_named_row_sets_its_overrides_in_a_folder_of_its_own(tmp_path):
    reproduction = Reproduction("front_fmnist", TINY, tmp_path)
    spec = next(s for s in reproduction.specs if s.name == "gamma0.005-annealed")
    cfg = reproduction.run_config(spec, 1)
    assert (cfg.method.name, cfg.method.regularizer.gamma, cfg.method.gate_noise) == (
        "metagater", 0.005, "annealed")
    runs = tmp_path / "fmnist" / "runs"
    assert cfg.output_dir == str(runs / "metagater-m1-gamma0.005-annealed-seed1")
    snip = next(s for s in reproduction.specs if s.label == "metasnip_structured-m1-keep0.25")
    assert snip.meta_from == "metagater_nogate-m1"
    row = MethodRuns(spec.method, 1, (), spec.name, spec.overrides)
    assert row.title == "MetaGater w/ gating (regularizer.gamma=0.005, gate_noise=annealed)"


@pytest.mark.parametrize(
    ("runs", "refusal"),
    [
        ([{"method": "metagater", "local_steps": 1, "overrides": ["seed=3"]}], "give it a name"),
        ([{"method": "fedavg", "local_steps": 1}] * 2, "listed twice"),
    ],
)
def test_rows_without_a_label_of_their_own_are_refused(runs, refusal):
    with pytest.raises(SystemExit, match=refusal):
        run_specs(OmegaConf.create({"experiment": "x", "reproduce": {"runs": runs}}))
