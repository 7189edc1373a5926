"""Config validation before any work starts: unknown keys, wrong types, out-of-range values.

Every problem ends in one :class:`ConfigError` whose one-line message names the key, the value
and what is allowed; ``python -m mglightning.train`` prints it without a traceback.

Where the rules come from, so that a new method or data set needs no edit here:

* known keys and their types: the config files themselves. A key is known when some option
  file of its group (``conf/<group>/*.yaml``) or ``conf/train.yaml`` has it; its type is the
  type it has there (an integer may stand for a float; a ``null`` default takes anything).
* keys of a ``_target_`` node: the parameters of the class it names.
* ranges and choices: the :data:`RULES` table below (a rule also declares its key known).

Hydra itself already rejects ``key=value`` for a key the composed config lacks; this catches
what Hydra lets through: ``+key=value``, keys an experiment file adds, types, ranges, and K
and the fault-injected nodes against the training nodes (which the partition config and the
seed fix without loading data). Whether a partition fits the data set's classes and samples
is the partitioner's own check, after loading (:class:`~mglightning.data.partition.PartitionError`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mglightning.adaptation.module import ADAPTERS
from mglightning.data.datamodule import node_split
from mglightning.data.datasets import DATASET_NAMES
from mglightning.data.partition import PARTITIONER_KEYS, SIZE_DISTRIBUTIONS
from mglightning.federated.faults import FAULT_KINDS
from mglightning.federated.local import HESSIAN_PRODUCTS
from mglightning.federated.schedules import GATE_NOISE_SCALES
from mglightning.models.backbones import BACKBONES

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RUN_CONFIG = "config.yaml"  # the resolved config a run folder was made with
# Keys Hydra's instantiate reads itself, never passed to the target.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Nodes passed as keyword arguments to a fixed callable, checked like ``_target_`` nodes.
SIGNATURE_NODES = {"trainer": "lightning.pytorch.Trainer"}
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


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the remedy."""


@dataclass(frozen=True)
class Rule:
    """What a key accepts: ``check(value)`` and, for the message, ``allowed`` in words."""

    check: Callable[[Any], bool]
    allowed: str


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(minimum: int) -> Rule:
    return Rule(lambda value: _is_int(value) and value >= minimum, f"an integer >= {minimum}")


def number(above: float | None = None, at_least: float | None = None,
           below: float | None = None) -> Rule:
    """A number in an open or half-open interval."""
    bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None
              else "", f"< {below}" if below is not None else ""]
    return Rule(
        lambda value: _is_number(value)
        and (above is None or value > above)
        and (at_least is None or value >= at_least)
        and (below is None or value < below),
        "a number " + " and ".join(bound for bound in bounds if bound),
    )


def optional(rule: Rule) -> Rule:
    """``rule``, or null (the option's documented default)."""
    return Rule(lambda value: value is None or rule.check(value), f"{rule.allowed} or null")


def one_of(*choices) -> Rule:
    return Rule(lambda value: value in choices, f"one of {list(choices)}")


def integer_list(minimum: int, length: int | None = None, nullable: bool = False) -> Rule:
    """A list of integers >= ``minimum`` (of exactly ``length`` items when given)."""
    sized = f"{length} " if length is not None else ""
    allowed = f"a list of {sized}integers >= {minimum}" + (" or null" if nullable else "")
    return Rule(
        lambda value: (nullable and value is None)
        or (isinstance(value, list) and (length is None or len(value) == length)
            and all(_is_int(item) and item >= minimum for item in value)),
        allowed,
    )


SIZE_RANGE = Rule(
    lambda value: integer_list(1, length=2).check(value) and value[0] <= value[1],
    "[min, max] with 1 <= min <= max",
)

