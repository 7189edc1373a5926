"""`make reproduce`: runs shared between tables, reuse, stale runs redone, and the tables."""

import csv
import json
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf

from mglightning.adaptation.snip import keep_fraction_for_macs, kept_channels, pruned_macs
from mglightning.analysis.report import (
    MethodRuns,
    markdown_table,
    paired_differences,
    pairs_table,
    table_rows,
    write_results,
)
from mglightning.build import build_network, compose_config
from mglightning.models.cost import dense_macs
from mglightning.reproduce import Reproduction, at_macs, main, run_specs
from mglightning.run.folder import RunFolder
from mglightning.targets import bind


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def fake_run(run_dir, accuracy, sparsity, training, learning, seed=None, curve=None):
    """A finished run's files: summary.json (of a network of 1M MACs), config.yaml
    with ``seed``, curve.csv with the target accuracy of each round of ``curve``."""
    run_dir.mkdir(parents=True)
    if seed is not None:  # what fixes the split and targets, as the run's config.yaml holds it
        config = {"seed": seed, "dataset": {"name": "fmnist", "partition": {"num_nodes": 120}}}
        OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    summary = {
        "accuracy_mean": accuracy,
        "sparsity_mean": sparsity,
        "flops_skipped_mean": sparsity / 2,
        "executed_macs_mean": 1e6 * (1 - sparsity / 2),
        "training_seconds": training,
        "learning_seconds_mean": learning,
        "sparsity_std": sparsity / 10,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if curve is not None:
        lines = ["round,accuracy_mean", *(f"{r},{a}" for r, a in curve.items())]
        (run_dir / "curve.csv").write_text("\n".join(lines) + "\n")


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
        "| MetaGater w/ gating | 2 | 3 | 85.00 ± 5.00 | 30.00 ± 20.00 | 15.00 ± 10.00 | "
        "850.0 ± 100.0 |"  # executed MACs (k): 1000 · (1 − sparsity / 2)
    )


def test_the_last_evaluations_are_averaged_per_seed_then_over_seeds(tmp_path):
    """Per seed the mean accuracy of the last k rounds of curve.csv (in round order, whatever
    the file's), then mean ± std over seeds; a run with fewer evaluations averages them all,
    a row without a curve has none; paired differences stay on the final accuracy."""
    curves = [{20: 0.5, 5: 0.9, 10: 0.7, 15: 0.6},  # last 3 by round: 0.7, 0.6, 0.5
              {5: 0.4, 10: 0.8}]  # fewer than 3: both
    for seed, curve in enumerate(curves):
        fake_run(tmp_path / f"s{seed}", 0.5, 0.2, 1.0, 0.001, seed=seed, curve=curve)
        fake_run(tmp_path / f"snip{seed}", 0.4, 0.2, 1.0, 0.001, seed=seed)
    gated = MethodRuns("metagater", 1, (tmp_path / "s0", tmp_path / "s1"))
    snip = MethodRuns("metasnip", 1, (tmp_path / "snip0", tmp_path / "snip1"))
    assert gated.last_accuracies(3) == pytest.approx([0.6, 0.6])
    assert gated.last_accuracies(1) == pytest.approx([0.5, 0.8])
    entry, snip_entry = table_rows([gated, snip], ("metasnip",), last_evaluations=3)
    assert entry["accuracy_last_mean"] == pytest.approx(0.6)
    assert entry["accuracy_last_std"] == pytest.approx(0.0)
    assert snip_entry["accuracy_last_mean"] is None
    assert entry["vs_metasnip_mean"] == pytest.approx(0.1)  # final accuracies: 0.5 − 0.4
    lines = markdown_table([entry, snip_entry], last_evaluations=3).splitlines()
    assert "| target accuracy (%) | mean of the last 3 evaluations (%) |" in lines[0]
    assert "| 50.00 ± 0.00 | 60.00 ± 0.00 |" in lines[2]
    assert "| 40.00 ± 0.00 | — |" in lines[3]
    assert "mean of the last" not in markdown_table([entry])


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
    paired = float(table[1]["vs_metasnip_mean"])  # MetaGater's row against MetaSNIP's, one seed
    assert paired == pytest.approx(gater["accuracy_mean"] - snip["accuracy_mean"])
    assert table[1]["vs_metasnip_verdict"] == "not shown"  # one seed shows nothing
    assert table[2]["vs_metasnip_mean"] == ""  # MetaSNIP's own row
    table_md = (tmp_path / "table2_fmnist" / "table.md").read_text()
    assert table_md.startswith("Seeds 0 (given")
    overall, layers = (part.splitlines() for part in table_md.split("What the gates do")[1:])
    assert "over all gated channels" in overall[0] and "input-dependent" in overall[2]
    assert "tasks ÷ inputs" in overall[2] and overall[4].startswith("| metagater | ")
    assert "Jaccard between tasks" in layers[2] and layers[4].startswith("| metagater | 3 |")
    columns = [len(re.findall(r"(?<!\\)\|", line)) for line in layers[2:5]]  # unescaped |
    assert columns[0] == columns[1] == columns[2]  # "mean |gate logit|" is one column
    for name in ("table.md", "convergence.png", "sparsity_histogram.png", "curve.csv",
                 "accuracy_vs_macs.png"):
        assert (tmp_path / "table2_fmnist" / name).stat().st_size > 0
    curve_methods = {row["method"] for row in read_csv(tmp_path / "table2_fmnist" / "curve.csv")}
    assert curve_methods == {"metagater_nogate", "metagater"}  # MetaSNIP trains nothing

    stamp = (runs / "metagater-m1-seed0" / "summary.json").stat().st_mtime_ns
    reproduction = Reproduction("table2_fmnist", overrides, tmp_path)
    assert reproduction.ensure_run(reproduction.specs[1], 0) == "reused"
    assert (runs / "metagater-m1-seed0" / "summary.json").stat().st_mtime_ns == stamp

    meta_model = runs / "metagater_nogate-m1-seed0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(meta_model, weights_only=True)
    checkpoint["state_dict"]["x_ag"] += 1e-3  # another meta-model at the path MetaSNIP read
    torch.save(checkpoint, meta_model)
    assert reproduction.ensure_run(reproduction.specs[2], 0) == "redone (stale)"


