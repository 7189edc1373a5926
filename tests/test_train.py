"""End to end on the tiny synthetic config: the real entry point, CPU, a few rounds."""

import csv
import json
import logging

import torch

from mglightning.train import format_summary, run


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_tiny_run_adapts_and_writes_per_task_results(tiny_config):
    cfg = tiny_config("rounds=8", "eval_every=4")
    summary = run(cfg)
    rows = read_csv(f"{cfg.output_dir}/tasks.csv")
    assert len(rows) == cfg.dataset.num_target_nodes
    assert {
        "task",
        "classes",
        "accuracy",
        "accuracy_meta",
        "sparsity",
        "sparsity_layer3",
        "executed_macs",
        "flops_skipped",
        "learning_seconds",
        # what gating does
        "accuracy_stage1",
        "accuracy_gates_on",
        "mask_flip_rate",
        "gate_logit_abs_mean",
        "always_off_layer3",
        "always_on_layer3",
        "input_dependent_layer3",
        "input_jaccard_layer3",
        "majority_on_layer3",
        "zeroed_groups_layer3",
    } <= set(rows[0])
    # Adaptation helps: the adapted networks beat the meta-initialization on the query sets.
    assert summary["accuracy_mean"] > summary["accuracy_meta_mean"]
    curve = read_csv(f"{cfg.output_dir}/curve.csv")
    assert [int(row["round"]) for row in curve] == [4, 8]
    saved = json.loads(open(f"{cfg.output_dir}/summary.json").read())
    assert saved["rounds"] == 8 and saved["accuracy_mean"] == summary["accuracy_mean"]
    assert {"task_jaccard_layer3", "input_jaccard_layer3_mean", "zeroed_groups_layer3",
            "accuracy_gates_on_mean", "mask_flip_rate_mean"} <= set(saved)
    assert "target accuracy" in format_summary(summary)
    assert "WARNING" not in format_summary(summary)


def test_a_run_whose_gates_are_all_off_says_so_loudly(tiny_config):
    """From a gate bias of −3 every channel starts off and stays off (PROBES.md): the summary
    must not pass that for a result."""
    summary = run(tiny_config("rounds=2", "eval_every=0", "model.gate_bias_init=-3"))
    assert summary["sparsity_min"] == 1.0
    assert "WARNING: every gated channel is off" in format_summary(summary)


def meta_state(cfg):
    checkpoint = torch.load(f"{cfg.output_dir}/checkpoints/last.ckpt", weights_only=False)
    return checkpoint["state_dict"]["x_ag"]


def test_trainer_rounds_equal_direct_rounds(finished_run):
    """Lightning's loop adds bookkeeping only: the rounds it drives move the meta state
    exactly as calling ``run_round`` by hand does (and they do move it)."""
    from mglightning.build import build_datamodule, build_learner

    cfg = finished_run
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    start = learner.x_ag.clone()
    for _ in range(cfg.rounds):
        learner.run_round(datamodule.train_clients)
    assert not torch.allclose(learner.x_ag, start)
    torch.testing.assert_close(meta_state(cfg), learner.x_ag)


def test_gate_options_at_todays_values_reproduce_the_default_run_bit_for_bit(
    tiny_config, tmp_path
):
    """The gate training options, set explicitly to values that mean "as before"
    (and through their own code paths: a gate step equal to η, τ_end equal to τ), leave the
    run unchanged bit for bit; a real change of one of them does change it."""
    common = ("rounds=4", "eval_every=0")
    default_cfg = tiny_config(*common, f"output_root={tmp_path / 'default'}")
    method = default_cfg.method
    explicit_cfg = tiny_config(
        *common, f"output_root={tmp_path / 'explicit'}",
        f"method.gate_noise={method.gate_noise}", "method.temperature_end=1.0",
        "model.gate_bias_init=null", f"method.local.gate_lr={method.local.lr}",
        f"method.adaptation.gate_lr={method.adaptation.lr}", "method.adaptation.stage1_steps=1",
    )
    annealed_cfg = tiny_config(*common, f"output_root={tmp_path / 'annealed'}",
                               "method.gate_noise=annealed")
    for cfg in (default_cfg, explicit_cfg, annealed_cfg):
        run(cfg)
    assert torch.equal(meta_state(explicit_cfg), meta_state(default_cfg))
    timing = {"learning_seconds"}
    default_rows, explicit_rows = (
        [{k: v for k, v in row.items() if k not in timing}
         for row in read_csv(f"{cfg.output_dir}/tasks.csv")]
        for cfg in (default_cfg, explicit_cfg)
    )
    assert explicit_rows == default_rows
    assert not torch.equal(meta_state(annealed_cfg), meta_state(default_cfg))


def test_a_run_loads_its_data_once_and_says_so_once(tiny_config, synthetic_loads, caplog):
    """One load of the pooled data (the loader called once), one data line, for a fresh run
    and for a finished one found again."""
    cfg = tiny_config("rounds=1", "eval_every=0")
    for runs in (1, 2):  # the second finds the first's finished run
        with caplog.at_level(logging.INFO, logger="mglightning.data.datamodule"):
            run(cfg)
        data_lines = [record for record in caplog.records
                      if record.getMessage().startswith("synthetic: ")]
        assert len(synthetic_loads) == runs and len(data_lines) == runs
