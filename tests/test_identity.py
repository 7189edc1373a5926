"""A run's identity is what it reads and the data it loads;
folders made before are found again by `python -m mglightning.migrate`."""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import yaml
from conftest import train_cli
from omegaconf import OmegaConf

from mglightning.analysis.finished_runs import select_runs
from mglightning.build import build_datamodule, compose_config
from mglightning.config import validate
from mglightning.constraints import GATES_ONLY, neutral, number
from mglightning.data import datasets
from mglightning.migrate import main as migrate_main
from mglightning.migrate import migrate, upgrade_config
from mglightning.run.folder import RunFolder
from mglightning.run.identity import (
    DATA_KEY,
    NON_IDENTITY_KEYS,
    data_fingerprint,
    declared_keys,
    fingerprint,
)
from mglightning.train import run

FIXTURES = Path(__file__).parent / "fixtures"
# Configs as the code composed them before parts were named by ``_target_``, and before data
# sets' loaders and partitioners were.
CONFIGS_BEFORE = (FIXTURES / "configs_before_target.yaml",
                  FIXTURES / "configs_before_data_target.yaml")
UNGATED = ("fedavg", "perfedavg_fo", "perfedavg_hf", "metagater_nogate", "metasnip",
           "metasnip_structured")
GATE_OVERRIDES = ("model.temperature=0.5", "model.gate_hidden=8", "model.gate_bias_init=1.0",
                  "++method.gate_noise=logistic", "++method.temperature_end=0.5",
                  "++method.regularizer.gamma=0.5", "++method.local.gate_lr=0.05")
# What only gates read (METHOD.md §1, §3), by hand: the keys that MetaGater's parts declare so.
GATE_KEYS = {
    "model.gated_layers", "model.gate_hidden", "model.temperature", "model.gate_bias_init",
    "method.gate_noise", "method.temperature_end", "method.local.gate_lr", "method.regularizer",
    "method.adaptation.gate_lr", "method.adaptation.stage1_steps",
    "method.local.sparsity_off", "method.local.sparsity_weight", "method.local.gate_loss",
}
BUDGET_KEYS = ("sparsity_off", "sparsity_weight")  # of method.local (METHOD.md §7)


def gates_only_keys(config) -> dict:
    """{dotted key: value} of the keys a config's parts declare read only with gates."""
    return {dotted: value for dotted, value, declarations
            in declared_keys(OmegaConf.to_container(config, resolve=True))
            if GATES_ONLY in declarations}


def test_the_gates_keys_are_declared_beside_their_parameters(tiny_config):
    """A gate key without its declaration would stay in ungated runs' identity."""
    assert set(gates_only_keys(tiny_config("method=metagater"))) == GATE_KEYS


def test_no_gates_only_key_changes_an_ungated_fingerprint(tiny_config):
    """Every declared key, whatever its value, when the network has no gates."""
    ungated = OmegaConf.to_container(tiny_config("method.gating=false"), resolve=True)
    base = fingerprint(ungated)
    for dotted in gates_only_keys(tiny_config("method=metagater")):
        changed = copy.deepcopy(ungated)
        *parents, leaf = dotted.split(".")
        node = changed
        for parent in parents:
            node = node[parent]
        node[leaf] = "changed"
        assert fingerprint(changed) == base, dotted
        assert fingerprint(changed | {"method": {**changed["method"], "gating": True}}) != base


@dataclass
class SolverWithNewKeys:
    """A local solver as one with a new option reads: ``width`` off at 1.0 (with
    ``width_weight`` then unread) and a nested part ``gate_loss`` off at null."""

    lr: Annotated[float, number(above=0)]
    width: Annotated[float, number(above=0), neutral(1.0, "width_weight")] = 1.0
    width_weight: Annotated[float, number(at_least=0)] = 1.0
    gate_loss: Annotated[dict | None, neutral(None)] = None