def test_a_run_made_with_another_config_is_redone(tmp_path, monkeypatch):
    """The folder's config.yaml tells a stale run folder from a reusable one (no training)."""
    calls = []

    def fake_train(cfg, datamodule):
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


def test_a_run_loads_its_data_once_whether_run_reused_or_redone(tmp_path, synthetic_loads):
    """Checking a run folder against its data and running it share one load."""
    reproduction = Reproduction("table2_fmnist", [*TINY, "rounds=1", "eval_every=0"], tmp_path)
    assert reproduction.ensure_run(reproduction.specs[0], 0) == "ran"
    assert len(synthetic_loads) == 1
    assert reproduction.ensure_run(reproduction.specs[0], 0) == "reused"
    assert len(synthetic_loads) == 2


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


def test_a_pair_names_runs_of_the_experiment():
    runs = [{"method": "metagater", "local_steps": 1}, {"method": "fedavg", "local_steps": 1}]
    cfg = {"experiment": "x", "reproduce": {"runs": runs, "pairs": [["metagater-m1", "fedav-m1"]]}}
    with pytest.raises(SystemExit, match="pairs names 'fedav-m1'.*use one of fedavg-m1, metagater"):
        run_specs(OmegaConf.create(cfg))


def test_a_pair_is_paired_per_seed_beside_both_rows_cost(tmp_path):
    """Two named rows of one method (points of a front) are compared as a pair, not as a
    method's default row: the pair's line has both MACs skipped and the per-seed difference."""
    reference, gater = paired_rows(tmp_path, [0.70, 0.90, 0.80], [0.02, 0.025, 0.03])
    point = MethodRuns("metagater", 1, gater.run_dirs, "off0.9", ("method.local.sparsity_off=0.9",))
    snip = MethodRuns("metasnip_structured", 1, reference.run_dirs, "at-off0.9")
    (line,) = pairs_table([(point, snip)]).splitlines()[2:]
    assert line == ("| MetaGater w/ gating [off0.9] | MetaSNIP (structured) "
                    "[at-off0.9] | 750.0 / 750.0 | 25.0 / 25.0 | +2.50 ± 0.50 ahead |")
    paths = write_results([snip, point], tmp_path / "out", pairs=[(point, snip)])
    text = paths["table_md"].read_text()
    assert line in text
    assert "- [off0.9]: local.sparsity_off=0.9\n" in text  # its settings, once, under the table
    assert "[at-off0.9]:" not in text  # a row without settings of its own needs no line
    with pytest.raises(ValueError, match="compare_with names 'metasnip_structured'.*unnamed"):
        table_rows([snip, point], ("metasnip_structured",))  # a named row is no method default


def paired_rows(tmp_path, reference_accuracies, differences):
    """A reference method and another, one fake run per seed, the other's accuracy the
    reference's plus ``differences``."""
    rows = []
    for method, accuracies in (
        ("perfedavg_fo", reference_accuracies),
        ("metagater", [a + d for a, d in zip(reference_accuracies, differences, strict=True)]),
    ):
        run_dirs = tuple(tmp_path / f"{method}-seed{seed}" for seed in range(len(accuracies)))
        for seed, (run_dir, accuracy) in enumerate(zip(run_dirs, accuracies, strict=True)):
            fake_run(run_dir, accuracy, 0.5, 10.0, 0.002, seed=seed)
        rows.append(MethodRuns(method, 1, run_dirs))
    return rows


