"""Cutting a pooled data set into federated nodes (METHOD.md §2), as partitioner objects.

Named and shaped like Flower's partitioners (pathological, Dirichlet, natural): a partitioner
is built from its ``dataset.partition`` node (``_target_`` and its fields) and
``partition(labels, num_classes, node_ids, seed=...)`` returns one sorted index tensor per node,
drawn from the caller's seed. A new partitioner is a dataclass (its fields are its config keys,
each field's range an ``Annotated`` rule beside it) named by a data set's YAML; one with a
``num_nodes`` field cuts that many nodes, one without keeps the data's own (a natural partition:
the node count is known once the data are loaded).

The config walker (:func:`mglightning.config.validate`) checks the node like every ``_target_``
node: unknown keys and each field's rule. A partitioner checks only what the walker cannot see,
with the config key to change in its one-line :class:`PartitionError`: what the loaded data
cannot supply (classes, samples), before any sample is drawn, and how its fields relate to each
other. Built from Python, a partitioner takes its fields' ranges on trust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch

from mglightning.constraints import integer, integer_range, number, one_of, optional
from mglightning.data.memory import shortfall

PARTITION_KEY = "dataset.partition"
TARGET_NODES_KEY = "dataset.num_target_nodes"
DIRICHLET_MAX_ATTEMPTS = 100
PATHOLOGICAL_MAX_ATTEMPTS = 20
# Dealing classes weighted by remaining supply to this power steers nodes to the classes with
# the most left; with 4 (and size redraws) the paper's MNIST setting, 25 nodes of [1165, 3834]
# taking ~89% of the data, fit on each of 100 seeds tried.
CLASS_BALANCE_POWER = 4
SIZE_DISTRIBUTIONS = ("uniform", "log_uniform")
# A node id before any data loads: an int64 in the permutation and a Python int in a list.
NODE_ID_BYTES = 8 + 36


class PartitionError(ValueError):
    """A partition the data cannot supply; the message names the config key to change."""


def _key(name: str) -> str:
    return f"{PARTITION_KEY}.{name}"


@dataclass
class PathologicalPartitioner:
    """Each node holds ``classes_per_node`` classes and a size drawn from ``size_range``
    (METHOD.md §2).

    Sizes are drawn uniformly from ``size_range`` (inclusive), or log-uniformly with
    ``size_distribution="log_uniform"`` (more small nodes, as in real federations). A node's size
    is split evenly among its classes. Classes are dealt largest node first: a node draws its
    classes at random, weighted by (what each class still has left) ** ``CLASS_BALANCE_POWER``
    among the classes that can still supply its share, so class usage balances and requests
    near the data set's size still fit. A draw of sizes that cannot be dealt is redrawn, up to
    ``PATHOLOGICAL_MAX_ATTEMPTS`` times, so near capacity the sizes are drawn conditioned on
    fitting. Samples are then taken without replacement from seeded per-class pools: nodes are
    disjoint and none comes up short.

    Its own checks: ``size_range``'s min of at least ``classes_per_node`` (one sample a class)
    when built; at :meth:`partition`, classes and samples against the data.
    """

    num_nodes: Annotated[int, integer(1)]
    classes_per_node: Annotated[int, integer(1)]
    size_range: Annotated[tuple[int, int], integer_range(1)]
    size_distribution: Annotated[str, one_of(*SIZE_DISTRIBUTIONS)] = "uniform"

    def __post_init__(self) -> None:
        if self.size_range[0] < self.classes_per_node:
            raise PartitionError(f"{_key('size_range')}={list(self.size_range)}: need min >= "
                                 f"{_key('classes_per_node')}={self.classes_per_node}")

    def partition(self, labels: torch.Tensor, num_classes: int,
                  node_ids: torch.Tensor | None = None, *, seed: int) -> list[torch.Tensor]:
        """One sorted int64 index tensor into ``labels`` per node; the data's own ``node_ids``
        play no part (the pooled data are cut anew)."""
        self._validate_config(num_classes, len(labels))
        generator = torch.Generator().manual_seed(seed)
        supply = torch.bincount(labels, minlength=num_classes)
        shares, node_classes = self._deal(supply, generator)  # both (nodes, classes_per_node)
        pools = [_shuffled_class_pool(labels, label, generator) for label in range(num_classes)]
        pool_starts = [0] * num_classes
        nodes = []
        for classes, counts in zip(node_classes.tolist(), shares.tolist(), strict=True):
            parts = []
            for label, count in zip(classes, counts, strict=True):
                parts.append(pools[label][pool_starts[label] : pool_starts[label] + count])
                pool_starts[label] += count
            nodes.append(torch.cat(parts).sort().values)
        return nodes

    def _validate_config(self, num_classes: int, num_samples: int) -> None:
        """Reject configurations this data set cannot satisfy, before drawing anything."""
        if self.classes_per_node > num_classes:
            raise PartitionError(f"{_key('classes_per_node')}={self.classes_per_node}: must be "
                                 f"between 1 and the data set's {num_classes} classes")
        low, high = self.size_range
        if self.num_nodes * low > num_samples:
            raise PartitionError(
                f"{_key('num_nodes')}={self.num_nodes} nodes of at least {low} samples "
                f"({_key('size_range')}={[low, high]}) need {self.num_nodes * low} samples but "
                f"the data set has {num_samples}: lower {_key('num_nodes')} or "
                f"{_key('size_range')}")

    def _deal(
        self, supply: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-node class shares and class ids, both (nodes, classes_per_node), that fit supply."""
        totals = []
        for _ in range(PATHOLOGICAL_MAX_ATTEMPTS):
            node_sizes = self._draw_sizes(generator)
            shares = _even_split(node_sizes, self.classes_per_node)
            node_classes = self._deal_classes(shares, supply, generator)
            if node_classes is not None:
                return shares, node_classes
            totals.append(int(node_sizes.sum()))
        raise PartitionError(
            f"{_key('size_range')}={list(self.size_range)} ({self.size_distribution}) with "
            f"{_key('num_nodes')}={self.num_nodes} and {_key('classes_per_node')}="
            f"{self.classes_per_node} did not fit the data set's {int(supply.sum())} samples "
            f"({int(supply.min())}-{int(supply.max())} per class) in {len(totals)} draws asking "
            f"for {min(totals)}-{max(totals)}: lower {_key('num_nodes')} or {_key('size_range')}")

    def _draw_sizes(self, generator: torch.Generator) -> torch.Tensor:
        """(nodes,) int64 sizes in ``size_range`` (inclusive), uniform or log-uniform."""
        low, high = self.size_range
        if self.size_distribution == "uniform":
            return torch.randint(low, high + 1, (self.num_nodes,), generator=generator)
        unit = torch.rand(self.num_nodes, generator=generator, dtype=torch.float64)
        log_sizes = math.log(low) + unit * (math.log(high + 1) - math.log(low))
        return log_sizes.exp().floor().to(torch.int64).clamp(low, high)

    def _deal_classes(
        self, shares: torch.Tensor, supply: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor | None:
        """(nodes, classes_per_node) distinct class ids per node, each able to supply its share;
        None when the dealing gets stuck (too few classes left with enough samples)."""
        if int(shares.sum()) > int(supply.sum()):
            return None
        node_classes = torch.empty_like(shares)
        remaining = supply.to(torch.float64)  # (classes,)
        for node in shares.sum(dim=1).argsort(descending=True, stable=True).tolist():
            can_supply = remaining >= shares[node, 0]  # shares[node, 0] is the node's largest
            if int(can_supply.sum()) < self.classes_per_node:
                return None
            weights = remaining.pow(CLASS_BALANCE_POWER) * can_supply
            chosen = torch.multinomial(weights, self.classes_per_node, generator=generator)
            remaining[chosen] -= shares[node].to(torch.float64)
            node_classes[node] = chosen
        return node_classes


@dataclass
class DirichletPartitioner:
    """Label skew by the standard FL recipe: each class's samples go to the nodes in
    proportions drawn from Dir(alpha); small alpha means few classes per node.

    With ``size_range`` each node keeps at most a size drawn uniformly from it. Draws that leave
    a node with fewer than ``min_size`` samples (Flower's ``min_partition_size``; 1: none
    empty) are redrawn, up to ``DIRICHLET_MAX_ATTEMPTS`` times, so that every node has enough
    for its support/query split. numpy draws the proportions because torch's Dirichlet takes
    no generator.

    Its own check, at :meth:`partition`: ``min_size`` samples for every node against the data.
    """

    num_nodes: Annotated[int, integer(1)]
    alpha: Annotated[float, number(above=0)]
    size_range: Annotated[tuple[int, int] | None, optional(integer_range(1))] = None
    min_size: Annotated[int, integer(1)] = 1

    def partition(self, labels: torch.Tensor, num_classes: int,
                  node_ids: torch.Tensor | None = None, *, seed: int) -> list[torch.Tensor]:
        """One sorted int64 index tensor into ``labels`` per node, each of ``min_size`` or
        more; the data's own ``node_ids`` play no part."""
        self._validate_config(len(labels))
        rng = np.random.default_rng(seed)
        label_array = labels.numpy()
        class_pools = [rng.permutation(np.flatnonzero(label_array == label))
                       for label in range(num_classes)]
        for _ in range(DIRICHLET_MAX_ATTEMPTS):
            nodes = self._draw_nodes(class_pools, rng)
            if min(len(node) for node in nodes) >= self.min_size:
                return [torch.from_numpy(np.sort(node)).to(torch.int64) for node in nodes]
        raise PartitionError(
            f"{_key('alpha')}={self.alpha} with {_key('num_nodes')}={self.num_nodes} left a node "
            f"with fewer than {_key('min_size')}={self.min_size} samples in "
            f"{DIRICHLET_MAX_ATTEMPTS} draws from {len(labels)} samples: raise {_key('alpha')} "
            f"or lower {_key('num_nodes')} or {_key('min_size')}")

    def _validate_config(self, num_samples: int) -> None:
        """Reject configurations that cannot give every node ``min_size`` samples, before
        drawing."""
        if self.num_nodes * self.min_size > num_samples:
            raise PartitionError(f"{_key('num_nodes')}={self.num_nodes} nodes of at least "
                                 f"{_key('min_size')}={self.min_size} samples need "
                                 f"{self.num_nodes * self.min_size} samples but the data set "
                                 f"has {num_samples}: lower {_key('num_nodes')} or "
                                 f"{_key('min_size')}")

    def _draw_nodes(
        self, class_pools: list[np.ndarray], rng: np.random.Generator
    ) -> list[np.ndarray]:
        """One Dirichlet draw: every class's pool cut into per-node shares, then size caps."""
        shares: list[list[np.ndarray]] = [[] for _ in range(self.num_nodes)]
        for pool in class_pools:
            proportions = rng.dirichlet(np.full(self.num_nodes, self.alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(pool)).astype(np.int64)
            for node, share in enumerate(np.split(pool, cuts)):
                shares[node].append(share)
        nodes = [np.concatenate(node_shares) for node_shares in shares]
        if self.size_range is None:
            return nodes
        caps = rng.integers(self.size_range[0], self.size_range[1] + 1, size=self.num_nodes)
        return [rng.permutation(node)[:cap] for node, cap in zip(nodes, caps, strict=True)]


@dataclass
class NaturalPartitioner:
    """The data's own nodes: each sample stays at the node the data assign it to (an image
    tree's ``<node>`` folder, an npz's ``node_ids``), as FEMNIST's writers are its nodes.

    Node ``i`` is the data's ``i``-th node in sorted order; the seed plays no part here (target
    nodes are drawn from these nodes by :func:`split_train_target`, from the run's seed).
    """

    def partition(self, labels: torch.Tensor, num_classes: int,
                  node_ids: torch.Tensor | None = None, *, seed: int) -> list[torch.Tensor]:
        """One sorted int64 index tensor into ``labels`` per node of the data."""
        if node_ids is None:
            raise PartitionError(
                f"{PARTITION_KEY}: the natural partition needs data that say each sample's "
                "node: an image tree DIR/<node>/<class>/<image> (dataset=folder) or a node_ids "
                "array (dataset=arrays); or choose PathologicalPartitioner or "
                "DirichletPartitioner")
        return [(node_ids == node).nonzero().view(-1)
                for node in range(int(node_ids.max()) + 1)]


def _even_split(node_sizes: torch.Tensor, parts: int) -> torch.Tensor:
    """(nodes, parts) counts summing to each node size, differing by at most one."""
    base = node_sizes.div(parts, rounding_mode="floor").unsqueeze(1)  # (nodes, 1)
    remainder = (node_sizes % parts).unsqueeze(1)
    return base + (torch.arange(parts) < remainder).to(node_sizes.dtype)


def _shuffled_class_pool(
    labels: torch.Tensor, label: int, generator: torch.Generator
) -> torch.Tensor:
    """Indices of one class in a seeded random order: the pool nodes draw from."""
    members = (labels == label).nonzero().view(-1)
    return members[torch.randperm(len(members), generator=generator)]


def split_train_target(
    num_nodes: int, num_target_nodes: int, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded split of node ids into training nodes and unseen target nodes (METHOD.md §2)."""
    if not 0 <= num_target_nodes < num_nodes:
        raise PartitionError(f"{TARGET_NODES_KEY}={num_target_nodes}: must be between 0 "
                             f"and the {num_nodes} nodes minus one ({num_nodes - 1}), so that at "
                             "least one training node remains")
    too_many = shortfall(NODE_ID_BYTES * num_nodes, f"the ids of {num_nodes} nodes",
                         f"lower {_key('num_nodes')} (a node needs samples of its own: at most "
                         "one node a sample)")
    if too_many:
        raise PartitionError(too_many)
    permutation = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed))
    target_nodes = sorted(permutation[:num_target_nodes].tolist())
    train_nodes = sorted(permutation[num_target_nodes:].tolist())
    return train_nodes, target_nodes


def split_support_query(
    indices: torch.Tensor, support_fraction: float, generator: torch.Generator,
    node_name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random split of a node's indices into support (train) and query (test) parts (METHOD.md §2).

    ``node_name``: the data's name of a natural partition's node, for the error message.
    """
    num_support = round(len(indices) * support_fraction)
    if not 0 < num_support < len(indices):
        node, remedy = ((f"node {node_name!r} of the data", "give that node more samples or "
                         "remove it from the data") if node_name is not None else
                        ("a node", "use a fraction strictly between 0 and 1, or larger nodes"))
        raise PartitionError(f"dataset.support_fraction={support_fraction} leaves an empty "
                             f"support or query part of {node} with {len(indices)} samples: "
                             f"{remedy}")
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    return shuffled[:num_support].sort().values, shuffled[num_support:].sort().values