def test_a_key_at_its_neutral_value_keeps_the_fingerprint_of_a_config_without_it(tiny_config):
    before = OmegaConf.to_container(tiny_config(), resolve=True)
    before["method"]["local"] = {"_target_": f"{__name__}.SolverWithNewKeys", "lr": 0.1}

    def with_local(**options) -> str:
        config = copy.deepcopy(before)
        config["method"]["local"] |= options
        return fingerprint(config)

    assert with_local(width=1.0, width_weight=9.0, gate_loss=None) == fingerprint(before)
    assert with_local(width=1, gate_loss=None) == fingerprint(before)
    wide = with_local(width=2.0)
    assert wide != fingerprint(before)
    assert with_local(width=2.0, width_weight=9.0) != wide  # read once the key is on
    gate_loss = {"_target_": "mglightning.adaptation.steps.one_step", "lr": 0.5}
    assert with_local(gate_loss=gate_loss) != fingerprint(before)
    assert with_local(gate_loss=gate_loss | {"lr": 0.7}) != with_local(gate_loss=gate_loss)


@pytest.mark.parametrize("method", UNGATED)
def test_an_ungated_fingerprint_ignores_the_gates_keys(tiny_config, method):
    base = fingerprint(tiny_config(f"method={method}"))
    for override in GATE_OVERRIDES:
        assert fingerprint(tiny_config(f"method={method}", override)) == base, override
    changed = fingerprint(tiny_config(f"method={method}", "dataset.batch_size=8"))
    assert changed != base  # what it reads still counts


def test_a_gated_fingerprint_holds_every_gate_key(tiny_config):
    base = fingerprint(tiny_config())
    for override in GATE_OVERRIDES:
        assert fingerprint(tiny_config(override)) != base, override
    assert fingerprint(tiny_config("method.gating=false")) != base
    assert fingerprint(tiny_config("method.regularizer=null")) != base


def test_an_unset_sparsity_budget_keeps_the_fingerprint_of_a_config_without_it(tiny_config):
    """Runs made before the budget (METHOD.md §7) existed stay findable; a set budget, and then
    its weight, is identity."""
    cfg = tiny_config()
    before = OmegaConf.to_container(cfg, resolve=True)
    for key in BUDGET_KEYS:
        del before["method"]["local"][key]
    assert fingerprint(before) == fingerprint(cfg)
    assert fingerprint(tiny_config("method.local.sparsity_weight=9")) == fingerprint(cfg)
    budget = fingerprint(tiny_config("method.local.sparsity_off=0.9"))
    assert budget != fingerprint(cfg)
    assert fingerprint(tiny_config("method.local.sparsity_off=0.9",
                                   "method.local.sparsity_weight=9")) != budget


@pytest.mark.parametrize("model", ["mlp2", "cnn4", "cnn7", "resnet8"])
def test_a_width_of_one_keeps_the_fingerprint_of_a_config_without_it(tiny_config, model):
    """The width multiplier at its neutral 1.0 is left out; any other width is identity."""
    cfg = tiny_config(f"model={model}")
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["model"]["width"]
    assert fingerprint(before) == fingerprint(cfg) == fingerprint(
        tiny_config(f"model={model}", "model.width=1"))
    assert fingerprint(tiny_config(f"model={model}", "model.width=0.5")) != fingerprint(cfg)


