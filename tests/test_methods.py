"""Every method of METHOD.md §5 end to end on the tiny synthetic config, through the same loop."""

import csv
import json

import pytest
import torch

from mglightning.train import run


def read_tasks(cfg):
    with open(f"{cfg.output_dir}/tasks.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "method",
    ["fedavg", "perfedavg_fo", "perfedavg_hf", "metagater_nogate", "metasnip",
     "metasnip_structured"],
)
def test_method_runs_end_to_end_and_writes_its_rows(tiny_config, method):
    cfg = tiny_config(f"method={method}", "rounds=2", "eval_every=2")
    summary = run(cfg)
    rows = read_tasks(cfg)
    assert len(rows) == cfg.dataset.num_target_nodes
    assert summary["rounds"] == 2 and summary["training_seconds"] > 0
    assert 0.0 <= summary["accuracy_mean"] <= 1.0
    saved = json.loads(open(f"{cfg.output_dir}/summary.json").read())
    assert saved["accuracy_mean"] == summary["accuracy_mean"]
    if method.startswith("metasnip"):  # the share of weights (structured: of the gated
        # layer's channels) pruned, the same for every task
        assert [float(row["sparsity"]) for row in rows] == pytest.approx(
            [0.5] * len(rows), abs=1e-4
        )
    else:  # no gates: nothing is switched off
        assert all(float(row["sparsity"]) == 0.0 for row in rows)


def test_metasnip_adapts_the_given_meta_model_and_trains_nothing(tiny_config, tmp_path):
    nogate_cfg = tiny_config("method=metagater_nogate", "rounds=3", "eval_every=0")
    nogate = run(nogate_cfg)
    checkpoint = f"{nogate_cfg.output_dir}/checkpoints/last.ckpt"
    snip_cfg = tiny_config(
        "method=metasnip",
        "rounds=3",
        f"method.meta_checkpoint={checkpoint}",
        "method.adaptation.keep_fraction=0.25",
        f"output_dir={tmp_path / 'snip'}",
    )
    snip = run(snip_cfg)
    assert snip["training_seconds"] == nogate["training_seconds"]  # the meta-model's own
    assert not (tmp_path / "snip" / "checkpoints").exists()  # no training of its own
    # Same meta-model, same targets: accuracy before adaptation is identical.
    assert snip["accuracy_meta_mean"] == pytest.approx(nogate["accuracy_meta_mean"], abs=1e-12)
    assert snip["sparsity_mean"] == pytest.approx(0.75, abs=1e-4)


def test_per_fedavg_hessian_free_changes_the_meta_model(tiny_config, tmp_path):
    """The HF config really switches the Hessian term on: same seed, different meta-model."""
    states = []
    for method in ("perfedavg_fo", "perfedavg_hf"):
        cfg = tiny_config(
            f"method={method}", "rounds=2", "eval_every=0", f"output_dir={tmp_path / method}"
        )
        run(cfg)
        checkpoint = torch.load(f"{cfg.output_dir}/checkpoints/last.ckpt", weights_only=False)
        states.append(checkpoint["state_dict"]["x_ag"])
    assert not torch.allclose(states[0], states[1])
