"""``python -m mglightning.deploy RUN_DIR --target N``: a finished run's network, adapted at
one target node and exported for deployment.

It rebuilds the run from its ``config.yaml`` (the same seeded partition, hence the same target
nodes), loads its meta-model, adapts it on target N's support set with the run's own rule
(SPEC §4), and exports it with :func:`mglightning.export.export_task_network`: channels the
gates switch off for every image of the node removed at rest. The saved module takes uint8
images (B, C, H, W) as the data set stores them and normalizes them itself; it is saved only if
it predicts exactly as the adapted network on all of the node's images.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mglightning.adaptation.module import FastAdaptation
from mglightning.config import RUN_CONFIG
from mglightning.data.datasets import DataError
from mglightning.export import export_task_network
from mglightning.train import build_datamodule, build_learner, build_network


class DeployError(ValueError):
    """A run folder or target that cannot be deployed; the message says what to change."""


class RawImageInput(nn.Module):
    """uint8 images (B, C, H, W) normalized exactly as ``ImageData.batch`` normalizes them (the
    equality check in :func:`deploy` holds it to that), then the task network."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.to(torch.float32).div(255.0).sub(self.mean).div(self.std))


@dataclass
class Deployment:
    """The exported module and what a reader wants to know about it."""

    module: torch.jit.ScriptModule
    node_id: int
    accuracy: float  # on the node's query set
    parameters: int
    gated_parameters: int  # the adapted gated network's


def run_config(run_dir: Path) -> DictConfig:
    path = run_dir / RUN_CONFIG
    if not path.exists():
        raise DeployError(f"{run_dir} has no {RUN_CONFIG}: pass a run's folder (a run made "
                          f"before runs wrote one gets it when its command is run again: it "
                          f"resumes from its last checkpoint)")
    return OmegaConf.load(path)


def meta_checkpoint(run_dir: Path, cfg: DictConfig) -> Path:
    """The run's own last checkpoint, or (MetaSNIP) the meta-model it adapted."""
    path = Path(cfg.method.get("meta_checkpoint") or run_dir / "checkpoints" / "last.ckpt")
    if not path.exists():
        raise DeployError(f"{path} is missing: finish (or resume) the run first")
    return path


def deploy(run_dir: Path, target: int) -> Deployment:
    cfg = run_config(run_dir)
    checkpoint = meta_checkpoint(run_dir, cfg)  # before the data loads: fail fast
    datamodule = build_datamodule(cfg)
    clients = datamodule.target_clients
    if not 0 <= target < len(clients):
        raise DeployError(f"--target {target}: the run has target nodes 0..{len(clients) - 1}")
    learner = build_learner(cfg, build_network(cfg, datamodule))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    learner.load_state_dict(state["state_dict"])
    adapter = FastAdaptation(**cfg.method.adaptation)
    adapter.set_meta_network(learner.meta_network())
    client = clients[target]
    network, _, _ = adapter.adapt(client)
    rows = torch.cat([client.support_idx, client.query_idx])
    images, labels = client.data.batch(rows)
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; it still works
        warnings.simplefilter("ignore", FutureWarning)
        task_network = export_task_network(network, images)
        module = torch.jit.script(RawImageInput(task_network, client.data.mean, client.data.std))
    with torch.no_grad():
        expected = network.forward_with_masks(images, sliced=True).logits.argmax(1)
        predicted = module(client.data.images[rows]).argmax(1)
    if not torch.equal(predicted, expected):
        raise RuntimeError(f"the export disagrees with the adapted network on "
                           f"{int((predicted != expected).sum())} of {len(rows)} images: nothing "
                           f"saved (a bug: please report it with this run's config.yaml)")
    query = slice(len(client.support_idx), None)
    return Deployment(
        module=module,
        node_id=client.node_id,
        accuracy=float((predicted[query] == labels[query]).float().mean()),
        parameters=sum(p.numel() for p in module.parameters()),
        gated_parameters=sum(p.numel() for p in network.parameters()),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mglightning.deploy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run's folder")
    parser.add_argument("--target", type=int, default=0, help="target node index (default 0)")
    parser.add_argument("--output", type=Path,
                        help="where to save (default RUN_DIR/deployed/target<N>.pt)")
    args = parser.parse_args(argv)
    try:
        deployment = deploy(args.run_dir, args.target)
    except (DeployError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    output = args.output or args.run_dir / "deployed" / f"target{args.target}.pt"
    output.parent.mkdir(parents=True, exist_ok=True)
    deployment.module.save(str(output))
    print(f"target {args.target} (node {deployment.node_id}): query accuracy "
          f"{100 * deployment.accuracy:.2f} %, {deployment.parameters} parameters "
          f"(adapted gated network: {deployment.gated_parameters})")
    print(f"saved {output}: torch.jit.load it and call it on uint8 images (B, C, H, W)")


if __name__ == "__main__":
    main()
