"""What a run will hold in memory on its device, priced before it allocates any of it.

The loaders price the pooled data before decoding it (:mod:`mglightning.data.memory`); what the
run derives from the data and the config is priced here, once the data are loaded and before
the run folder is written, so that a run that cannot fit is refused in one line and leaves
nothing behind:

* activations: the bytes every op of the training forward makes for one input (counted on the
  ``meta`` device, where no op computes or allocates), times the largest set of inputs sent
  through the network at once: fast adaptation takes a target node's whole support set in one
  batch (METHOD.md §4), and a local mini-batch (``dataset.batch_size``) is never larger than a
  node's support set (METHOD.md §3). What an op makes is at least what autograd keeps of it.
* parameters: the network's, in :data:`PARAMETER_COPIES` copies plus one per client of a round
  (the clients' results wait for the server step together).
* data: the pooled images and labels and the nodes' index views, where the run moves them to
  another device (on the host they are loaded already, and counted out of what is available).

Per-round records (the accuracy curve) are a few numbers a round, and not counted.
"""

from __future__ import annotations

import warnings

import torch
from omegaconf import DictConfig
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mglightning.data.datamodule import FederatedDataModule
from mglightning.data.memory import check_fits, size_text
from mglightning.errors import ConfigError, one_line
from mglightning.federated.training_node import build_training_node, node_config

# Besides one per client of a round: the meta-network and its gradients, the server's x, x_ag
# and x_md, a client's network and its gradients, and fast adaptation's copies (the adapted
# network, the Stage I network, their gradients).
PARAMETER_COPIES = 10
PRICED_BATCH = 2  # inputs priced at once (one would fail a batch norm); the count is per input


class OutputBytes(TorchDispatchMode):
    """Counts the bytes of every tensor an op makes; a view or an in-place op makes none."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable:
            self.total += sum(leaf.nbytes for leaf in tree_leaves(result)
                              if isinstance(leaf, torch.Tensor))
        return result


def check_run_fits(cfg: DictConfig, datamodule: FederatedDataModule,
                   device: torch.device) -> None:
    """Refuse (:class:`ConfigError`, one line naming the key to change) a run whose
    activations, parameters and data would not fit on ``device``."""
    image_key = next((f"dataset.source.{key}" for key in ("image_size", "shape")
                      if key in cfg.dataset.source), "the images' size")
    num_parameters, activations_per_input = priced_network(cfg, datamodule, image_key)
    clients = datamodule.train_clients + datamodule.target_clients
    largest_set = max(max(len(client.support_idx), len(client.query_idx)) for client in clients)
    copies = PARAMETER_COPIES + cfg.method.clients_per_round
    needed = {
        "activations": activations_per_input * largest_set,
        "parameters": num_parameters * 4 * copies,  # float32
        "data": 0 if device.type == "cpu" else _data_bytes(datamodule),
    }
    details = {
        "activations": f"a node's {largest_set} images at once",
        "parameters": f"{num_parameters} in {copies} copies",
        "data": "on the device",
    }
    remedies = {
        "activations": f"lower {image_key} or model.width, or make nodes smaller "
                       "(dataset.partition)",
        "parameters": f"lower model.width or {image_key}, or method.clients_per_round",
        "data": f"lower {image_key} or use fewer images, or trainer.accelerator=cpu",
    }
    parts = ", ".join(f"{part} {size_text(size)} ({details[part]})"
                      for part, size in needed.items() if size)
    check_fits(sum(needed.values()),
               f"model={cfg.model.name} on {len(datamodule.data)} {_images_text(datamodule)}: "
               f"{parts}; together they", remedies[max(needed, key=needed.get)], device)


def priced_network(cfg: DictConfig, datamodule: FederatedDataModule,
                   image_key: str) -> tuple[int, int]:
    """The run's network's parameter count and the bytes its training forward makes per
    input, from the node built on the ``meta`` device as the run builds it; a network the
    images cannot pass through is refused (:class:`ConfigError`, naming ``image_key``)."""
    with torch.device("meta"), warnings.catch_warnings():
        # images too small for the backbone leave it zero-size layers: said below, in one line
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        network = build_training_node(node_config(cfg), datamodule.input_shape,
                                      datamodule.num_classes).network
        inputs, counter = torch.zeros(PRICED_BATCH, *datamodule.input_shape), OutputBytes()
        try:
            with counter:
                network(inputs)
        except RuntimeError as error:
            raise ConfigError(f"model={cfg.model.name} cannot take {_images_text(datamodule)} "
                              f"({one_line(error)}): use larger images ({image_key}) or "
                              "another model") from error
    num_parameters = sum(parameter.numel() for parameter in network.parameters())
    return num_parameters, counter.total // PRICED_BATCH


def _images_text(datamodule: FederatedDataModule) -> str:
    return "images of {}x{}x{} (CxHxW)".format(*datamodule.input_shape)


def _data_bytes(datamodule: FederatedDataModule) -> int:
    """The pooled images and labels and every node's index views."""
    data = datamodule.data
    clients = datamodule.train_clients + datamodule.target_clients
    indices = sum(client.support_idx.nbytes + client.query_idx.nbytes for client in clients)
    return data.images.nbytes + data.labels.nbytes + indices
