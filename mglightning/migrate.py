"""``python -m mglightning.migrate RUNS_DIR [--apply]``: run folders made before a run's
identity left out what its method does not read and took in its data, made findable again.

Three changes leave older folders unfound or refused, none of which changes a result:

- an ungated method's fingerprint no longer holds the gates' keys: such a run's name now ends
  in another fingerprint (:mod:`mglightning.run.identity`);
- a run folder records the fingerprint of the pooled data it loaded (``data_fingerprint`` in
  ``config.yaml``), and a MetaSNIP run's of the meta-model it adapted
  (``meta_checkpoint_fingerprint``); a folder without them is refused;
- parts are named by ``_target_`` (the backbone, the adaptation rule, the regularizer, the
  logger, the data set's loader, ``dataset.source``, and its partitioner, with the target
  nodes' count moved beside them to ``dataset.num_target_nodes``), the server steps by what
  they are (``AcceleratedProximalStep``, ``FedAvgStep``, once named as Flower strategies) and
  Per-FedAvg HF says how it takes its Hessian product: :func:`upgrade_config` writes an older
  ``config.yaml`` as today's config of the same run would read (an older HF run took the
  finite difference, ``method.local.hessian=finite_difference``). Each of these changed every
  run's name.

For every run folder under RUNS_DIR (a folder whose ``config.yaml`` is a run's, at any depth,
RUNS_DIR itself included) this renames a folder named by its run name to the name its config
gets today (updating ``run_name`` and ``output_dir`` in its ``config.yaml``) and records the
fingerprints of the data and meta-model present now: run it with those the runs were made
with. Without
``--apply`` it only says what it would do; with it, running it again finds nothing to do.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mglightning.build import build_datamodule
from mglightning.data.datasets import DataError
from mglightning.data.partition import PartitionError
from mglightning.run.checkpoint import UnreadableCheckpointError, read_state_dict
from mglightning.run.folder import RunFolder
from mglightning.run.identity import (
    DATA_KEY,
    FINGERPRINT_LENGTH,
    INPUT_KEYS,
    META_MODEL_KEY,
    data_fingerprint,
    fingerprint,
    state_fingerprint,
)
from mglightning.targets import TARGET_KEY, import_target

# The config schema before parts were named by ``_target_``: old name -> today's target.
RULE_TARGETS = {
    "two_stage": "mglightning.adaptation.steps.two_stage",
    "one_step": "mglightning.adaptation.steps.one_step",
    "snip": "mglightning.adaptation.snip.snip",
    "snip_channels": "mglightning.adaptation.snip.snip_channels",
}
REGULARIZER_TARGETS = {
    "group_lasso": "mglightning.federated.prox.GroupLasso.for_network",
    "l1": "mglightning.federated.prox.L1.for_network",
}
LOGGER_TARGETS = {
    "wandb": "mglightning.run.loggers.wandb_or_csv_logger",
    "csv": "mglightning.run.loggers.csv_logger",
}
SERVER_STEP_TARGETS = {  # the server steps' names before: old target -> today's
    "mglightning.federated.server.AcceleratedProximalStrategy":
        "mglightning.federated.server.AcceleratedProximalStep",
    "mglightning.federated.server.FedAvgStrategy": "mglightning.federated.server.FedAvgStep",
}
BACKBONE_MODULE = "mglightning.models.backbones"
# The data set before its loader was a ``_target_`` (``dataset.source``): dataset.name -> target;
# its options were dataset.download, .path, .image_size and the dataset.synthetic group.
SOURCE_TARGETS = {
    "mnist": "mglightning.data.datasets.mnist",
    "fmnist": "mglightning.data.datasets.fmnist",
    "cifar10": "mglightning.data.datasets.cifar10",
    "cifar100": "mglightning.data.datasets.cifar100",
    "synthetic": "mglightning.data.datasets.make_synthetic",
    "folder": "mglightning.data.own_data.load_image_folder",
    "arrays": "mglightning.data.own_data.load_arrays",
}
OLD_SOURCE_KEYS = ("download", "path", "image_size")
PARTITIONER_TARGETS = {  # dataset.partition.name -> target
    "pathological": "mglightning.data.partition.PathologicalPartitioner",
    "dirichlet": "mglightning.data.partition.DirichletPartitioner",
    "natural": "mglightning.data.partition.NaturalPartitioner",
}
FINGERPRINT_SUFFIX = re.compile(rf"-[0-9a-f]{{{FINGERPRINT_LENGTH}}}$")
NOT_RUN_FOLDERS = {"wandb", ".hydra"}  # their config.yaml files are not a run's


@dataclass(frozen=True)
class Migration:
    """What one run folder needs: a new path (None: it keeps its own) and its config as it
    should read (None: it reads so already)."""

    path: Path
    new_path: Path | None
    config: dict | None

    def describe(self) -> list[str]:
        lines = [f"rename {self.path} -> {self.new_path.name}"] if self.new_path else []
        if self.config is not None:
            inputs = " ".join(f"{key}={value}" for key, value in self.inputs().items())
            lines.append(f"record {inputs} and run_name={self.config['run_name']} in "
                         f"{RunFolder(self.path).config_path}")
        return lines

    def inputs(self) -> dict[str, str]:
        return {key: self.config[key] for key in INPUT_KEYS if key in self.config}

    def apply(self) -> None:
        path = self.path
        if self.new_path is not None:
            path = self.path.rename(self.new_path)
        if self.config is not None:
            RunFolder(path).record_config(self.config, self.inputs())


def run_configs(root: Path) -> list[Path]:
    """Every run's ``config.yaml`` under ``root`` (W&B's and Hydra's own are not)."""
    return sorted(path for path in root.rglob(RunFolder.CONFIG)
                  if not NOT_RUN_FOLDERS & set(path.relative_to(root).parts[:-1]))


