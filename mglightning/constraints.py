"""What a config value may be, stated once, beside the parameter that takes it.

A class or function built from a ``_target_`` node annotates a parameter with its rule,
``gamma: Annotated[float, number(at_least=0)]``; the config walker
(:func:`mglightning.config.validate`) reads the rules from the annotations, so the class states
its ranges and does not check them again. Keys that no class takes (``rounds``, ``seed``) keep
their rules in :data:`mglightning.config.rules.RULES`.
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


def parameter_rules(target: Callable) -> dict[str, Rule]:
    """``{parameter: rule}`` from the ``Annotated`` hints of a class's constructor (a dataclass's
    fields), a function, or a callable object's ``__call__``."""
    annotated = target
    if isinstance(target, type):
        annotated = target if hasattr(target, "__dataclass_fields__") else target.__init__
    elif not hasattr(target, "__code__"):  # a callable object, not a function
        annotated = type(target).__call__
    hints = typing.get_type_hints(annotated, include_extras=True)
    return {
        name: rule
        for name, hint in hints.items()
        for rule in getattr(hint, "__metadata__", ())
        if isinstance(rule, Rule)
    }
