"""Config validation before any work starts: unknown keys, wrong types, out-of-range values.

Every problem ends in one :class:`ConfigError` whose one-line message names the key, the value
and what is allowed; ``python -m mglightning.train`` prints it without a traceback.

:func:`validate` walks the composed tree once. Where its rules come from, so that a new method,
part or data set needs no edit here:

* keys of a ``_target_`` node (backbone, local solver, server step, regularizer, adaptation
  rule, logger): the parameters of what it names, and their ranges from the ``Annotated``
  rules beside them (:mod:`mglightning.constraints`). ``name`` is the part's label; a null
  option is unset (:func:`mglightning.build.build_part`).
* keys of a part whose label picks its class from a registry (:data:`REGISTRY_NODES`:
  ``dataset.partition.name=natural``): the same, against the chosen class's config keys, and
  each required key must be set.
* other keys and their types: the config files. A key of a group (``method.*``) is known when
  the chosen option file (with the files it extends) has it, so a method's key is refused
  under another method; a key's type is the type it has there (an integer may stand for a
  float; a ``null`` default takes anything). Keys outside the groups: ``conf/train.yaml``.
* ranges of keys that no class takes: the :data:`RULES` table below (a rule also declares its
  key known); when a run reads them, for its identity (:mod:`mglightning.run.identity`):
  :data:`IDENTITY_DECLARATIONS`, as a part declares it beside its parameters.

Hydra itself already rejects ``key=value`` for a key the composed config lacks; this catches
what Hydra lets through: ``+key=value``, keys an experiment file adds, types, ranges, and K
and the fault-injected nodes against the training nodes (which the partition config and the
seed fix without loading data). Whether a partition fits the data set's classes and samples
is the partitioner's own check, after loading (:class:`~mglightning.data.partition.PartitionError`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mglightning.constraints import (
    GATES_ONLY,
    IdentityDeclaration,
    Rule,
    boolean,
    integer,
    integer_list,
    number,
    one_of,
    optional,
    parameter_rules,
    string,
)
from mglightning.data.datamodule import node_split
from mglightning.data.datasets import DATASET_NAMES
from mglightning.data.partition import NODES_FROM_DATA, PARTITIONER_KEYS, PARTITIONERS
from mglightning.errors import ConfigError, one_line
from mglightning.federated.faults import FAULT_KINDS
from mglightning.federated.schedules import GATE_NOISE_SCALES
from mglightning.targets import LABEL_KEY, TARGET_KEY, import_target

# The configs: inside the package where a wheel put them (setup.py ships conf/ as
# mglightning/conf), else the top-level conf/ of a source checkout or an editable install.
PACKAGED_CONF_DIR = Path(str(resources.files("mglightning") / "conf"))
SOURCE_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONF_DIR = PACKAGED_CONF_DIR if PACKAGED_CONF_DIR.is_dir() else SOURCE_CONF_DIR
RUN_CONFIG = "config.yaml"  # the resolved config a run folder was made with
# Nodes passed as keyword arguments to a fixed callable, checked like ``_target_`` nodes.
SIGNATURE_NODES = {"trainer": "lightning.pytorch.Trainer"}
# Parts whose label picks their class from a registry, checked like ``_target_`` nodes against
# the chosen class: node → (classes by label, each class's config keys). A key that another
# class of the registry takes is not read, and passes: switching the label on the command
# line (``dataset.partition.name=natural``) keeps the old class's keys.
REGISTRY_NODES = {"dataset.partition": (PARTITIONERS, PARTITIONER_KEYS)}
# Trainer arguments that ``train.run`` sets itself, and what to set instead.
TRAINER_ARGS_SET_BY_RUN = {
    "max_epochs": "set rounds",
    "logger": "choose logger=wandb, csv or none",
    "enable_progress_bar": "set progress_bar",
    "default_root_dir": "set output_dir",
    "callbacks": "fixed by the run",
    "enable_model_summary": "fixed by the run",
    "num_sanity_val_steps": "fixed by the run",
    "plugins": "fixed by the run",
    "strategy": "set by the run: trainer.devices > 1 splits each round's clients across processes",
    "use_distributed_sampler": "fixed by the run",
    "inference_mode": "fixed by the run",
}
# Top-level blocks that belong to other entry points (which check them), and Hydra's own node
# (present when composed with return_hydra_config=True).
IGNORED_TOP_KEYS = {"hydra", "reproduce"}


# ``${not:${deterministic}}`` in conf/train.yaml: cudnn autotuning on unless deterministic.
OmegaConf.register_new_resolver("not", lambda value: not value, replace=True)

# Ranges and choices of the keys that no ``_target_`` takes. A data set with new keys adds
# its lines here; a part states its ranges beside its parameters.
RULES: dict[str, Rule] = {
    "seed": integer(0),
    "experiment": string(),
    "run_name": string(),
    "output_root": string(),
    "output_dir": string(),
    "data_root": optional(string()),
    "deterministic": one_of(False, True, "warn"),
    "rounds": integer(1),
    "eval_every": integer(0),
    "resume": boolean(),
    "reevaluate": boolean(),
    "progress_bar": boolean(),
    "checkpoint.every_n_rounds": integer(1),
    "faults.max_failed_rounds": integer(1),
    "faults.inject.clients": integer_list(0),
    "faults.inject.kind": one_of(*FAULT_KINDS),
    "faults.inject.rounds": integer_list(1, nullable=True),
    "dataset.name": one_of(*DATASET_NAMES),
    "dataset.download": boolean(),
    "dataset.batch_size": integer(1),
    "dataset.support_fraction": number(above=0, below=1),
    "dataset.partition.name": one_of(*PARTITIONERS),
    "dataset.partition.num_target_nodes": integer(0),  # read by the train/target node split
    "dataset.synthetic.num_classes": integer(2),
    "dataset.synthetic.samples_per_class": integer(1),
    "dataset.synthetic.shape": integer_list(1, length=3),
    "dataset.synthetic.seed": integer(0),
    "model.name": string(),
    "method.name": string(),
    "method.gating": boolean(),
    "method.clients_per_round": integer(1),
    "method.gate_noise": one_of(*GATE_NOISE_SCALES),
    "method.temperature_end": optional(number(above=0)),
    "logger.name": string(),
}
# When a run reads the keys that no class takes, for its identity (mglightning.run.identity);
# a part declares its own beside its parameters (mglightning.constraints: GATES_ONLY, neutral).
IDENTITY_DECLARATIONS: dict[str, tuple[IdentityDeclaration, ...]] = {
    "method.gate_noise": (GATES_ONLY,),
    "method.temperature_end": (GATES_ONLY,),
    "method.regularizer": (GATES_ONLY,),  # h(φ) over the gate parameters
}

TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "mapping": "a mapping",
}


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every problem of a composed train config on one line;
    return silently when every key is known, typed and in range."""
    values = _resolved(cfg)
    problems = [
        *_walk(values, known_kinds(values), ""),
        *_out_of_range(values),
        *_backbone_layers(values),
        *_set_by_run(values),
        *_clients_against_nodes(values),
    ]
    if problems:
        raise ConfigError("; ".join(problems))


