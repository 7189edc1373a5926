"""The ranges and choices of the keys that no ``_target_`` takes, and their check.

A part states its ranges beside its parameters (:mod:`mglightning.constraints`); the keys here
are read by the run itself (``rounds``, ``seed``) or by the data module (``dataset.batch_size``).
A rule also declares its key known; when a run reads such a key, for its identity, is declared
in :data:`mglightning.run.identity.KEY_DECLARATIONS`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mglightning.constraints import (
    Rule,
    boolean,
    integer,
    integer_list,
    number,
    one_of,
    optional,
    string,
)
from mglightning.federated.faults import FAULT_KINDS
from mglightning.federated.schedules import GATE_NOISE_SCALES

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
    "dataset.name": string(),
    "dataset.batch_size": integer(1),
    "dataset.support_fraction": number(above=0, below=1),
    "dataset.num_target_nodes": integer(0),
    "model.name": string(),
    "method.name": string(),
    "method.gating": boolean(),
    "method.clients_per_round": integer(1),
    "method.gate_noise": one_of(*GATE_NOISE_SCALES),
    "method.temperature_end": optional(number(above=0)),
    "logger.name": string(),
}


def out_of_range(values: Mapping) -> Iterator[str]:
    """A problem for each key of :data:`RULES` whose value its rule refuses."""
    for path, rule in RULES.items():
        found, value = lookup(values, path)
        if found and not rule.check(value):
            yield f"{path}={show(value)}: must be {rule.allowed}"


def lookup(values: Mapping, path: str) -> tuple[bool, Any]:
    """(found, value) at a dotted ``path`` of a resolved config."""
    node = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def show(value) -> str:
    """A value as a message shows it: a string quoted, anything else as written."""
    return repr(value) if isinstance(value, str) else str(value)
