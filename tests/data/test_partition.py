"""Seeded partitioners and node splits (METHOD.md §2)."""

from __future__ import annotations

import pytest
import torch

from mglightning.build import compose_config
from mglightning.config import ConfigError, validate
from mglightning.constraints import parameter_rules
from mglightning.data.partition import (
    DirichletPartitioner,
    NaturalPartitioner,
    PartitionError,
    PathologicalPartitioner,
    split_support_query,
    split_train_target,
)
from mglightning.targets import bind

NUM_CLASSES = 10
SAMPLES_PER_CLASS = 500


@pytest.fixture
def labels() -> torch.Tensor:
    """Balanced labels in a seeded random order, like a pooled data set."""
    ordered = torch.arange(NUM_CLASSES).repeat_interleave(SAMPLES_PER_CLASS)
    return ordered[torch.randperm(len(ordered), generator=torch.Generator().manual_seed(0))]


def assert_disjoint(nodes: list[torch.Tensor]) -> None:
    everything = torch.cat(nodes)
    assert len(torch.unique(everything)) == len(everything)


@pytest.mark.parametrize("classes_per_node, seed", [(2, 0), (2, 1), (5, 2), (1, 3)])
def test_pathological_nodes_have_their_classes_and_sizes(labels, classes_per_node, seed):
    partitioner = PathologicalPartitioner(num_nodes=20, classes_per_node=classes_per_node,
                                          size_range=(50, 300))
    nodes = partitioner.partition(labels, NUM_CLASSES, seed=seed)
    assert len(nodes) == 20
    assert_disjoint(nodes)
    for node in nodes:
        assert node.dtype == torch.int64 and torch.equal(node, node.sort().values)
        assert 50 <= len(node) <= 300
        per_class = torch.bincount(labels[node], minlength=NUM_CLASSES)
        present = per_class[per_class > 0]
        assert len(present) == classes_per_node
        assert int(present.max() - present.min()) <= 1  # the size is split evenly