@pytest.mark.parametrize("fixture", CONFIGS_BEFORE, ids=lambda path: path.stem)
def test_the_migration_upgrades_an_older_config_to_todays_fingerprint(fixture):
    """Configs as older code composed them (pinned in fixtures), upgraded, read as today's
    config of the same run: the same fingerprint, and valid; Per-FedAvg HF's as the finite
    difference and FO's steps those runs took (HF has steps of its own since)."""
    for overrides, old in yaml.safe_load(fixture.read_text()).items():
        hessian = (["method.local.hessian=finite_difference", "method.local.alpha=0.01",
                    "method.local.beta=0.1"] if "perfedavg_hf" in overrides else [])
        # own data's default nodes were of at least 10 samples then: a run of another partition
        own_data = "dataset=folder" in overrides or "dataset=arrays" in overrides
        min_size = ["dataset.partition.min_size=10"] if own_data else []
        today = compose_config([*overrides.split(), *hessian, *min_size])
        upgraded = upgrade_config(old)
        assert fingerprint(upgraded) == fingerprint(today), overrides
        assert fingerprint(old) != fingerprint(today), overrides  # there was something to do
        validate(OmegaConf.create(upgraded))  # deploy rebuilds a run from it


def loaded_data(cfg) -> str:
    """The fingerprint of the data ``cfg`` loads."""
    data = build_datamodule(cfg).data
    return data_fingerprint(data.images, data.labels)


def task_rows(folder: Path) -> list[dict]:
    with open(folder / "tasks.csv") as handle:
        return [{key: value for key, value in row.items() if key != "learning_seconds"}
                for row in csv.DictReader(handle)]


def test_what_an_ungated_run_leaves_out_cannot_change_its_results(tiny_config, tmp_path):
    """MetaGater built without gates, trained and adapted with every gate key changed (its
    regularizer, noise, τ, Stage I included): the same results, bit for bit."""
    settings = ["method.gating=false", "rounds=2", "eval_every=0"]
    plain = tiny_config(*settings, f"output_root={tmp_path / 'plain'}")
    changed = tiny_config(*settings, *GATE_OVERRIDES, "method.adaptation.gate_lr=0.3",
                          "method.adaptation.stage1_steps=2", "model.gated_layers=[2]",
                          f"output_root={tmp_path / 'changed'}")
    assert plain.run_name == changed.run_name
    run(plain)
    run(changed)
    assert task_rows(Path(plain.output_dir)) == task_rows(Path(changed.output_dir))


# --- data -----------------------------------------------------------------------------------


def write_fake_fmnist(folder: Path, seed: int) -> None:
    """Fashion-MNIST's four idx files, 300 random 28×28 images a class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", 2400), ("t10k", 600)):
        arrays = {"images": (datasets.IDX_IMAGES_MAGIC,
                             rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)),
                  "labels": (datasets.IDX_LABELS_MAGIC, np.arange(count, dtype=np.uint8) % 10)}
        for kind, (magic, array) in arrays.items():
            header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
            path = folder / f"{split}-{kind}-idx{array.ndim}-ubyte.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wb") as handle:
                handle.write(header + array.tobytes())


def test_the_same_command_on_other_data_is_refused_not_reused(tmp_path, monkeypatch, capsys):
    """The newcomer's trap: Fashion-MNIST's files swapped for other images, the
    same command must not answer with the other data's finished run."""
    for name, seed in (("first", 0), ("other", 1)):
        write_fake_fmnist(tmp_path / name, seed)
    command = ["dataset=fmnist", "logger=none", "progress_bar=false", "rounds=1", "eval_every=0",
               "method.clients_per_round=4", "dataset.partition.num_nodes=24",
               "dataset.num_target_nodes=4", "dataset.partition.size_range=[40,80]",
               "trainer.accelerator=cpu", f"data_root={tmp_path / 'root'}",
               f"output_root={tmp_path / 'runs'}"]

    def train(data: str) -> None:
        monkeypatch.setenv(datasets.DEBIAN_FMNIST_ENV, str(tmp_path / data))
        train_cli(command)

    train("first")
    capsys.readouterr()
    with pytest.raises(SystemExit) as other:
        train("other")
    error = capsys.readouterr().err
    assert other.value.code == 2 and error.count("\n") == 1, error
    assert "on other data (data_fingerprint: " in error
    train("first")
    assert "nothing to do" in capsys.readouterr().out


# --- migration ------------------------------------------------------------------------------