def _resolved(cfg: DictConfig) -> dict:
    checked = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in IGNORED_TOP_KEYS])
    try:
        return OmegaConf.to_container(checked, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"{key}: cannot be resolved ({one_line(error)})") from error


def _walk(values: Mapping, known: Mapping[str, set[str]], prefix: str) -> Iterator[str]:
    """Every key once: those of a ``_target_`` node (and of :data:`SIGNATURE_NODES` and
    :data:`REGISTRY_NODES`) against the parameters of the callable they are passed to and the
    rules beside them; any other
    key against the keys and kinds of the config files."""
    node = prefix.rstrip(".")
    if node in REGISTRY_NODES:
        yield from _registry_node(values, *REGISTRY_NODES[node], known, prefix)
        return
    target_name = values.get("_target_") or SIGNATURE_NODES.get(node)
    if target_name:
        yield from _target_node(values, target_name, known, prefix)
        return
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path not in known and path not in RULES:
            yield _unknown_key(path, value, known)
        elif path not in RULES and not _kind_allowed(value, known[path]):
            yield _mistyped(path, value, known[path])
        elif isinstance(value, dict):
            yield from _walk(value, known, f"{path}.")


def _target_node(values: Mapping, target_name: str, known: Mapping[str, set[str]],
                 prefix: str) -> Iterator[str]:
    """A node whose keys are passed to ``target_name``: each must be one of its parameters
    (a null one is unset, its default) and within the rule annotated on it."""
    try:
        target = import_target(target_name)
        parameters = inspect.signature(target).parameters
        rules = parameter_rules(target)
    except (ImportError, AttributeError, ValueError, TypeError, NameError) as error:
        yield (f"{prefix}_target_={target_name!r}: must name an importable class or "
               f"function ({one_line(error)})")
        return
    is_part = "_target_" in values
    not_passed = {TARGET_KEY} | ({LABEL_KEY} if is_part else set())  # a label's rule: RULES
    yield from _parameter_keys(values, target_name, parameters, rules, known, prefix,
                               not_passed, null_is_unset=is_part)


