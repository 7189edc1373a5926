"""Federated data (METHOD.md §2): pooled data sets (built-in or your own), partitioners and
Lightning DataModules; a data set's loader and its partitioner are ``_target_`` nodes of its
YAML (``conf/dataset/``).

The names below load their module on first use (PEP 562), so that importing one light module
of this package (:mod:`.images`, :mod:`.node`: what a Flower ClientApp reads) does not import
Lightning and torchvision with the rest.
"""

import importlib

_MODULE_OF = {
    "ClientDataModule": "datamodule",
    "FederatedDataModule": "datamodule",
    "DataError": "errors",
    "ImageData": "images",
    "resolve_data_root": "images",
    "NodeData": "node",
    "DirichletPartitioner": "partition",
    "NaturalPartitioner": "partition",
    "PartitionError": "partition",
    "PathologicalPartitioner": "partition",
    "split_support_query": "partition",
    "split_train_target": "partition",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