# Ranges and choices. A method or data set with new keys adds its lines here.
RULES: dict[str, Rule] = {
    "seed": integer(0),
    "deterministic": one_of(False, True, "warn"),
    "rounds": integer(1),
    "eval_every": integer(0),
    "checkpoint.every_n_rounds": integer(1),
    "faults.max_failed_rounds": integer(1),
    "faults.inject.clients": integer_list(0),
    "faults.inject.kind": one_of(*FAULT_KINDS),
    "faults.inject.rounds": integer_list(1, nullable=True),
    "dataset.name": one_of(*DATASET_NAMES),
    "dataset.batch_size": integer(1),
    "dataset.support_fraction": number(above=0, below=1),
    "dataset.partition.name": one_of(*PARTITIONER_KEYS),
    "dataset.partition.num_nodes": integer(1),
    "dataset.partition.num_target_nodes": integer(0),
    "dataset.partition.classes_per_node": integer(1),
    "dataset.partition.size_range": SIZE_RANGE,
    "dataset.partition.size_distribution": one_of(*SIZE_DISTRIBUTIONS),
    "dataset.partition.alpha": number(above=0),
    "dataset.synthetic.num_classes": integer(2),
    "dataset.synthetic.samples_per_class": integer(1),
    "dataset.synthetic.shape": integer_list(1, length=3),
    "dataset.synthetic.seed": integer(0),
    "model.name": one_of(*BACKBONES),
    "model.gated_layers": integer_list(1),
    "model.gate_hidden": integer(1),
    "model.temperature": number(above=0),
    "model.gate_bias_init": optional(Rule(_is_number, "a number")),
    "method.clients_per_round": integer(1),
    "method.gate_noise": one_of(*GATE_NOISE_SCALES),
    "method.temperature_end": optional(number(above=0)),
    "method.local.steps": integer(1),
    "method.local.lr": number(above=0),
    "method.local.prox_lambda": number(at_least=0),
    "method.local.gate_lr": optional(number(at_least=0)),
    "method.local.batch_size": integer(1),
    "method.local.hessian": one_of(*HESSIAN_PRODUCTS),
    "method.local.delta": number(above=0),
    "method.server.prox_lambda": number(at_least=0),
    "method.server.beta": number(above=0),
    "method.server.c": number(at_least=0),
    "method.regularizer.name": one_of("group_lasso", "l1", "none"),
    "method.regularizer.gamma": number(at_least=0),
    "method.adaptation.rule": one_of(*ADAPTERS),
    "method.adaptation.lr": number(above=0),
    "method.adaptation.gate_lr": optional(number(at_least=0)),
    "method.adaptation.stage1_steps": optional(integer(1)),
    "method.adaptation.layers": integer_list(1),
    "logger.name": one_of("wandb", "csv", "none"),
    "logger.mode": one_of(None, "online", "offline", "disabled"),
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
        *_unknown_and_mistyped(values, reference_kinds(), ""),
        *_out_of_range(values),
        *_backbone_layers(values),
        *_adaptation_options(values),
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
        raise ConfigError(f"{key}: cannot be resolved ({_one_line(error)})") from error


def _unknown_and_mistyped(
    values: Mapping, known: Mapping[str, set[str]], prefix: str
) -> Iterator[str]:
    """Walk the config against the known keys and their kinds; ``_target_`` nodes (and
    :data:`SIGNATURE_NODES`) by the signature of the callable they are passed to."""
    target = values.get("_target_") or SIGNATURE_NODES.get(prefix.rstrip("."))
    if target:
        yield from _target_parameters(values, target, prefix)
    for key, value in values.items():
        path = f"{prefix}{key}"
        if target and key in INSTANTIATE_KEYS:
            continue
        if path not in known and path not in RULES:
            if not target:  # else reported by _target_parameters
                yield _unknown_key(path, value, known)
            continue
        if path not in RULES and not _kind_allowed(value, known[path]):
            expected = " or ".join(sorted(TYPE_WORDS[kind] for kind in known[path]
                                          if kind in TYPE_WORDS))
            yield f"{path}={_show(value)}: must be {expected}"
        elif isinstance(value, dict):
            yield from _unknown_and_mistyped(value, known, f"{path}.")


def _unknown_key(path: str, value, known: Mapping[str, set[str]]) -> str:
    parent, _, name = path.rpartition(".")
    siblings = sorted({key.rpartition(".")[2] for key in [*known, *RULES]
                       if key.rpartition(".")[0] == parent})
    where = f"under {parent}" if parent else "at the top level"
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key {path}={_show(value)}{hint}: allowed {where} are {', '.join(siblings)}"


def _target_parameters(values: Mapping, target_name: str, prefix: str) -> Iterator[str]:
    """The keys of a node passed to a callable must be parameters of that callable."""
    try:
        target = _import_target(target_name)
    except (ImportError, AttributeError, ValueError) as error:
        yield (f"{prefix}_target_={target_name!r}: must name an importable class or "
               f"function ({_one_line(error)})")
        return
    parameters = inspect.signature(target).parameters
    if any(param.kind is inspect.Parameter.VAR_KEYWORD for param in parameters.values()):
        return
    names = [name for name in parameters if name != "self"]
    for key in sorted(set(values) - INSTANTIATE_KEYS - set(names)):
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        yield (f"unknown key {prefix}{key}={_show(values[key])}{hint}: {target_name} takes "
               f"{', '.join(names)}")


def _import_target(dotted_name: str):
    module_name, _, attribute = str(dotted_name).rpartition(".")
    if not module_name:
        raise ValueError("not a dotted path")
    return getattr(importlib.import_module(module_name), attribute)


def _kind_allowed(value, kinds: set[str]) -> bool:
    """A value of the kind a config file gives the key; ints stand for floats; null is open."""
    kind = _kind(value)
    return not kinds or "null" in kinds or "any" in kinds or kind in kinds or (
        kind == "int" and "float" in kinds)


def _out_of_range(values: Mapping) -> Iterator[str]:
    for path, rule in RULES.items():
        found, value = _lookup(values, path)
        if found and not rule.check(value):
            yield f"{path}={_show(value)}: must be {rule.allowed}"


def _clients_against_nodes(values: Mapping) -> Iterator[str]:
    """K and the fault-injected nodes must be among the training nodes (SPEC §2, §3); the
    split is the data module's own (:func:`~mglightning.data.datamodule.node_split`)."""
    keys = ("seed", "dataset.partition.num_nodes", "dataset.partition.num_target_nodes",
            "method.clients_per_round", "faults.inject.clients")
    looked_up = [_lookup(values, key) for key in keys]
    if not all(found and RULES[key].check(value)
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


def _set_by_run(values: Mapping) -> Iterator[str]:
    for key in sorted(set(values.get("trainer") or {}) & set(TRAINER_ARGS_SET_BY_RUN)):
        yield (f"trainer.{key}={_show(values['trainer'][key])}: the run sets this Trainer "
               f"argument itself ({TRAINER_ARGS_SET_BY_RUN[key]})")


def _backbone_layers(values: Mapping) -> Iterator[str]:
    """Gated layers must exist in the chosen backbone (1-based; the head is never gated)."""
    model = values.get("model") or {}
    layers = BACKBONES.get(model.get("name"))
    gated = model.get("gated_layers")
    if layers is None or not integer_list(1).check(gated):
        return
    missing = [layer for layer in gated if layer > len(layers)]
    if missing:
        yield (f"model.gated_layers={gated}: {model['name']} has layers 1..{len(layers)}, "
               f"not {missing}")


def _adaptation_options(values: Mapping) -> Iterator[str]:
    """An adaptation option that is set (not null) must be one its rule takes."""
    adaptation = (values.get("method") or {}).get("adaptation") or {}
    rule = ADAPTERS.get(adaptation.get("rule"))
    if rule is None:
        return
    takes = inspect.signature(rule).parameters
    for key, value in adaptation.items():
        if key != "rule" and value is not None and key not in takes:
            yield (f"method.adaptation.{key}={_show(value)}: the {adaptation['rule']} rule does "
                   f"not take it; set it to null")


def _lookup(values: Mapping, path: str) -> tuple[bool, Any]:
    node = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


@cache
def reference_kinds() -> dict[str, set[str]]:
    """``{dotted key: kinds of its value}`` from conf/train.yaml and every option file of the
    groups its defaults list composes (their union: any option's key is known)."""
    kinds: dict[str, set[str]] = {}
    train = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml"), resolve=False)
    for group in _node_groups(train.pop("defaults", [])):
        kinds[group] = {"mapping"}
        for option_file in sorted((CONF_DIR / group).glob("*.yaml")):
            option = OmegaConf.to_container(OmegaConf.load(option_file), resolve=False)
            option.pop("defaults", None)
            _collect_kinds(option, f"{group}.", kinds)
    train.pop("hydra", None)
    _collect_kinds(train, "", kinds)
    return kinds


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


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