def _registry_node(values: Mapping, classes: Mapping[str, type],
                   config_keys: Mapping[str, set[str]], known: Mapping[str, set[str]],
                   prefix: str) -> Iterator[str]:
    """A node whose ``name`` picks its class from ``classes``: each key one of the class's
    config keys (or of another class, not read; or declared by a rule), each required one set,
    each within the rule annotated on it. An unknown name is the label's rule's to report."""
    label = values.get(LABEL_KEY)
    chosen = classes.get(label) if isinstance(label, str) else None
    if chosen is None:
        return
    keys = config_keys[label]
    parameters = {name: parameter
                  for name, parameter in inspect.signature(chosen).parameters.items()
                  if name in keys}
    missing = [name for name, parameter in parameters.items()
               if parameter.default is inspect.Parameter.empty and values.get(name) is None]
    if missing:
        yield (f"{prefix}{LABEL_KEY}={label} needs "
               f"{', '.join(f'{prefix}{name}' for name in missing)}")
    other_classes_keys = set().union(*config_keys.values()) - keys
    declared = {key for key in values if f"{prefix}{key}" in RULES}
    not_passed = {LABEL_KEY, *missing, *other_classes_keys, *declared}
    target_name = f"{chosen.__module__}.{chosen.__qualname__}"
    yield from _parameter_keys(values, target_name, parameters, parameter_rules(chosen), known,
                               prefix, not_passed, null_is_unset=True)


def _parameter_keys(values: Mapping, target_name: str,
                    parameters: Mapping[str, inspect.Parameter], rules: Mapping[str, Rule],
                    known: Mapping[str, set[str]], prefix: str, not_passed: set[str],
                    null_is_unset: bool) -> Iterator[str]:
    """The keys of a node passed to ``target_name`` but ``not_passed``, against its
    ``parameters`` and their ``rules``."""
    takes_any = any(param.kind is inspect.Parameter.VAR_KEYWORD for param in parameters.values())
    names = [name for name in parameters if name != "self"]
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key in not_passed:
            continue
        if key not in parameters:
            if takes_any or (value is None and null_is_unset):
                continue
            if path in known:  # an option of another part of this group
                yield (f"{path}={_show(value)}: {target_name} does not take it; "
                       f"set it to null")
            else:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                yield (f"unknown key {path}={_show(value)}{hint}: {target_name} takes "
                       f"{', '.join(names)}")
            continue
        if value is None and parameters[key].default is not inspect.Parameter.empty:
            continue  # unset: the parameter's default
        if key in rules:
            if not rules[key].check(value):
                yield f"{path}={_show(value)}: must be {rules[key].allowed}"
        elif path in known and not _kind_allowed(value, known[path]):
            yield _mistyped(path, value, known[path])
        elif isinstance(value, dict):
            yield from _walk(value, known, f"{path}.")


