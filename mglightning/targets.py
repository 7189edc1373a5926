"""``_target_`` nodes of the config: what they name, and that with their options bound.

One reading for the config walker (:mod:`mglightning.config`), a run's identity
(:mod:`mglightning.run.identity`), the learner's factories (:mod:`mglightning.build`) and the
node builder (:mod:`mglightning.federated.training_node`), which builds a node's network and
solver without Hydra: a Flower SuperNode starts its process per message.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping

from mglightning.errors import ConfigError

TARGET_KEY = "_target_"
LABEL_KEY = "name"  # beside a _target_: the part's label (run names, tables), not passed


def import_target(dotted_name: str):
    """What a ``_target_`` names: a module attribute, or an attribute of one (a class's
    ``for_network``)."""
    parts = str(dotted_name).split(".")
    if len(parts) < 2:
        raise ValueError("not a dotted path")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            if split == 1:
                raise
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted_name)


def bind(node: Mapping) -> Callable:
    """A resolved ``_target_`` node as its target with the node's options bound; the caller
    passes what the config cannot hold (shapes, the network). ``name`` is the part's label
    (run names, tables), not an option; a null option is unset, the target's default (a
    method that inherits another's node nulls the options its own target does not take, as
    ``conf/method/metagater_nogate.yaml``)."""
    dotted_name = node.get(TARGET_KEY)
    try:
        target = import_target(dotted_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"_target_={dotted_name!r}: must name an importable class or "
                          f"function ({error})") from error
    options = {key: value for key, value in node.items()
               if key not in (TARGET_KEY, LABEL_KEY) and value is not None}
    return functools.partial(target, **options)
