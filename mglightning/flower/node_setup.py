"""What a training node needs of the run's config, resolved by the ServerApp and sent to it.

A SuperNode starts a fresh ClientApp process for every message, so whatever that process
imports is paid once a message and a round: composing the config (Hydra) and validating it
(which reaches Lightning) cost seconds, the local solve a fraction of one. So the ClientApp
composes nothing: the ServerApp composes the config once, and every train message carries the
resolved part a node reads (Flower's ``train_config``, :mod:`.protocol`): what names and cuts
its shard, builds its network and local solver, and sets its rounds' gate noise and τ
(SPEC §1, §3 step 3). The node builds these with torch alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class NodeSetup:
    """The resolved config of a training node, plain JSON values only."""

    seed: int
    rounds: int
    data_root: str | None  # the node resolves it (``$MG_DATA_DIR``, the user cache) itself
    dataset: dict  # the ``dataset`` group: names the node's shard, and cuts it the first time
    data: str  # the fingerprint of the pooled data the ServerApp loaded: keys the node's shard
    network: dict  # ``model`` with its ``_target_``, the gates as the method has them
    local_solver: dict  # ``method.local``, with its ``_target_``
    gate_noise: str  # ``method.gate_noise``
    temperature_end: float | None  # ``method.temperature_end``
    faults: dict  # ``faults.inject``

    @classmethod
    def from_config(cls, cfg: DictConfig, data: str) -> NodeSetup:
        """The node's part of the composed config ``cfg`` (the ServerApp's side), as
        :func:`mglightning.build.build_learner` builds the learner from it, and ``data``, the
        :func:`~mglightning.run.identity.data_fingerprint` of the data the ServerApp loaded."""
        def plain(node) -> dict:
            return OmegaConf.to_container(node, resolve=True)

        return cls(
            seed=int(cfg.seed),
            rounds=int(cfg.rounds),
            data_root=cfg.data_root,
            dataset=plain(cfg.dataset),
            data=data,
            network=plain(cfg.model) | {
                "gated_layers": list(cfg.model.gated_layers) if cfg.method.gating else []},
            local_solver=plain(cfg.method.local),
            gate_noise=cfg.method.get("gate_noise", "none"),
            temperature_end=cfg.method.get("temperature_end"),
            faults=plain(cfg.faults.inject),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeSetup:
        return cls(**json.loads(text))