def test_a_steady_lead_over_noisy_seeds_is_shown_only_when_paired_per_seed(tmp_path):
    """Seeds differ by 10 points, the lead is 1 point on each: unpaired, the lead hides in the
    seeds' spread; paired per seed, it is shown."""
    rows = paired_rows(tmp_path, [0.70, 0.90, 0.80, 0.75, 0.85], [0.01, 0.012, 0.009, 0.011, 0.01])
    reference, gater = table_rows(rows, ("perfedavg_fo",))
    lead = gater["accuracy_mean"] - reference["accuracy_mean"]
    assert abs(lead) < gater["accuracy_std"]  # unpaired: not shown
    differences = [0.01, 0.012, 0.009, 0.011, 0.01]
    assert gater["vs_perfedavg_fo_mean"] == pytest.approx(statistics.fmean(differences))
    assert gater["vs_perfedavg_fo_std"] == pytest.approx(statistics.stdev(differences))
    assert gater["vs_perfedavg_fo_verdict"] == "ahead"
    assert reference["vs_perfedavg_fo_mean"] is None  # the reference's own row
    line = markdown_table([reference, gater], ("perfedavg_fo",)).splitlines()
    assert line[0].endswith("| Δ accuracy vs Per-FedAvg (FO) (points, paired) |")
    assert line[3].endswith(f"| +1.04 ± {100 * statistics.stdev(differences):.2f} ahead |")
    assert line[2].endswith("| — |")


@pytest.mark.parametrize(
    ("differences", "word"),
    [([0.02, -0.015, 0.01, -0.005, 0.0], "not shown"),  # |mean| <= std
     ([-0.02, -0.03, -0.025], "behind")],
)
def test_the_verdict_says_not_shown_when_the_mean_is_within_one_std(tmp_path, differences, word):
    rows = paired_rows(tmp_path, [0.8] * len(differences), differences)
    _, gater = table_rows(rows, ("perfedavg_fo",))
    assert gater["vs_perfedavg_fo_verdict"] == word


def test_runs_of_different_splits_are_not_paired(tmp_path):
    reference, gater = paired_rows(tmp_path, [0.8, 0.9], [0.01, 0.02])
    shuffled = MethodRuns("metagater", 1, gater.run_dirs[::-1])  # seed 1 against seed 0
    with pytest.raises(ValueError, match="not the same split"):
        paired_differences(shuffled, reference)


def test_tables_report_on_held_out_seeds_and_choices_use_others(tmp_path):
    reproduction = Reproduction("table1_fmnist", TINY, tmp_path)
    split = reproduction.base.reproduce
    assert set(split.report_seeds).isdisjoint(split.choose_seeds)
    seeds, output_dir, heading = reproduction.seeds_and_output(choose=False, seeds=None)
    assert seeds == list(split.report_seeds) and output_dir == tmp_path / "table1_fmnist"
    assert "held out" in heading
    seeds, output_dir, _ = reproduction.seeds_and_output(choose=True, seeds=None)
    assert seeds == list(split.choose_seeds) and output_dir == tmp_path / "table1_fmnist" / "choose"
    _, _, heading = reproduction.seeds_and_output(choose=False, seeds=[0, 7])
    assert heading == "Seeds 0, 7 (given; choices were made on 0)."
    overlapping = Reproduction("table1_fmnist", [*TINY, "reproduce.report_seeds=[4,5]"], tmp_path)
    with pytest.raises(SystemExit, match="share 4"):
        overlapping.seeds_and_output(choose=False, seeds=None)


def test_a_comparison_with_a_method_the_experiment_lacks_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="compare_with names 'fedavg'.*use one of metagater, "):
        Reproduction("table2_fmnist", [*TINY, "reproduce.compare_with=[fedavg]"], tmp_path)


EQUAL_MACS_RUNS = (
    "reproduce.runs=[{method: metagater, local_steps: 1},"
    "{method: metagater_nogate, local_steps: 1},"
    "{method: metagater_nogate, local_steps: 1, name: narrow, macs_from: metagater-m1},"
    "{method: metasnip_structured, local_steps: 1, meta_from: metagater_nogate-m1,"
    " macs_from: metagater-m1}]"
)
EQUAL_MACS_PAIRS = ("reproduce.pairs=[[metagater-m1, metagater_nogate-m1-narrow],"
                    "[metagater-m1, metasnip_structured-m1]]")
