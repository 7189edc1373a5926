"""A run's identity: every config value that changes its results, and a short fingerprint of it.

Two configs with the same identity produce the same results (at a fixed thread count), so a
run folder may be resumed or reused only by a config of the same identity. Everything else —
where a run writes and logs, how often it checkpoints, whether it shows a progress bar, the
devices it runs on — is left out, so that changing it never starts a new run. Run names carry
the fingerprint (``<dataset>-<model>-<method>-seed<s>-<fingerprint>``, see ``conf/train.yaml``),
so a changed hyperparameter always gets a folder of its own.

Only what a run reads is its identity (:func:`unread_keys`), and each part declares what it
reads beside its parameters, in the ``Annotated`` metadata that holds their rules
(:mod:`mglightning.constraints`; keys that no class takes, such as ``method.gate_noise``, in
:data:`KEY_DECLARATIONS`):

* ``GATES_ONLY``: read only when the network has gates. A run without gates
  (``method.gating: false``, or a model with no ``gated_layers``) leaves such keys out (the
  gates' shape, τ, noise, step sizes and the regularizer h(φ) over their parameters, METHOD.md
  §1, §3); so tuning MetaGater's gates never redoes a baseline's run, whose results it cannot
  change.
* ``neutral(value, *siblings)``: not read at its neutral, "off" ``value``, and then neither are
  the sibling keys named (``sparsity_off: ... neutral(None, "sparsity_weight")``, METHOD.md §7).
  This is how a new key keeps the fingerprints of the runs made before it existed: give it a
  default that changes nothing, and declare that default neutral beside the parameter,
  ``width: Annotated[float, number(above=0), neutral(1.0)] = 1.0`` (a whole ``_target_`` node
  switched off: ``neutral(None)``).

An option of a ``_target_`` node that its target does not take is unread too: null, it stays
unset (:func:`mglightning.targets.bind`), as ``gate_lr: null`` in the adaptation rule of a
method without gates; set, the config walker refuses it.

Every file a run reads is part of its identity too, but what a file holds is known only once
it is read, after the run name is composed; so the run folder records a fingerprint of each
beside its config and refuses a file of another fingerprint
(:class:`mglightning.run.folder.RunFolder`), and a changed input is never reused
(:func:`input_fingerprints`): the pooled data set (:func:`data_fingerprint` of its images and
labels: a data set downloaded again, or one's own data at ``dataset.source.path``), and the
meta-model a run adapts instead of training (MetaSNIP's ``method.meta_checkpoint``,
:func:`state_fingerprint` of its state). A run's own checkpoint is its record, not an input.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache

import torch
from omegaconf import DictConfig, OmegaConf

from mglightning.constraints import (
    GATES_ONLY,
    GatesOnly,
    IdentityDeclaration,
    Neutral,
    parameter_declarations,
)
from mglightning.targets import LABEL_KEY, TARGET_KEY, import_target

# Top-level keys that never change a run's results.
NON_IDENTITY_KEYS = frozenset({
    "output_root", "output_dir", "run_name", "experiment", "logger", "progress_bar", "resume",
    "reevaluate", "checkpoint", "data_root", "trainer", "hydra", "reproduce",
})
# When a run reads the keys that no class takes (their rules: mglightning.config.rules); a
# part declares its own beside its parameters.
KEY_DECLARATIONS: dict[str, tuple[IdentityDeclaration, ...]] = {
    "method.gate_noise": (GATES_ONLY,),
    "method.temperature_end": (GATES_ONLY,),
    "method.regularizer": (GATES_ONLY,),  # h(φ) over the gate parameters
}
# The fingerprints of its inputs a run folder records in its config.yaml (module docstring):
# a config composed before anything is read lacks them, so the name's fingerprint leaves them out.
DATA_KEY = "data_fingerprint"
META_MODEL_KEY = "meta_checkpoint_fingerprint"
INPUT_KEYS = (DATA_KEY, META_MODEL_KEY)
FINGERPRINT_LENGTH = 8
_DATA_FINGERPRINTS: dict[int, str] = {}  # id of a loaded images tensor → its data fingerprint


def identity(config: DictConfig | Mapping) -> dict:
    """The identity part of a config (resolved), as plain containers, without the keys the
    run does not read (:func:`unread_keys`)."""
    def plain(value):  # a sub-node resolves its interpolations against the whole config
        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
        return copy.deepcopy(value)  # the caller's mapping stays as it is

    excluded = NON_IDENTITY_KEYS | set(INPUT_KEYS)
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
    """The dotted keys of a resolved config that its run never reads (module docstring): the
    ``GATES_ONLY`` keys when the network has no gate, the ``neutral`` keys at their neutral
    value with their siblings, and the options a part does not take."""
    method, model = values.get("method") or {}, values.get("model") or {}
    has_gates = bool(method.get("gating", True) and model.get("gated_layers"))
    unread = []
    for dotted, value, declarations in declared_keys(values):
        parent = dotted.rpartition(".")[0]
        for declaration in declarations:
            if isinstance(declaration, GatesOnly) and not has_gates:
                unread.append(dotted)
            elif isinstance(declaration, Neutral) and value == declaration.value:
                unread += [dotted, *(f"{parent}.{key}".lstrip(".") for key in declaration.unread)]
    return unread + list(untaken_keys(values))


def declared_keys(values: Mapping, prefix: str = ""
                  ) -> Iterator[tuple[str, object, tuple[IdentityDeclaration, ...]]]:
    """(dotted key, value, its identity declarations) for every key of ``values`` that has
    any: those its ``_target_`` declares beside the parameter, and those of
    :data:`KEY_DECLARATIONS`."""
    target = _target_parameters(values.get(TARGET_KEY))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        declarations = (*KEY_DECLARATIONS.get(dotted, ()),
                        *(target.declarations.get(key, ()) if target else ()))
        if declarations:
            yield dotted, value, declarations
        if isinstance(value, Mapping):
            yield from declared_keys(value, f"{dotted}.")


def untaken_keys(values: Mapping, prefix: str = "") -> Iterator[str]:
    """The dotted keys of options that their ``_target_`` does not take."""
    target = _target_parameters(values.get(TARGET_KEY))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if target is not None and not target.takes(key):
            yield dotted
        elif isinstance(value, Mapping):
            yield from untaken_keys(value, f"{dotted}.")


@dataclass(frozen=True)
class _TargetParameters:
    """What a ``_target_`` takes (``takes_any``: ``**options``), and the identity
    declarations beside its parameters."""

    names: frozenset[str]
    takes_any: bool
    declarations: dict[str, tuple[IdentityDeclaration, ...]]

    def takes(self, key: str) -> bool:
        return self.takes_any or key in self.names or key in (TARGET_KEY, LABEL_KEY)


@cache
def _target_parameters(target_name: str | None) -> _TargetParameters | None:
    """None for no target, or one that cannot be imported (the config walker reports it)."""
    if not isinstance(target_name, str):
        return None
    try:
        target = import_target(target_name)
        parameters = inspect.signature(target).parameters
        declarations = parameter_declarations(target)
    except (ImportError, AttributeError, ValueError, TypeError, NameError):
        return None
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD
                    for parameter in parameters.values())
    return _TargetParameters(frozenset(parameters), takes_any, declarations)


def fingerprint(config: DictConfig | Mapping) -> str:
    """A short, stable hash of :func:`identity`: equal configs, equal fingerprints."""
    return digest(identity(config))


def digest(values: Mapping) -> str:
    """A short, stable hash of plain values (of :data:`FINGERPRINT_LENGTH` hex digits)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def input_fingerprints(images: torch.Tensor, labels: torch.Tensor,
                       meta_model: Mapping[str, torch.Tensor] | None = None) -> dict[str, str]:
    """What a run folder records of the run's inputs (module docstring): the pooled data's
    fingerprint, and the meta-model's where the run adapts one (``meta_model``: its state)."""
    fingerprints = {DATA_KEY: data_fingerprint(images, labels)}
    if meta_model is not None:
        fingerprints[META_MODEL_KEY] = state_fingerprint(meta_model)
    return fingerprints


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A hash of the pooled data set's bytes (METHOD.md §2: images and labels, train and test
    pooled), computed once per loaded tensor; hashing costs little next to loading."""
    if id(images) not in _DATA_FINGERPRINTS:
        _DATA_FINGERPRINTS[id(images)] = tensors_digest([images, labels])
        weakref.finalize(images, _DATA_FINGERPRINTS.pop, id(images), None)
    return _DATA_FINGERPRINTS[id(images)]


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names and tensors: what loading it gives, whatever else the
    file around it holds (a Lightning checkpoint's loop and callback states)."""
    names = sorted(state)
    return tensors_digest([state[name] for name in names], header=json.dumps(names))


def tensors_digest(tensors: list[torch.Tensor], header: str = "") -> str:
    """A short hash of tensors' dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256(header.encode())
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


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
    """``${mg.fingerprint:}`` in a config resolves to the fingerprint of its root; registered
    by :mod:`mglightning.config`, whence every config is composed."""
    if not OmegaConf.has_resolver("mg.fingerprint"):
        OmegaConf.register_new_resolver(
            "mg.fingerprint", lambda *, _root_: fingerprint(_root_), use_cache=False
        )
