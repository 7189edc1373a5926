"""`python -m mglightning.deploy`: a finished run's network adapted at a target and exported."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mglightning import deploy as deploy_module
from mglightning.build import build_datamodule
from mglightning.deploy import deploy, main
from mglightning.export import load_package
from mglightning.run.identity import DATA_KEY
from mglightning.train import run


@pytest.fixture(scope="module")
def deployed_target1(finished_run, tmp_path_factory):
    """Target 1 deployed once (an AOTInductor compile takes tens of seconds): the package's
    path and what the command printed."""
    output = tmp_path_factory.mktemp("deployed") / "target1.pt2"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([finished_run.output_dir, "--target", "1", "--output", str(output)])
    return output, printed.getvalue()


@pytest.mark.integration  # an AOTInductor compile
def test_the_saved_module_reproduces_the_runs_result_at_that_target(finished_run,
                                                                    deployed_target1):
    """Rebuilt from config.yaml and the checkpoint, adapted again and exported, the module
    scores on the node's raw query images exactly what the run reported for that target."""
    cfg = finished_run
    output, printed = deployed_target1
    with open(f"{cfg.output_dir}/tasks.csv") as handle:
        reported = float(next(row for row in csv.DictReader(handle) if row["task"] == "1")
                         ["accuracy"])
    client = build_datamodule(cfg).target_clients[1]
    raw_images = client.data.images[client.query_idx]  # uint8, as the data set stores them
    logits = load_package(output)(raw_images)  # no torch.no_grad() needed
    assert logits.grad_fn is None and not logits.requires_grad
    accuracy = float((logits.argmax(1) == client.data.labels[client.query_idx]).float().mean())
    assert accuracy == pytest.approx(reported)
    assert f"query accuracy {100 * reported:.2f} %" in printed
    for batch_size in (1, 3):  # one file serves every batch size
        torch.testing.assert_close(load_package(output)(raw_images[:batch_size]),
                                   logits[:batch_size])


@pytest.mark.integration
def test_the_metadata_beside_the_module_describes_it(finished_run, deployed_target1):
    """target<N>.json: its normalization turns the raw images into exactly what the network
    was given, its classes are the node's, its accuracy is the run's own for that target."""
    cfg = finished_run
    output, _ = deployed_target1
    about = json.loads(output.with_suffix(".json").read_text())
    client = build_datamodule(cfg).target_clients[1]
    data, rows = client.data, torch.cat([client.support_idx, client.query_idx])

    assert about["node_id"] == client.node_id and about["target"] == 1
    assert about["run"]["dir"] == str(Path(cfg.output_dir).resolve())
    class_ids = [entry["id"] for entry in about["classes"]]
    assert len(class_ids) == cfg.dataset.partition.classes_per_node  # pathological partition
    assert set(data.labels[rows].tolist()) == set(class_ids)
    assert about["input"]["dtype"] == str(data.images.dtype).removeprefix("torch.")
    assert about["input"]["shape"] == ["B", *data.images.shape[1:]]
    mean, std = (torch.tensor(about["normalization"][key]).view(1, -1, 1, 1)
                 for key in ("mean", "std"))
    torch.testing.assert_close(data.images[rows] / 255.0 - mean, data.batch(rows)[0] * std)
    with open(f"{cfg.output_dir}/tasks.csv") as handle:
        reported = next(row for row in csv.DictReader(handle) if row["task"] == "1")
    assert about["query_accuracy"] == pytest.approx(float(reported["accuracy"]))
    assert 0 < about["parameters"] < about["gated_network_parameters"]  # the run's gates cut
    assert torch.__version__ in about["format"]


def test_a_folder_without_config_or_checkpoint_or_a_bad_target_ends_in_one_line(
    finished_run, finished_run_copy, capsys
):
    run_dir = Path(finished_run_copy.output_dir)
    targets = finished_run.dataset.num_target_nodes
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir), "--target", str(targets)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"--target {targets}: the run has target nodes 0..{targets - 1}" in error

    stored = OmegaConf.load(run_dir / "config.yaml")
    OmegaConf.save(OmegaConf.merge(stored, {DATA_KEY: "0" * 8}), run_dir / "config.yaml")
    with pytest.raises(SystemExit):  # the data under data_root are not the run's
        main([str(run_dir)])
    assert f"was made on other data than data_root={stored.data_root} holds now " \
        f"({DATA_KEY}: 00000000 -> {stored[DATA_KEY]})" in capsys.readouterr().err
    OmegaConf.save(stored, run_dir / "config.yaml")

    (run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(SystemExit):
        main([str(run_dir)])
    assert "last.ckpt is missing: finish (or resume) the run first" in capsys.readouterr().err

    (run_dir / "config.yaml").unlink()
    with pytest.raises(SystemExit):
        main([str(run_dir)])
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "has no config.yaml" in error
    assert OmegaConf.load(finished_run.output_dir + "/config.yaml").seed == finished_run.seed


@pytest.mark.integration
def test_ungated_and_snip_runs_deploy_too(tiny_config, tmp_path):
    """w/o gating exports the plain network; MetaSNIP adapts the meta-model it was given."""
    nogate = tiny_config("method=metagater_nogate", "rounds=2", "eval_every=0",
                         f"output_dir={tmp_path}/nogate")
    run(nogate)
    snip = tiny_config("method=metasnip", "method.adaptation.keep_fraction=0.5",
                       f"method.meta_checkpoint={tmp_path}/nogate/checkpoints/last.ckpt",
                       f"output_dir={tmp_path}/snip")
    run(snip)
    for cfg in (nogate, snip):
        output = tmp_path / f"{cfg.method.name}.pt2"
        main([cfg.output_dir, "--output", str(output)])
        with open(f"{cfg.output_dir}/tasks.csv") as handle:
            reported = float(next(csv.DictReader(handle))["accuracy"])
        client = build_datamodule(cfg).target_clients[0]
        with torch.no_grad():
            predicted = load_package(output)(client.data.images[client.query_idx])
        labels = client.data.labels[client.query_idx]
        assert float((predicted.argmax(1) == labels).float().mean()) == pytest.approx(reported)


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=pytest.mark.integration),
                                      False])
def test_a_residual_network_gated_in_every_block_deploys(tiny_config, monkeypatch, compiled):
    """ResNet-8, a gate in each of its blocks: trained, adapted at a target and exported with
    its always-off channels removed, it scores what the run reported there (and deploy's own
    check, that it predicts as the sliced forward does, holds). Compiled, or in the default
    run the exported module itself, the compile left to the integration run."""
    if not compiled:
        monkeypatch.setattr(deploy_module, "compile_package", lambda module, images: module)
        monkeypatch.setattr(deploy_module, "load_package", lambda module: module)
    cfg = tiny_config("model=resnet8", "rounds=2", "eval_every=0",
                      "model.gate_bias_init=0.0")  # gates near 0: some channels off per task
    run(cfg)
    deployment = deploy(Path(cfg.output_dir), target=0)
    with open(f"{cfg.output_dir}/tasks.csv") as handle:
        reported = float(next(csv.DictReader(handle))["accuracy"])
    assert deployment.metadata["query_accuracy"] == pytest.approx(reported)
    client = build_datamodule(cfg).target_clients[0]
    module = load_package(deployment.package) if compiled else deployment.package
    with torch.no_grad():
        predicted = module(client.data.images[client.query_idx])
    labels = client.data.labels[client.query_idx]
    assert float((predicted.argmax(1) == labels).float().mean()) == pytest.approx(reported)
    about = deployment.metadata
    assert 0 < about["parameters"] < about["gated_network_parameters"]