SYNTHETIC = SimpleNamespace(input_shape=(1, 16, 16), num_classes=6)  # conf/dataset/synthetic


@pytest.mark.parametrize(("backbone", "pruned"), [(["model=resnet8"], [1, 2, 3]),
                                                  (["model.gated_layers=[2,3]"], [2, 3])],
                         ids=["resnet8", "cnn4"])
def test_partners_run_at_the_gated_networks_macs(tmp_path, backbone, pruned):
    """A gated network with its two partners at equal MACs, seed by seed: the dense narrower
    network at the width, structured SNIP (every gated block pruned) at the keep fraction
    whose MACs come closest to the gated run's mean executed MACs; the runs execute what was
    planned, and the pairs' lines show both sides' MACs."""
    overrides = [*TINY, "rounds=3", "eval_every=1", *backbone, EQUAL_MACS_RUNS,
                 EQUAL_MACS_PAIRS, "reproduce.compare_with=[]"]
    main(["table1_fmnist", *overrides, "--seeds", "0", "--results-root", str(tmp_path)])
    folders = {label: RunFolder(tmp_path / "fmnist" / "runs" / f"{label}-seed0") for label in
               ("metagater-m1", "metagater_nogate-m1-narrow", "metasnip_structured-m1")}
    summaries = {label: folder.read_summary() for label, folder in folders.items()}
    target = summaries["metagater-m1"]["executed_macs_mean"]

    narrow = OmegaConf.load(folders["metagater_nogate-m1-narrow"].config_path)
    backbone_of = bind(OmegaConf.to_container(narrow.model))

    def dense_at(width):
        return dense_macs(backbone_of(SYNTHETIC.input_shape, SYNTHETIC.num_classes, width=width))

    width = narrow.model.width
    assert width < 1.0
    assert summaries["metagater_nogate-m1-narrow"]["executed_macs_mean"] == dense_at(width)
    for neighbour in (width - 0.001, width + 0.001):  # width_for_macs's resolution
        assert abs(dense_at(width) - target) <= abs(dense_at(neighbour) - target)

    snip = OmegaConf.load(folders["metasnip_structured-m1"].config_path)
    assert list(snip.method.adaptation.layers) == pruned
    network = build_network(snip, SYNTHETIC)
    keep = snip.method.adaptation.keep_fraction
    assert keep == keep_fraction_for_macs(network, pruned, target)
    channels = [network.describe().points[layer - 1].channels for layer in pruned]
    planned = pruned_macs(network, [layer - 1 for layer in pruned],
                          [kept_channels(keep, total) for total in channels])
    assert summaries["metasnip_structured-m1"]["executed_macs_mean"] == pytest.approx(planned)

    table_md = (tmp_path / "table1_fmnist" / "table.md").read_text()
    for partner in ("metagater_nogate-m1-narrow", "metasnip_structured-m1"):
        macs = [summaries[label]["executed_macs_mean"] / 1000 for label in ("metagater-m1",
                                                                             partner)]
        assert f"| {macs[0]:.1f} / {macs[1]:.1f} |" in table_md
        assert macs[1] == pytest.approx(macs[0], rel=0.05)  # within a channel of a layer
    assert "mean of the last 3 evaluations (%)" in table_md


def test_at_macs_sets_only_an_ungated_width_or_structured_snips_keep_fraction():
    for method in ("metagater", "metasnip"):
        cfg = compose_config([*TINY, f"method={method}"])
        with pytest.raises(SystemExit, match=f"method={method} takes no macs_from"):
            at_macs(cfg, 1e6, SYNTHETIC)


@pytest.mark.parametrize(
    ("reproduce", "refusal"),
    [({"runs": [{"method": "metagater", "local_steps": 1},
                {"method": "metasnip_structured", "local_steps": 1, "macs_from": "metagater-m1",
                 "sparsity_from": "metagater-m1"}]}, "both set its keep fraction"),
     ({"runs": [{"method": "metagater_nogate", "local_steps": 1, "macs_from": "metagater-m1"}]},
      "needs metagater-m1, which must be listed before it")],
)
def test_a_row_at_another_runs_macs_is_checked(reproduce, refusal):
    with pytest.raises(SystemExit, match=refusal):
        run_specs(OmegaConf.create({"experiment": "x", "reproduce": reproduce}))


def test_last_evaluations_must_be_a_whole_number(tmp_path):
    with pytest.raises(SystemExit, match="reproduce.last_evaluations=0: set it to a whole"):
        Reproduction("table2_fmnist", [*TINY, "reproduce.last_evaluations=0"], tmp_path)