def old_container(config) -> dict:
    """``config`` resolved, as the old code wrote it: without the sparsity budget's keys and
    the model's width multiplier and the gate loss."""
    container = OmegaConf.to_container(config, resolve=True)
    for key in (*BUDGET_KEYS, "gate_loss"):
        container["method"]["local"].pop(key, None)
    container["model"].pop("width", None)
    return container


def old_fingerprint(config) -> str:
    """The fingerprint before runs left out what they do not read (kept as a fixture)."""
    container = old_container(config)
    kept = {key: value for key, value in container.items() if key not in NON_IDENTITY_KEYS}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def make_old(cfg) -> Path:
    """The finished run of ``cfg`` as the old code left it: its folder named by the old
    fingerprint, its config.yaml without the data's fingerprint."""
    folder = Path(cfg.output_dir)
    old_name = cfg.run_name.rsplit("-", 1)[0] + f"-{old_fingerprint(cfg)}"
    old_folder = folder.with_name(old_name)
    if old_folder != folder:
        folder.rename(old_folder)
    config = old_container(cfg)
    config |= {"run_name": old_name, "output_dir": str(old_folder)}
    (old_folder / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return old_folder


def test_migration_finds_old_runs_again_and_is_idempotent(tiny_config, tmp_path, capsys):
    settings = ["rounds=2", "eval_every=0"]
    nogate, gated = (tiny_config(*settings, f"method={method}")
                     for method in ("metagater_nogate", "metagater"))
    for cfg in (nogate, gated):
        run(cfg)
    old_nogate, old_gated = make_old(nogate), make_old(gated)
    assert old_nogate.name != Path(nogate.output_dir).name  # the gate keys left its identity
    assert old_gated.name == Path(gated.output_dir).name
    data = loaded_data(gated)
    with pytest.raises(Exception, match="mglightning.migrate"):  # unmigrated: refused, told how
        RunFolder(old_gated).check_config(gated, {DATA_KEY: data})
    tasks = (old_nogate / "tasks.csv").read_bytes()

    root = tmp_path  # tiny_config writes under tmp_path
    planned = migrate(root, apply=False)
    assert f"rename {old_nogate} -> {Path(nogate.output_dir).name}" in planned
    assert sum(line.startswith(f"record {DATA_KEY}=") for line in planned) == 2
    assert old_nogate.exists() and DATA_KEY not in OmegaConf.load(old_gated / "config.yaml")

    migrate_main([str(root), "--apply"])
    for cfg in (nogate, gated):
        folder = RunFolder(cfg.output_dir)
        assert folder.finished and folder.differences(cfg, {DATA_KEY: data}) == []
        stored = OmegaConf.load(folder.config_path)
        assert stored.run_name == cfg.run_name and stored.output_dir == cfg.output_dir
    assert not old_nogate.exists()
    assert (Path(nogate.output_dir) / "tasks.csv").read_bytes() == tasks
    stamp = (Path(nogate.output_dir) / "tasks.csv").stat().st_mtime_ns
    run(nogate)  # found: nothing to do
    assert (Path(nogate.output_dir) / "tasks.csv").stat().st_mtime_ns == stamp
    capsys.readouterr()
    migrate_main([str(root), "--apply"])
    assert capsys.readouterr().out.startswith("nothing to do")
    labels = [labels for _, labels in select_runs(root)]
    assert sorted(label["method"] for label in labels) == ["metagater", "metagater_nogate"]


def before_data_targets(config: dict) -> dict:
    """A resolved synthetic config as the code before data sets' ``_target_`` nodes wrote it
    (checked against the pinned fixture below)."""
    config = copy.deepcopy(config)
    dataset = config["dataset"]
    source, partition = dataset.pop("source"), dataset.pop("partition")
    del source["_target_"], partition["_target_"]
    dataset |= {"download": False, "synthetic": source, "partition": {
        "name": "pathological", "num_target_nodes": dataset.pop("num_target_nodes"),
        **partition}}
    return config


def test_the_old_synthetic_config_is_the_pinned_one():
    pinned = yaml.safe_load(CONFIGS_BEFORE[1].read_text())["dataset=synthetic model=cnn4 "
                                                             "method=metagater"]
    today = OmegaConf.to_container(compose_config(["dataset=synthetic", "model=cnn4",
                                                   "method=metagater"]), resolve=True)
    assert before_data_targets(today)["dataset"] == pinned["dataset"]


def test_migration_finds_a_run_made_before_data_targets(tiny_config, tmp_path):
    """A finished run whose config.yaml names its data set and partitioner as the code before
    their ``_target_`` nodes did, in a folder named by that config's fingerprint: found again,
    its results untouched."""
    cfg = tiny_config("rounds=1", "eval_every=0", "method=fedavg")
    run(cfg)
    folder = Path(cfg.output_dir)
    config = before_data_targets(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")))
    old_name = cfg.run_name.rsplit("-", 1)[0] + f"-{fingerprint(config)}"
    config |= {"run_name": old_name, "output_dir": str(folder.with_name(old_name))}
    old = folder.rename(folder.with_name(old_name))
    RunFolder(old).record_config(config, {DATA_KEY: config[DATA_KEY]})
    tasks = (old / "tasks.csv").read_bytes()
    migrate_main([str(tmp_path), "--apply"])
    migrated = RunFolder(cfg.output_dir)
    assert not old.exists() and migrated.differences(cfg, {DATA_KEY: loaded_data(cfg)}) == []
    assert migrated.tasks_path.read_bytes() == tasks


def test_migration_skips_a_folder_whose_name_is_taken(tiny_config, tmp_path):
    cfg = tiny_config("rounds=1", "eval_every=0", "method=fedavg")
    run(cfg)
    old = make_old(cfg)
    shutil.copytree(old, cfg.output_dir)  # a run made since under the new name
    assert f"skip {old}: {cfg.output_dir} exists already" in migrate(tmp_path, apply=True)
    assert old.exists()


@pytest.mark.parametrize("method, old_target", [
    ("metagater", "mglightning.federated.server.AcceleratedProximalStrategy"),
    ("fedavg", "mglightning.federated.server.FedAvgStrategy"),
])
def test_the_migration_renames_a_server_step_once_named_as_a_flower_strategy(
        tiny_config, tmp_path, method, old_target):
    """A run folder whose config names its server step by the old name gets today's run name,
    and its config today's target."""
    cfg = tiny_config(f"method={method}")
    old = OmegaConf.to_container(cfg, resolve=True) | {DATA_KEY: "0123abcd"}
    old["method"]["server"]["_target_"] = old_target
    old_name = cfg.run_name.rsplit("-", 1)[0] + f"-{fingerprint(old)}"
    assert old_name != cfg.run_name  # the target is identity: the old folder is not found
    folder = Path(cfg.output_dir).with_name(old_name)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        OmegaConf.to_yaml(old | {"run_name": old_name, "output_dir": str(folder)}))

    migrate_main([str(tmp_path), "--apply"])
    assert not folder.exists()
    stored = OmegaConf.load(Path(cfg.output_dir) / "config.yaml")
    assert stored.method.server._target_ == cfg.method.server._target_
    assert stored.run_name == cfg.run_name and fingerprint(stored) == fingerprint(cfg)


def test_a_channel_norm_keeps_the_fingerprint_of_a_resnet_config_without_it(tiny_config):
    """``model.norm=channel`` is the ResNet before the option: left out; ``layer`` is not."""
    cfg = tiny_config("model=resnet8", "model.norm=channel")
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["model"]["norm"]
    assert fingerprint(before) == fingerprint(cfg)
    assert fingerprint(tiny_config("model=resnet8")) != fingerprint(cfg)
