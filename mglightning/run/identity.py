"""A run's identity: every config value that changes its results, and a short fingerprint of it.

Two configs with the same identity produce the same results (at a fixed thread count), so a
run folder may be resumed or reused only by a config of the same identity. Everything else —
where a run writes and logs, how often it checkpoints, whether it shows a progress bar, the
devices it runs on — is left out, so that changing it never starts a new run. Run names carry
the fingerprint (``<dataset>-<model>-<method>-seed<s>-<fingerprint>``, see ``conf/train.yaml``),
so a changed hyperparameter always gets a folder of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

# Top-level keys that never change a run's results.
NON_IDENTITY_KEYS = frozenset({
    "output_root", "output_dir", "run_name", "experiment", "logger", "progress_bar", "resume",
    "reevaluate", "checkpoint", "data_root", "trainer", "hydra", "reproduce",
})
FINGERPRINT_LENGTH = 8


def identity(config: DictConfig | Mapping) -> dict:
    """The identity part of a config (resolved), as plain containers."""
    def plain(value):  # a sub-node resolves its interpolations against the whole config
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    if isinstance(config, DictConfig):
        return {key: plain(config[key]) for key in config if key not in NON_IDENTITY_KEYS}
    return {key: value for key, value in config.items() if key not in NON_IDENTITY_KEYS}


def fingerprint(config: DictConfig | Mapping) -> str:
    """A short, stable hash of :func:`identity`: equal configs, equal fingerprints."""
    text = json.dumps(identity(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def flatten(node: Mapping, prefix: str = "") -> dict:
    """``{"method.server.beta": 2.0, ...}``: nested mappings as one level of dotted keys."""
    flat: dict = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{path}.")
        else:
            flat[path] = value
    return flat


def differing_keys(stored: DictConfig | Mapping, current: DictConfig | Mapping) -> list[str]:
    """The dotted identity keys whose values differ between two configs, each as
    ``key: stored -> current`` (a key one of them lacks shows as ``<absent>``)."""
    old, new = flatten(identity(stored)), flatten(identity(current))
    absent = "<absent>"
    return [
        f"{key}: {old.get(key, absent)} -> {new.get(key, absent)}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, absent) != new.get(key, absent)
    ]


def register_resolver() -> None:
    """``${mg.fingerprint:}`` in a config resolves to the fingerprint of its root."""
    if not OmegaConf.has_resolver("mg.fingerprint"):
        OmegaConf.register_new_resolver(
            "mg.fingerprint", lambda *, _root_: fingerprint(_root_), use_cache=False
        )


register_resolver()
