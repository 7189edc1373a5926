"""Federated data (SPEC §2): pooled data sets (built-in or your own), seeded partitioners and
Lightning DataModules.

The names below load their module on first use (PEP 562), so that importing one light module
of this package (:mod:`.images`, :mod:`.node`: what a Flower ClientApp reads) does not import
Lightning and torchvision with the rest.
"""

import importlib

_MODULE_OF = {
    "ClientDataModule": "datamodule",
    "FederatedDataModule": "datamodule",
    "DataError": "datasets",
    "load_dataset": "datasets",
    "ImageData": "images",
    "resolve_data_root": "images",
    "NodeData": "node",
    "DirichletPartitioner": "partition",
    "NaturalPartitioner": "partition",
    "PartitionError": "partition",
    "PathologicalPartitioner": "partition",
    "build_partitioner": "partition",
    "split_support_query": "partition",
    "split_train_target": "partition",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
