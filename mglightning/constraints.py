"""What a config value may be, and when a run reads it, stated once, beside the parameter.

A class or function built from a ``_target_`` node annotates a parameter with its rule,
``gamma: Annotated[float, number(at_least=0)]``; the config walker
(:func:`mglightning.config.validate`) reads the rules from the annotations, so the class states
its ranges and does not check them again. Keys that no class takes (``rounds``, ``seed``) keep
their rules in :data:`mglightning.config.rules.RULES`.

Beside the rule, a parameter may declare when a run does not read it, so that a run's identity
leaves it out (:mod:`mglightning.run.identity`): :data:`GATES_ONLY` (read only when the network
has gates) and :func:`neutral` (not read at its neutral, "off" value).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
           below: float | None = None, at_most: float | None = None) -> Rule:
    """A number in an interval (no bound: any number)."""
    bounds = [f"> {above}" if above is not None else "",
              f">= {at_least}" if at_least is not None else "",
              f"< {below}" if below is not None else "",
              f"<= {at_most}" if at_most is not None else ""]
    return Rule(
        lambda value: _is_number(value)
        and (above is None or value > above)
        and (at_least is None or value >= at_least)
        and (below is None or value < below)
        and (at_most is None or value <= at_most),
        " ".join(["a number", " and ".join(bound for bound in bounds if bound)]).strip(),
    )


def optional(rule: Rule) -> Rule:
    """``rule``, or null (the option's documented default)."""
    return Rule(lambda value: value is None or rule.check(value), f"{rule.allowed} or null")


def one_of(*choices) -> Rule:
    return Rule(lambda value: value in choices, f"one of {list(choices)}")


def boolean() -> Rule:
    return Rule(lambda value: isinstance(value, bool), "true or false")


def string() -> Rule:
    return Rule(lambda value: isinstance(value, str), "a string")


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


def integer_range(minimum: int) -> Rule:
    """``[min, max]``: two integers with ``minimum <= min <= max`` (an inclusive range)."""
    return Rule(
        lambda value: integer_list(minimum, length=2).check(value) and value[0] <= value[1],
        f"[min, max] with {minimum} <= min <= max",
    )


@dataclass(frozen=True)
class GatesOnly:
    """Identity declaration: the key is read only when the network has gates; a run without
    gates leaves it out of its identity."""


GATES_ONLY = GatesOnly()


@dataclass(frozen=True)
class Neutral:
    """Identity declaration: at ``value`` the key is off, and a run leaves it out of its
    identity, with the sibling keys ``unread`` (keys of the same node, read only when it is
    on). Configs made before the key existed keep their fingerprints."""

    value: Any
    unread: tuple[str, ...] = ()


def neutral(value, *unread: str) -> Neutral:
    """``sparsity_off: Annotated[float | None, ..., neutral(None, "sparsity_weight")]``."""
    return Neutral(value, unread)


IdentityDeclaration = GatesOnly | Neutral


def parameter_metadata(target: Callable) -> dict[str, tuple]:
    """``{parameter: its Annotated metadata}`` from the hints of a class's constructor (a
    dataclass's fields), a function, or a callable object's ``__call__``."""
    annotated = target
    if isinstance(target, type):
        annotated = target if hasattr(target, "__dataclass_fields__") else target.__init__
    elif not hasattr(target, "__code__"):  # a callable object, not a function
        annotated = type(target).__call__
    hints = typing.get_type_hints(annotated, include_extras=True)
    return {name: tuple(getattr(hint, "__metadata__", ())) for name, hint in hints.items()}


def parameter_rules(target: Callable) -> dict[str, Rule]:
    """``{parameter: rule}`` of ``target`` (:func:`parameter_metadata`)."""
    return {name: rule for name, metadata in parameter_metadata(target).items()
            for rule in metadata if isinstance(rule, Rule)}


def parameter_declarations(target: Callable) -> dict[str, tuple[IdentityDeclaration, ...]]:
    """``{parameter: its identity declarations}`` of ``target`` (:func:`parameter_metadata`)."""
    declarations = {name: tuple(item for item in metadata
                                if isinstance(item, GatesOnly | Neutral))
                    for name, metadata in parameter_metadata(target).items()}
    return {name: declared for name, declared in declarations.items() if declared}