def upgrade_config(config: dict) -> dict:
    """``config`` (a run's resolved config.yaml) with every part named by today's ``_target_``
    and Per-FedAvg HF's Hessian product stated, as today's config of the same run reads; a
    config that reads so already comes back equal."""
    config = copy.deepcopy(config)
    _upgrade_dataset(config["dataset"])
    model, method = config["model"], config["method"]
    model.setdefault("_target_", f"{BACKBONE_MODULE}.{model['name']}")
    adaptation = method.get("adaptation") or {}
    if "rule" in adaptation:
        method["adaptation"] = {"_target_": RULE_TARGETS[adaptation.pop("rule")], **adaptation}
    server = method.get("server") or {}
    if server.get("_target_") in SERVER_STEP_TARGETS:
        server["_target_"] = SERVER_STEP_TARGETS[server["_target_"]]
    regularizer = method.get("regularizer")
    if isinstance(regularizer, dict) and "name" in regularizer:
        name = regularizer.pop("name")
        method["regularizer"] = ({"_target_": REGULARIZER_TARGETS[name], **regularizer}
                                 if name in REGULARIZER_TARGETS else None)
    local = method.get("local") or {}
    if local.get("hessian_free") and "hessian" not in local:
        local["hessian"] = "finite_difference"  # what every HF run before the exact product took
    logger = config.get("logger") or {}
    if logger.get("name") in LOGGER_TARGETS:
        logger.setdefault("_target_", LOGGER_TARGETS[logger["name"]])
    return config


