"""Checks of keys against each other, once every key is valid on its own.

K and the fault-injected nodes against the training nodes (which the partition config and the
seed fix without loading data), the gated layers against the backbone's layers, and the
Trainer arguments that the run sets itself. Whether a partition fits the data set's classes
and samples is the partitioner's own check, after loading
(:class:`~mglightning.data.partition.PartitionError`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from mglightning.config.rules import lookup, show
from mglightning.constraints import integer_list
from mglightning.data.datamodule import node_split
from mglightning.data.partition import PartitionError
from mglightning.targets import LABEL_KEY, import_target

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


def cross_key_problems(values: Mapping) -> Iterator[str]:
    """Every problem of keys against each other, in a config whose keys are each valid."""
    yield from clients_against_nodes(values)
    yield from backbone_layers(values)
    yield from set_by_run(values)


def clients_against_nodes(values: Mapping) -> Iterator[str]:
    """K and the fault-injected nodes must be among the training nodes (METHOD.md §2, §3), by the
    data module's own split and check (:func:`~mglightning.data.datamodule.node_split`), where
    the config fixes the node count; a natural partition's count comes with its data, and the
    data module checks K then."""
    found, num_nodes = lookup(values, "dataset.partition.num_nodes")
    if not found or num_nodes is None:
        return
    try:
        train_ids, _ = node_split(num_nodes, lookup(values, "dataset.num_target_nodes")[1] or 0,
                                  values["seed"], values["method"]["clients_per_round"])
    except PartitionError as error:
        yield str(error)
        return
    injected = lookup(values, "faults.inject.clients")[1] or []
    not_training = sorted(set(injected) - set(train_ids))
    if not_training:
        yield (f"faults.inject.clients={injected}: nodes {not_training} are not training "
               f"nodes; the training nodes are {train_ids}")


def backbone_layers(values: Mapping) -> Iterator[str]:
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


def set_by_run(values: Mapping) -> Iterator[str]:
    for key in sorted(set(values.get("trainer") or {}) & set(TRAINER_ARGS_SET_BY_RUN)):
        yield (f"trainer.{key}={show(values['trainer'][key])}: the run sets this Trainer "
               f"argument itself ({TRAINER_ARGS_SET_BY_RUN[key]})")