def _mistyped(path: str, value, kinds: set[str]) -> str:
    expected = " or ".join(sorted(TYPE_WORDS[kind] for kind in kinds if kind in TYPE_WORDS))
    return f"{path}={_show(value)}: must be {expected}"


def _unknown_key(path: str, value, known: Mapping[str, set[str]]) -> str:
    parent, _, name = path.rpartition(".")
    siblings = sorted({key.rpartition(".")[2] for key in [*known, *RULES]
                       if key.rpartition(".")[0] == parent})
    where = f"under {parent}" if parent else "at the top level"
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key {path}={_show(value)}{hint}: allowed {where} are {', '.join(siblings)}"


def _kind_allowed(value, kinds: set[str]) -> bool:
    """A value of the kind a config file gives the key; ints stand for floats; null is open,
    and a node may be null (a part switched off: ``method.regularizer=null``)."""
    kind = _kind(value)
    return not kinds or "null" in kinds or "any" in kinds or kind in kinds or (
        kind == "int" and "float" in kinds) or (kind == "null" and "mapping" in kinds)


def _out_of_range(values: Mapping) -> Iterator[str]:
    for path, rule in RULES.items():
        found, value = _lookup(values, path)
        if found and not rule.check(value):
            yield f"{path}={_show(value)}: must be {rule.allowed}"


def _clients_against_nodes(values: Mapping) -> Iterator[str]:
    """K and the fault-injected nodes must be among the training nodes (SPEC §2, §3); the
    split is the data module's own (:func:`~mglightning.data.datamodule.node_split`)."""
    if _lookup(values, "dataset.partition.name")[1] in NODES_FROM_DATA:
        return  # the data give the node count: the data module checks K once they are loaded
    keys = ("seed", "dataset.partition.num_nodes", "dataset.partition.num_target_nodes",
            "method.clients_per_round", "faults.inject.clients")
    looked_up = [_lookup(values, key) for key in keys]
    rules = RULES | _registry_rules(values)
    if not all(found and key in rules and rules[key].check(value)
               for key, (found, value) in zip(keys, looked_up, strict=True)):
        return  # a missing key or a bad value is reported by the other checks
    seed, num_nodes, num_targets, clients_per_round, injected = (value for _, value in looked_up)
    if num_targets >= num_nodes:
        yield (f"dataset.partition.num_target_nodes={num_targets}: must be less than "
               f"dataset.partition.num_nodes={num_nodes}, so that a training node remains")
        return
    train_ids, _ = node_split(values["dataset"]["partition"], seed)
    if clients_per_round > len(train_ids):
        yield (f"method.clients_per_round={clients_per_round}: must be at most the "
               f"{len(train_ids)} training nodes (dataset.partition.num_nodes={num_nodes} minus "
               f"num_target_nodes={num_targets})")
    not_training = sorted(set(injected) - set(train_ids))
    if not_training:
        yield (f"faults.inject.clients={injected}: nodes {not_training} are not training "
               f"nodes; the training nodes are {train_ids}")


def _registry_rules(values: Mapping) -> dict[str, Rule]:
    """``{dotted key: rule}`` annotated on the classes that the labels of the registry nodes
    pick."""
    rules = {}
    for node, (classes, _) in REGISTRY_NODES.items():
        label = _lookup(values, f"{node}.{LABEL_KEY}")[1]
        chosen = classes.get(label) if isinstance(label, str) else None
        if chosen is not None:
            rules |= {f"{node}.{key}": rule for key, rule in parameter_rules(chosen).items()}
    return rules