def test_pathological_is_seeded(labels):
    def nodes_for(seed: int) -> list[torch.Tensor]:
        partitioner = PathologicalPartitioner(num_nodes=10, classes_per_node=2,
                                              size_range=(50, 300))
        return partitioner.partition(labels, NUM_CLASSES, seed=seed)

    first, same, other = nodes_for(7), nodes_for(7), nodes_for(8)
    assert all(torch.equal(a, b) for a, b in zip(first, same, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_log_uniform_sizes_favour_small_nodes(labels):
    partitioner = PathologicalPartitioner(num_nodes=40, classes_per_node=2, size_range=(10, 200),
                                          size_distribution="log_uniform")
    sizes = torch.tensor([len(node) for node in partitioner.partition(labels, NUM_CLASSES,
                                                                      seed=0)])
    assert int(sizes.min()) >= 10 and int(sizes.max()) <= 200
    assert sizes.double().median() < (10 + 200) / 2


@pytest.mark.parametrize("seed", range(5))
def test_pathological_fits_a_paper_like_load(labels, seed):
    """The paper's MNIST setting scaled to this data set: 25 nodes of [1165, 3834] / 14,
    asking for ~89% of the samples on average."""
    partitioner = PathologicalPartitioner(num_nodes=25, classes_per_node=2,
                                          size_range=(83, 274))
    nodes = partitioner.partition(labels, NUM_CLASSES, seed=seed)
    assert_disjoint(nodes)
    assert all(len(labels[node].unique()) == 2 for node in nodes)


@pytest.mark.parametrize("settings, key", [
    (dict(num_nodes=5, classes_per_node=11, size_range=(20, 30)), "classes_per_node"),
    (dict(num_nodes=5, classes_per_node=5, size_range=(4, 20)), "size_range"),
    (dict(num_nodes=30, classes_per_node=2, size_range=(200, 300)), "num_nodes"),
    (dict(num_nodes=20, classes_per_node=2, size_range=(100, 1000)), "size_range"),
])
def test_impossible_pathological_partition_names_the_key(labels, settings, key):
    """What the config walker cannot see: the data's classes and samples, and a size range
    too small for one sample a class."""
    with pytest.raises(PartitionError, match=f"dataset.partition.{key}") as error:
        PathologicalPartitioner(**settings).partition(labels, NUM_CLASSES, seed=0)
    assert "\n" not in str(error.value)


def test_classes_too_small_for_any_node_share_raise():
    """The total fits, but only one class can supply a node's share: no silent short node."""
    skewed = torch.cat([torch.zeros(1000), torch.ones(10), torch.full((10,), 2)]).long()
    partitioner = PathologicalPartitioner(num_nodes=2, classes_per_node=2, size_range=(100, 100))
    with pytest.raises(PartitionError, match="dataset.partition.size_range"):
        partitioner.partition(skewed, 3, seed=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_dirichlet_nodes_are_disjoint_non_empty_and_use_everything(labels, seed):
    nodes = DirichletPartitioner(num_nodes=15, alpha=0.5).partition(labels, NUM_CLASSES,
                                                                    seed=seed)
    assert len(nodes) == 15 and min(len(node) for node in nodes) > 0
    assert_disjoint(nodes)
    assert sum(len(node) for node in nodes) == len(labels)


def test_dirichlet_is_seeded_and_capped_by_size_range(labels):
    def nodes_for(seed: int) -> list[torch.Tensor]:
        partitioner = DirichletPartitioner(num_nodes=8, alpha=1.0, size_range=(10, 40))
        return partitioner.partition(labels, NUM_CLASSES, seed=seed)

    first, same, other = nodes_for(3), nodes_for(3), nodes_for(4)
    assert all(torch.equal(a, b) for a, b in zip(first, same, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(1 <= len(node) <= 40 for node in first)
    assert_disjoint(first)


def test_dirichlet_alpha_controls_label_skew(labels):
    def mean_classes_per_node(alpha: float) -> float:
        nodes = DirichletPartitioner(num_nodes=10, alpha=alpha).partition(labels, NUM_CLASSES,
                                                                          seed=0)
        return sum(len(labels[node].unique()) for node in nodes) / len(nodes)

    assert mean_classes_per_node(0.1) < mean_classes_per_node(100.0)


def test_dirichlet_that_cannot_fill_every_node_names_alpha(labels):
    with pytest.raises(PartitionError, match="dataset.partition.alpha"):
        DirichletPartitioner(num_nodes=200, alpha=0.001).partition(labels, NUM_CLASSES, seed=0)


def test_dirichlet_min_size_redraws_small_nodes_and_one_is_the_default(labels):
    """min_size=1 is the old rule (no empty node), draw for draw; a larger one redraws until
    every node has that many."""
    default = DirichletPartitioner(num_nodes=40, alpha=0.2).partition(labels, NUM_CLASSES, seed=0)
    explicit = DirichletPartitioner(num_nodes=40, alpha=0.2, min_size=1).partition(
        labels, NUM_CLASSES, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit, strict=True))
    floor = min(len(node) for node in default) + 1  # a floor the first draw misses
    bigger = DirichletPartitioner(num_nodes=40, alpha=0.2, min_size=floor).partition(
        labels, NUM_CLASSES, seed=0)
    assert min(len(node) for node in bigger) >= floor
    assert_disjoint(bigger)


def test_dirichlet_min_size_beyond_the_data_names_it(labels):
    with pytest.raises(PartitionError, match="dataset.partition.min_size=200"):
        DirichletPartitioner(num_nodes=30, alpha=1.0, min_size=200).partition(
            labels, NUM_CLASSES, seed=0)


def test_natural_partition_keeps_each_samples_node():
    node_ids = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    nodes = NaturalPartitioner().partition(torch.zeros(7, dtype=torch.int64), 1, node_ids, seed=0)
    assert [node.tolist() for node in nodes] == [[1, 3], [2, 6], [0, 4, 5]]
    with pytest.raises(PartitionError, match="the natural partition needs data that say"):
        NaturalPartitioner().partition(torch.zeros(7, dtype=torch.int64), 1, seed=0)


def test_a_partition_node_builds_its_partitioner_with_its_fields():
    """A ``dataset.partition`` node is its ``_target_`` with the fields it sets; a null field
    is unset (the partitioner's default), and the seed is the caller's, at ``partition``."""
    node = {"_target_": "mglightning.data.partition.DirichletPartitioner", "num_nodes": 9,
            "alpha": 0.5, "size_range": None, "min_size": 10}
    assert bind(node)() == DirichletPartitioner(num_nodes=9, alpha=0.5, min_size=10)
    natural = {"_target_": "mglightning.data.partition.NaturalPartitioner", "num_nodes": None}
    assert bind(natural)() == NaturalPartitioner()


@pytest.mark.parametrize("num_nodes, num_target_nodes", [(10, 3), (5, 0), (7, 6)])
def test_train_and_target_nodes_split_all_nodes(num_nodes, num_target_nodes):
    train_nodes, target_nodes = split_train_target(num_nodes, num_target_nodes, seed=0)
    assert len(target_nodes) == num_target_nodes
    assert not set(train_nodes) & set(target_nodes)
    assert sorted(train_nodes + target_nodes) == list(range(num_nodes))


def test_train_target_split_is_seeded():
    assert split_train_target(50, 10, seed=1) == split_train_target(50, 10, seed=1)
    assert split_train_target(50, 10, seed=1) != split_train_target(50, 10, seed=2)


@pytest.mark.parametrize("num_target_nodes", [10, 11, -1])
def test_train_target_split_needs_a_training_node(num_target_nodes):
    with pytest.raises(PartitionError, match="dataset.num_target_nodes"):
        split_train_target(10, num_target_nodes, seed=0)


def test_support_query_split_partitions_the_node():
    indices = torch.arange(100, 300, 2)
    support, query = split_support_query(indices, 0.75, torch.Generator().manual_seed(0))
    assert len(support) == 75 and len(query) == 25
    assert torch.equal(torch.cat([support, query]).sort().values, indices)
    other_support, _ = split_support_query(indices, 0.75, torch.Generator().manual_seed(1))
    assert not torch.equal(support, other_support)


@pytest.mark.parametrize("size, fraction", [(1, 0.75), (10, 1.0), (10, 0.0), (3, 0.1)])
def test_support_query_split_needs_both_parts(size, fraction):
    with pytest.raises(PartitionError, match="dataset.support_fraction"):
        split_support_query(torch.arange(size), fraction, torch.Generator().manual_seed(0))


def partition_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert "\n" not in str(error.value)
    return str(error.value)


P = "mglightning.data.partition."
TO_PATHOLOGICAL = [f"dataset.partition._target_={P}PathologicalPartitioner",  # from Dirichlet
                   "dataset.partition.alpha=null", "dataset.partition.min_size=null",
                   "+dataset.partition.classes_per_node=2", "+dataset.partition.size_range=[20,40]"]


@pytest.mark.parametrize("overrides, expected", [
    ([f"dataset.partition._target_={P}Shards"],
     f"dataset.partition._target_='{P}Shards': must name an importable class or function"),
    (["dataset=arrays", f"dataset.partition._target_={P}PathologicalPartitioner"],
     f"dataset.partition.alpha=0.5: {P}PathologicalPartitioner does not take it; set it to null"),
    (["dataset=arrays", "+dataset.partition.alhpa=2.0"],
     "unknown key dataset.partition.alhpa=2.0 (did you mean alpha?): "
     f"{P}DirichletPartitioner takes num_nodes, alpha, size_range, min_size"),
    (["+dataset.partition.seed=3"], "unknown key dataset.partition.seed=3: "),  # the caller's
    (["dataset.partition.num_nodes=0"], "dataset.partition.num_nodes=0: must be an integer >= 1"),
    (["dataset.partition.size_range=[30,20]"],
     "dataset.partition.size_range=[30, 20]: must be [min, max] with 1 <= min <= max"),
    (["+dataset.partition.size_distribution=normal"],
     "dataset.partition.size_distribution='normal': must be one of ['uniform', 'log_uniform']"),
    (["dataset=arrays", "dataset.partition.alpha=0"],
     "dataset.partition.alpha=0: must be a number > 0"),
    (["dataset=arrays", "dataset.partition.min_size=0"],
     "dataset.partition.min_size=0: must be an integer >= 1"),
    (["dataset.num_target_nodes=-1"], "dataset.num_target_nodes=-1: must be an integer >= 0"),
])
def test_the_config_walker_checks_the_chosen_partitioner(overrides, expected):
    assert expected in partition_error(*overrides)


def test_a_partitioner_is_switched_by_its_target_or_replaced_whole():
    """A switch by ``_target_`` nulls the keys the new partitioner does not take; a node
    replaced whole (``~`` then ``+``) brings only its own."""
    validate(compose_config(["dataset=folder", f"dataset.partition._target_={P}NaturalPartitioner",
                             "dataset.partition.num_nodes=null", "dataset.partition.alpha=null",
                             "dataset.partition.min_size=null"]))
    validate(compose_config(["dataset=fmnist", "~dataset.partition",
                             f"+dataset.partition={{_target_:{P}NaturalPartitioner}}"]))


@pytest.mark.parametrize("partitioner, switch, key, refused, accepted", [
    (PathologicalPartitioner, TO_PATHOLOGICAL, "classes_per_node", 0, 1),
    (PathologicalPartitioner, TO_PATHOLOGICAL, "size_range", [5, 4], [4, 4]),
    (DirichletPartitioner, [], "alpha", 0.0, 1e-3),
    (DirichletPartitioner, [], "min_size", 0, 1),
])
def test_every_partitioner_range_is_read_from_its_annotation(partitioner, switch, key, refused,
                                                             accepted):
    """The walker's rule for a partition key is the one annotated on its partitioner's field:
    a value the annotation refuses is refused, and one it takes passes."""
    rule = parameter_rules(partitioner)[key]
    assert not rule.check(refused) and rule.check(accepted)
    overrides = ["dataset=arrays", *switch]

    def override(value) -> str:
        return f"++dataset.partition.{key}={str(value).replace(' ', '')}"

    validate(compose_config([*overrides, override(accepted)]))
    message = partition_error(*overrides, override(refused))
    assert f"dataset.partition.{key}=" in message and f"must be {rule.allowed}" in message
