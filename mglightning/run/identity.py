"""A run's identity: every config value that changes its results, and a short fingerprint of it.

Two configs with the same identity produce the same results (at a fixed thread count), so a
run folder may be resumed or reused only by a config of the same identity. Everything else —
where a run writes and logs, how often it checkpoints, whether it shows a progress bar, the
devices it runs on — is left out, so that changing it never starts a new run. Run names carry
the fingerprint (``<dataset>-<model>-<method>-seed<s>-<fingerprint>``, see ``conf/train.yaml``),
so a changed hyperparameter always gets a folder of its own.

Only what a run reads is its identity (:func:`unread_keys`): a run without gates
(``method.gating: false``, or a model with no ``gated_layers``) reads none of the gates' keys
(:data:`GATE_KEYS`: their shape, τ, noise, step sizes and the regularizer h(φ) over their
parameters, SPEC §1, §3); so tuning MetaGater's gates never redoes a baseline's run, whose
results it cannot change.

The pooled data a run loads is part of its identity too, but it is known only once the data
set is loaded, after the run name is composed: :func:`data_fingerprint` hashes the pooled
images and labels, and the run folder records it beside its config and refuses data of another
fingerprint (:class:`mglightning.run.folder.RunFolder`). A changed data set is never reused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
from collections.abc import Mapping

import torch
from omegaconf import DictConfig, OmegaConf

# Top-level keys that never change a run's results.
NON_IDENTITY_KEYS = frozenset({
    "output_root", "output_dir", "run_name", "experiment", "logger", "progress_bar", "resume",
    "reevaluate", "checkpoint", "data_root", "trainer", "hydra", "reproduce",
})
# The data fingerprint a run folder records in its config.yaml (see the module docstring): a
# config composed before the data loads lacks it, so the name's fingerprint leaves it out.
DATA_KEY = "data_fingerprint"
# What only gates read (SPEC §1, §3); a run without gates leaves them out of its identity.
GATE_KEYS = (
    "model.gated_layers", "model.gate_hidden", "model.temperature", "model.gate_bias_init",
    "method.gate_noise", "method.temperature_end", "method.local.gate_lr", "method.regularizer",
    "method.adaptation.gate_lr", "method.adaptation.stage1_steps",
    "method.local.sparsity_off", "method.local.sparsity_weight", "method.local.gate_loss",
)
# The sparsity budget (SPEC §7), read only when it is set: a run without it leaves both keys
# out, so the runs made before the budget existed keep their fingerprints.
BUDGET_KEYS = ("method.local.sparsity_off", "method.local.sparsity_weight")
# A gate loss (METHOD.md §7), likewise: left out while null (off).
GATE_LOSS_KEY = "method.local.gate_loss"
FINGERPRINT_LENGTH = 8
_DATA_FINGERPRINTS: dict[int, str] = {}  # id of a loaded images tensor → its data fingerprint


def identity(config: DictConfig | Mapping) -> dict:
    """The identity part of a config (resolved), as plain containers, without the keys the
    run does not read (:func:`unread_keys`)."""
    def plain(value):  # a sub-node resolves its interpolations against the whole config
        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
        return copy.deepcopy(value)  # the caller's mapping stays as it is

    excluded = NON_IDENTITY_KEYS | {DATA_KEY}
    values = {key: plain(config[key]) for key in config if key not in excluded}
    for dotted in unread_keys(values):
        *parents, leaf = dotted.split(".")
        node = values
        for parent in parents:
            node = node.get(parent) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            node.pop(leaf, None)
    return values


def unread_keys(values: Mapping) -> list[str]:
    """The dotted keys of a resolved config that its run never reads: :data:`GATE_KEYS` when
    the network has no gate (a gated run without h(φ) has ``regularizer: null``, no γ),
    :data:`BUDGET_KEYS` when no sparsity budget is set, and :data:`GATE_LOSS_KEY` when no
    gate loss is set."""
    method, model = values.get("method") or {}, values.get("model") or {}
    if not (method.get("gating", True) and model.get("gated_layers")):
        return list(GATE_KEYS)
    local = method.get("local") or {}
    unread = list(BUDGET_KEYS) if local.get("sparsity_off") is None else []
    return unread + ([GATE_LOSS_KEY] if local.get("gate_loss") is None else [])


def fingerprint(config: DictConfig | Mapping) -> str:
    """A short, stable hash of :func:`identity`: equal configs, equal fingerprints."""
    text = json.dumps(identity(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A hash of the pooled data set's bytes (SPEC §2: images and labels, train and test
    pooled), computed once per loaded tensor: 55 MB of Fashion-MNIST hash in about 0.1 s."""
    if id(images) not in _DATA_FINGERPRINTS:
        digest = hashlib.sha256()
        for tensor in (images, labels):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
        _DATA_FINGERPRINTS[id(images)] = digest.hexdigest()[:FINGERPRINT_LENGTH]
        weakref.finalize(images, _DATA_FINGERPRINTS.pop, id(images), None)
    return _DATA_FINGERPRINTS[id(images)]


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