def _upgrade_dataset(dataset: dict) -> None:
    """The data set's loader and partitioner as ``_target_`` nodes, each with the options its
    target takes (a partition key the partitioner does not take is null, as the config walker
    asks of a switched partitioner), and the target nodes' count beside them."""
    if "source" in dataset or dataset.get("name") not in SOURCE_TARGETS:
        return
    old_options = {**(dataset.pop("synthetic", None) or {}),
                   **{key: dataset.pop(key) for key in OLD_SOURCE_KEYS if key in dataset}}
    source = SOURCE_TARGETS[dataset["name"]]
    dataset["source"] = {TARGET_KEY: source, **{
        key: value for key, value in old_options.items() if key in _keys_taken(source)}}
    partition = dataset["partition"]
    dataset["num_target_nodes"] = partition.pop("num_target_nodes", 0)
    partitioner = PARTITIONER_TARGETS[partition.pop("name")]
    dataset["partition"] = {TARGET_KEY: partitioner, **{
        key: value if key in _keys_taken(partitioner) else None
        for key, value in partition.items()}}


def _keys_taken(target_name: str) -> set[str]:
    """The config keys of a ``_target_``: its keyword parameters."""
    parameters = inspect.signature(import_target(target_name)).parameters.values()
    return {parameter.name for parameter in parameters
            if parameter.kind is not inspect.Parameter.POSITIONAL_ONLY}


def pooled_data_fingerprint(cfg: DictConfig) -> str:
    """The fingerprint of the data ``cfg`` loads now, as a run records it."""
    data = build_datamodule(cfg).data
    return data_fingerprint(data.images, data.labels)


def plan(folder: Path, stored: DictConfig) -> Migration:
    """What ``folder``, holding the run config ``stored``, needs (raises DataError when the
    run's data cannot be loaded)."""
    original = OmegaConf.to_container(stored)
    config = upgrade_config(original)
    stored = OmegaConf.create(config)  # as today's config of this run reads
    run_name = str(config["run_name"])
    if FINGERPRINT_SUFFIX.search(run_name):
        config["run_name"] = FINGERPRINT_SUFFIX.sub(f"-{fingerprint(stored)}", run_name)
    new_path = None
    if folder.name == run_name and config["run_name"] != run_name:
        new_path = folder.with_name(config["run_name"])
        if Path(str(config["output_dir"])).name == run_name:
            config["output_dir"] = str(Path(str(config["output_dir"])).with_name(new_path.name))
    if DATA_KEY not in config:
        config[DATA_KEY] = pooled_data_fingerprint(stored)
    meta_checkpoint = config["method"].get("meta_checkpoint")
    if meta_checkpoint and META_MODEL_KEY not in config:
        config[META_MODEL_KEY] = state_fingerprint(read_state_dict(meta_checkpoint))
    changed = config != original
    return Migration(folder, new_path, config if changed else None)


def migrate(root: Path, apply: bool) -> list[str]:
    """The lines saying what was (or, without ``apply``, would be) done under ``root``."""
    lines = []
    for config_path in run_configs(root):
        stored = OmegaConf.load(config_path)
        if not {"run_name", "dataset", "method"} <= set(stored):
            continue
        try:
            migration = plan(config_path.parent, stored)
        except (DataError, PartitionError) as error:
            lines.append(f"skip {config_path.parent}: its data cannot be loaded ({error})")
            continue
        except UnreadableCheckpointError as error:
            lines.append(f"skip {config_path.parent}: its meta-model cannot be read ({error})")
            continue
        if migration.new_path is not None and migration.new_path.exists():
            lines.append(f"skip {config_path.parent}: {migration.new_path} exists already")
            continue
        lines += migration.describe()
        if apply:
            migration.apply()
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mglightning.migrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="a folder of run folders, e.g. outputs")
    parser.add_argument("--apply", action="store_true", help="do it (default: only say what)")
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: {args.runs_dir} is not a folder: pass the folder your runs are in "
              "(outputs, results)", file=sys.stderr)
        sys.exit(2)
    lines = migrate(args.runs_dir, args.apply)
    print("\n".join(lines) if lines else f"nothing to do under {args.runs_dir}")
    if lines and not args.apply:
        print("(dry run: pass --apply to do it)")


if __name__ == "__main__":
    main()