def _set_by_run(values: Mapping) -> Iterator[str]:
    for key in sorted(set(values.get("trainer") or {}) & set(TRAINER_ARGS_SET_BY_RUN)):
        yield (f"trainer.{key}={_show(values['trainer'][key])}: the run sets this Trainer "
               f"argument itself ({TRAINER_ARGS_SET_BY_RUN[key]})")


def _backbone_layers(values: Mapping) -> Iterator[str]:
    """Gated layers must exist in the chosen backbone (1-based; the head is never gated)."""
    model = values.get("model") or {}
    gated = model.get("gated_layers")
    try:
        layers = import_target(model.get("_target_")).layer_count(model)
    except (ImportError, AttributeError, ValueError, TypeError):
        return  # not a backbone: the walker names a bad _target_ or option
    if not integer_list(1).check(gated):
        return
    missing = [layer for layer in gated if layer > layers]
    if missing:
        yield (f"model.gated_layers={gated}: {model.get(LABEL_KEY)} has layers "
               f"1..{layers}, not {missing}")


def _lookup(values: Mapping, path: str) -> tuple[bool, Any]:
    node = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def known_kinds(values: Mapping) -> dict[str, set[str]]:
    """``{dotted key: kinds of its value}`` for this config: ``conf/train.yaml``'s keys, and
    for each group the keys of the chosen option (the option file named by the node's
    ``name``, with the files it extends); all options' keys where no file has that name."""
    kinds = dict(_train_kinds())
    for group in _groups():
        label = (values.get(group) or {}).get(LABEL_KEY) if isinstance(
            values.get(group), Mapping) else None
        option_file = CONF_DIR / group / f"{label}.yaml"
        if isinstance(label, str) and option_file.is_file():
            kinds |= _option_kinds(group, label)
        else:
            for option in sorted(CONF_DIR.joinpath(group).glob("*.yaml")):
                for key, option_kinds in _option_kinds(group, option.stem).items():
                    kinds.setdefault(key, set()).update(option_kinds)
    return kinds


@cache
def _groups() -> tuple[str, ...]:
    train = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml"), resolve=False)
    return tuple(_node_groups(train.get("defaults", [])))


@cache
def _train_kinds() -> dict[str, set[str]]:
    train = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml"), resolve=False)
    train.pop("defaults", None)
    train.pop("hydra", None)
    kinds = {group: {"mapping"} for group in _groups()}
    _collect_kinds(train, "", kinds)
    return kinds


@cache
def _option_kinds(group: str, option: str) -> dict[str, set[str]]:
    """The keys of ``conf/<group>/<option>.yaml`` and of the options it extends."""
    kinds: dict[str, set[str]] = {}
    tree = OmegaConf.to_container(_option_tree(group, option), resolve=False)
    _collect_kinds(tree, f"{group}.", kinds)
    return kinds


def _option_tree(group: str, option: str) -> DictConfig:
    """An option file with the files it extends merged under it, without its defaults list."""
    loaded = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    merged = OmegaConf.create()
    for base in loaded.get("defaults", []):
        if isinstance(base, str) and base != "_self_":
            merged = OmegaConf.merge(merged, _option_tree(group, base))
    own = OmegaConf.masked_copy(loaded, [key for key in loaded if key != "defaults"])
    return OmegaConf.merge(merged, own)


def _node_groups(defaults: list) -> list[str]:
    """Config groups of the defaults list that become a node (not ``_self_``, not the
    ``_global_`` experiment files, which only override)."""
    groups = []
    for entry in defaults:
        if isinstance(entry, Mapping):
            for key, choice in entry.items():
                if choice is not None:
                    groups.append(key.split()[-1])
    return groups


def _collect_kinds(node: Mapping, prefix: str, kinds: dict[str, set[str]]) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        kinds.setdefault(path, set()).add(_kind(value))
        if isinstance(value, dict):
            _collect_kinds(value, f"{path}.", kinds)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "any" if "${" in value else "str"  # an interpolation: its target is checked
    if isinstance(value, list):
        return "list"
    return "mapping"


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


