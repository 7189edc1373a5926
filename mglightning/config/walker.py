"""The walk over a composed config, every key once, each against where its rule comes from.

* A key of a ``_target_`` node (backbone, data set loader, partitioner, local solver, server
  step, regularizer, adaptation rule, logger): one of the keyword parameters of what it names,
  within the ``Annotated`` rule beside that parameter (:mod:`mglightning.constraints`).
  ``name`` is the part's label; a null option is unset (:func:`mglightning.targets.bind`); a
  positional-only parameter is the caller's (a data set's ``data_root``), never a key.
* A key of a node passed to a fixed callable (:data:`SIGNATURE_NODES`: ``trainer``): the same.
* Any other key: known and typed by the config files (:func:`~.files.known_kinds`), or
  declared by a rule (:data:`~.rules.RULES`, checked by :func:`~.rules.out_of_range`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Mapping

from mglightning.config.files import kind_of, options_with
from mglightning.config.rules import RULES, show
from mglightning.constraints import Rule, parameter_rules
from mglightning.errors import one_line
from mglightning.targets import LABEL_KEY, TARGET_KEY, import_target

# Nodes passed as keyword arguments to a fixed callable, checked like ``_target_`` nodes.
SIGNATURE_NODES = {"trainer": "lightning.pytorch.Trainer"}
TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "mapping": "a mapping",
}
# Parameters a config key cannot set: the caller passes them by position, or gathers the rest.
NOT_KEYS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD)


def walk(values: Mapping, known: Mapping[str, set[str]], prefix: str = "",
         root: Mapping | None = None) -> Iterator[str]:
    """A problem for each key of ``values`` (at ``prefix`` in the config ``root``; default:
    ``values`` is the whole config) that is unknown, mistyped or out of its parameter's
    range."""
    root = values if root is None else root
    target_name = values.get(TARGET_KEY) or SIGNATURE_NODES.get(prefix.rstrip("."))
    if target_name:
        yield from _target_node(values, target_name, known, prefix, root)
        return
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path not in known and path not in RULES:
            yield _unknown_key(path, value, known, root)
        elif path not in RULES and not _kind_allowed(value, known[path]):
            yield _mistyped(path, value, known[path])
        elif isinstance(value, dict):
            yield from walk(value, known, f"{path}.", root)


def _target_node(values: Mapping, target_name: str, known: Mapping[str, set[str]],
                 prefix: str, root: Mapping) -> Iterator[str]:
    """A node whose keys are passed to ``target_name``: each must be one of its keyword
    parameters (a null one is unset, its default) and within the rule annotated on it."""
    try:
        target = import_target(target_name)
        signature = inspect.signature(target).parameters
        rules = parameter_rules(target)
    except (ImportError, AttributeError, ValueError, TypeError, NameError) as error:
        yield (f"{prefix}{TARGET_KEY}={target_name!r}: must name an importable class or "
               f"function ({one_line(error)})")
        return
    parameters = {name: parameter for name, parameter in signature.items()
                  if parameter.kind not in NOT_KEYS}
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD
                    for parameter in signature.values())
    is_part = TARGET_KEY in values
    not_passed = {TARGET_KEY} | ({LABEL_KEY} if is_part else set())  # a label's rule: RULES
    for key, value in values.items():
        if key not in not_passed:
            yield from _parameter_key(key, value, target_name, parameters, rules, known,
                                      prefix, root, takes_any, null_is_unset=is_part)


def _parameter_key(key: str, value, target_name: str,
                   parameters: Mapping[str, inspect.Parameter], rules: Mapping[str, Rule],
                   known: Mapping[str, set[str]], prefix: str, root: Mapping,
                   takes_any: bool, null_is_unset: bool) -> Iterator[str]:
    """The problems of one key of a node passed to ``target_name``."""
    path = f"{prefix}{key}"
    if key not in parameters:
        if takes_any or (value is None and null_is_unset):
            return
        if path in known:  # an option of another part of this group
            yield f"{path}={show(value)}: {target_name} does not take it; set it to null"
        else:
            names = [name for name in parameters if name != "self"]
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            yield (f"unknown key {path}={show(value)}{hint}: {target_name} takes "
                   f"{', '.join(names) or 'no keys'}")
        return
    if value is None and parameters[key].default is not inspect.Parameter.empty:
        return  # unset: the parameter's default
    if key in rules:
        if not rules[key].check(value):
            yield f"{path}={show(value)}: must be {rules[key].allowed}"
    elif path in known and not _kind_allowed(value, known[path]):
        yield _mistyped(path, value, known[path])
    elif isinstance(value, dict):
        yield from walk(value, known, f"{path}.", root)


def _mistyped(path: str, value, kinds: set[str]) -> str:
    expected = " or ".join(sorted(TYPE_WORDS[kind] for kind in kinds if kind in TYPE_WORDS))
    return f"{path}={show(value)}: must be {expected}"


def _unknown_key(path: str, value, known: Mapping[str, set[str]], root: Mapping) -> str:
    parent, _, name = path.rpartition(".")
    siblings = sorted({key.rpartition(".")[2] for key in [*known, *RULES]
                       if key.rpartition(".")[0] == parent})
    if parent and not siblings:  # under a node that holds no keys here (null in this option)
        return f"unknown key {path}={show(value)}: {_keyless_node(path, parent, root)}"
    where = f"under {parent}" if parent else "at the top level"
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key {path}={show(value)}{hint}: allowed {where} are {', '.join(siblings)}"


def _keyless_node(path: str, parent: str, root: Mapping) -> str:
    """Why ``parent`` takes no keys: it is null (or a value) in the group option chosen, and
    which options of that group have ``path``."""
    group, _, within = parent.partition(".")
    node = root.get(group)
    choice = node.get(LABEL_KEY) if isinstance(node, Mapping) else None
    if not within or not isinstance(choice, str):
        return f"{parent} takes no keys"
    having = options_with(group, path)
    use = f" (use {group}={' or '.join(having)})" if having else ""
    return f"{group}={choice} has no {within}{use}"


def _kind_allowed(value, kinds: set[str]) -> bool:
    """A value of the kind a config file gives the key; ints stand for floats; null is open,
    and a node may be null (a part switched off: ``method.regularizer=null``)."""
    kind = kind_of(value)
    return not kinds or "null" in kinds or "any" in kinds or kind in kinds or (
        kind == "int" and "float" in kinds) or (kind == "null" and "mapping" in kinds)
