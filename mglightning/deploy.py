"""``python -m mglightning.deploy RUN_DIR --target N``: a finished run's network, adapted at
one target node and exported for deployment.

It rebuilds the run from its ``config.yaml`` (the same seeded partition, hence the same target
nodes), loads its meta-model, adapts it on target N's support set with the run's own rule
(METHOD.md §4), and exports it with :func:`mglightning.export.task_network`: channels the gates
switch off for every image of the node removed at rest. It is saved as an AOTInductor package
(``target<N>.pt2``, :func:`mglightning.export.compile_package`), which takes uint8 images
(B, C, H, W) as the data set stores them and normalizes them itself; it is saved only if the
compiled package predicts exactly as the adapted network on all of the node's images. Beside it,
``target<N>.json`` says what the module itself cannot: the node's classes, the input format and
normalization, the run it came from, its query accuracy and size.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mglightning.build import build_adapter, build_datamodule, build_learner, compose_config
from mglightning.data.datamodule import ClientDataModule
from mglightning.data.datasets import DataError
from mglightning.errors import ConfigError
from mglightning.export import (
    NoCompilerError,
    RawImageInput,
    compile_package,
    load_package,
    task_network,
)
from mglightning.run.checkpoint import read_state_dict
from mglightning.run.folder import NOT_RECORDED, RunFolder
from mglightning.run.identity import (
    DATA_KEY,
    META_MODEL_KEY,
    data_fingerprint,
    fingerprint,
    state_fingerprint,
)
from mglightning.run.io import write_json


class DeployError(ValueError):
    """A run folder or target that cannot be deployed; the message says what to change."""


@dataclass
class Deployment:
    """The compiled package (the bytes of a ``.pt2`` file) and what a reader wants to know
    about it (:func:`metadata`)."""

    package: bytes
    metadata: dict


def run_config(run_dir: Path, default: bool = False) -> DictConfig:
    """The config a run folder records; ``default``: the folder was not named, it is the one
    ``make train`` makes."""
    if not run_dir.is_dir():
        if default:
            raise DeployError(f"{run_dir} does not exist: it is the folder of the run `make "
                              "train` makes (the default config); run that first, or name a "
                              "run's folder: make deploy RUN=outputs/<experiment>/<run name>")
        raise DeployError(f"{run_dir} does not exist: pass a run's folder, e.g. "
                          "outputs/<experiment>/<run name> (the path `make train` prints after "
                          "`results in`)")
    path = RunFolder(run_dir).config_path
    if not path.exists():
        raise DeployError(f"{run_dir} has no {RunFolder.CONFIG}: pass a run's folder (a run made "
                          f"before runs wrote one gets it when its command is run again: it "
                          f"resumes from its last checkpoint)")
    return OmegaConf.load(path)


def meta_model(run_dir: Path, cfg: DictConfig) -> dict:
    """The state of the run's own last checkpoint, or (MetaSNIP) of the meta-model it adapted,
    which must be the one the run recorded (``meta_checkpoint_fingerprint``)."""
    adapted = cfg.method.get("meta_checkpoint")
    path = Path(adapted or RunFolder(run_dir).checkpoint_path)
    if not path.exists():
        raise DeployError(f"{path} is missing: finish (or resume) the run first")
    state = read_state_dict(path)
    if adapted and cfg.get(META_MODEL_KEY) != (found := state_fingerprint(state)):
        raise DeployError(
            f"{path} holds another meta-model than {run_dir} adapted ({META_MODEL_KEY}: "
            f"{cfg.get(META_MODEL_KEY, NOT_RECORDED)} -> {found}): put back the checkpoint the "
            f"run adapted (a folder made before runs recorded it: python -m mglightning.migrate "
            f"{run_dir} --apply)")
    return state


def deploy(run_dir: Path, target: int, default: bool = False) -> Deployment:
    cfg = run_config(run_dir, default)
    state = meta_model(run_dir, cfg)  # before the data loads: fail fast
    datamodule = build_datamodule(cfg)
    loaded = data_fingerprint(datamodule.data.images, datamodule.data.labels)
    if cfg.get(DATA_KEY) != loaded:
        raise DeployError(
            f"{run_dir} was made on other data than data_root={cfg.data_root} holds now "
            f"({DATA_KEY}: {cfg.get(DATA_KEY, NOT_RECORDED)} -> {loaded}): put the run's data "
            "there (a folder made before runs recorded their data: python -m "
            f"mglightning.migrate {run_dir} --apply)")
    clients = datamodule.target_clients
    if not 0 <= target < len(clients):
        raise DeployError(f"--target {target}: the run has target nodes 0..{len(clients) - 1}")
    learner = build_learner(cfg, datamodule)
    learner.load_state_dict(state)
    adapter = build_adapter(cfg)
    adapter.set_meta_network(learner.meta_network())
    client = clients[target]
    network, _, _ = adapter.adapt(client)
    rows = torch.cat([client.support_idx, client.query_idx])
    images, labels = client.data.batch(rows)
    module = RawImageInput(task_network(network, images), client.data.mean, client.data.std)
    package = compile_package(module, client.data.images[rows])
    with torch.no_grad():
        expected = network.forward_with_masks(images, sliced=True).logits.argmax(1)
        predicted = load_package(package)(client.data.images[rows]).argmax(1)
    if not torch.equal(predicted, expected):
        raise RuntimeError(f"the export disagrees with the adapted network on "
                           f"{int((predicted != expected).sum())} of {len(rows)} images: nothing "
                           f"saved (a bug: please report it with this run's {RunFolder.CONFIG})")
    query = slice(len(client.support_idx), None)
    return Deployment(package, metadata(
        run_dir, cfg, target, client,
        accuracy=float((predicted[query] == labels[query]).float().mean()),
        parameters=sum(p.numel() for p in module.parameters()),
        gated_parameters=sum(p.numel() for p in network.parameters()),
    ))


def metadata(run_dir: Path, cfg: DictConfig, target: int, client: ClientDataModule,
             accuracy: float, parameters: int, gated_parameters: int) -> dict:
    """What a user of the saved module needs and cannot read from it."""
    data = client.data
    labels = data.labels[torch.cat([client.support_idx, client.query_idx])]
    classes = [{"id": label} if data.class_names is None
               else {"id": label, "name": data.class_names[label]}
               for label in sorted(set(labels.tolist()))]
    return {
        "run": {"dir": str(run_dir.resolve()), "name": cfg.run_name, "config": RunFolder.CONFIG,
                "fingerprint": fingerprint(cfg)},
        "target": target,
        "node_id": client.node_id,
        "classes": classes,
        "outputs": f"logits over the {data.num_classes} classes of {cfg.dataset.name}; "
                   "argmax is the class id",
        "input": {"dtype": "uint8", "shape": ["B", *data.shape], "range": [0, 255]},
        "normalization": {"mean": list(data.mean), "std": list(data.std),
                          "applied": "by the module: (images / 255 - mean) / std per channel"},
        "query_accuracy": accuracy,
        "query_images": len(client.query_idx),
        "parameters": parameters,
        "gated_network_parameters": gated_parameters,
        "format": "AOTInductor package: torch._inductor.aoti_load_package(path), for the CPU "
                  f"instruction set it was compiled on and torch {torch.__version__}",
    }


def default_run_dir() -> Path:
    """The folder of the run the default config makes (``make train``): its run name carries
    the config's fingerprint, so it is composed, not guessed."""
    return Path(compose_config().output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mglightning.deploy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, nargs="?",
                        help="a finished run's folder (default: the one `make train` makes)")
    parser.add_argument("--target", type=int, default=0, help="target node index (default 0)")
    parser.add_argument("--output", type=Path,
                        help="where to save (default RUN_DIR/deployed/target<N>.pt2)")
    args = parser.parse_args(argv)
    default = not args.run_dir  # `make deploy` with RUN empty passes none
    args.run_dir = default_run_dir() if default else args.run_dir
    try:
        deployment = deploy(args.run_dir, args.target, default)
    except (DeployError, DataError, ConfigError, NoCompilerError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    output = args.output or RunFolder(args.run_dir).deployed_path / f"target{args.target}.pt2"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(deployment.package)
    write_json(output.with_suffix(".json"), deployment.metadata)
    about = deployment.metadata
    print(f"target {args.target} (node {about['node_id']}): query accuracy "
          f"{100 * about['query_accuracy']:.2f} %, {about['parameters']} parameters "
          f"(adapted gated network: {about['gated_network_parameters']})")
    print(f"saved {output}: torch._inductor.aoti_load_package it and call it on uint8 images "
          f"(B, C, H, W); classes, normalization and source in {output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
