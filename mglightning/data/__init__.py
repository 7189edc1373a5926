"""Federated data (SPEC §2): pooled data sets (built-in or your own), seeded partitioners and
Lightning DataModules."""

from mglightning.data.datamodule import ClientDataModule, FederatedDataModule
from mglightning.data.datasets import DataError, ImageData, load_dataset, resolve_data_root
from mglightning.data.partition import (
    DirichletPartitioner,
    NaturalPartitioner,
    PartitionError,
    PathologicalPartitioner,
    build_partitioner,
    split_support_query,
    split_train_target,
)

__all__ = [
    "ClientDataModule",
    "DataError",
    "DirichletPartitioner",
    "FederatedDataModule",
    "ImageData",
    "NaturalPartitioner",
    "PartitionError",
    "PathologicalPartitioner",
    "build_partitioner",
    "load_dataset",
    "resolve_data_root",
    "split_support_query",
    "split_train_target",
]
