"""Fast adaptation at the target nodes as a LightningModule (SPEC §4).

``test_step`` takes one target node: copy the meta-network, adapt it on the node's support
set (timed), evaluate it on the query set. Rows collect in ``task_rows``; callbacks write and
log them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import lightning as L
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from mglightning.adaptation.snip import snip
from mglightning.adaptation.steps import one_step, two_stage
from mglightning.devices import device_clock
from mglightning.models.cost import forward_cost
from mglightning.models.network import GatedNetwork

ADAPTERS: dict[str, Callable] = {"two_stage": two_stage, "one_step": one_step, "snip": snip}


class FastAdaptation(L.LightningModule):
    """Adapts the meta-network to each target node and measures it there."""

    def __init__(self, rule: str = "two_stage", lr: float = 0.05, **rule_options) -> None:
        super().__init__()
        if rule not in ADAPTERS:
            raise ValueError(
                f"method.adaptation.rule={rule!r} is unknown: choose {sorted(ADAPTERS)}"
            )
        self.rule, self.lr, self.rule_options = rule, lr, rule_options
        self.meta_network: GatedNetwork | None = None
        self.task_rows: list[dict] = []

    def set_meta_network(self, network: GatedNetwork) -> None:
        self.meta_network = network

    def adapt(self, client) -> tuple[GatedNetwork, dict, float]:
        """A copy of the meta-network adapted on the node's support set, what the rule
        measured (SNIP: the share of weights it pruned), and the seconds it took."""
        support_images, support_labels = client.support_set()
        network = copy.deepcopy(self.meta_network)
        network.set_gate_noise(False)
        device = support_images.device
        start = device_clock(device)
        measured = ADAPTERS[self.rule](
            network, support_images, support_labels, self.lr, **self.rule_options
        )
        return network, measured or {}, device_clock(device) - start

    def adapt_and_evaluate(self, client, task_index: int) -> dict:
        """One target task: accuracy before/after adaptation, sparsity, MACs, learning time."""
        query_images, query_labels = client.query_set()
        before = self.evaluate(self.meta_network, query_images, query_labels)
        network, measured, learning_seconds = self.adapt(client)
        after = self.evaluate(network, query_images, query_labels) | measured
        return {
            "task": task_index,
            "node_id": client.node_id,
            "classes": "-".join(str(c) for c in client.classes),
            "support_size": len(client.support_idx),
            "query_size": len(client.query_idx),
            "accuracy_meta": before["accuracy"],
            **after,
            "learning_seconds": learning_seconds,
        }

    @torch.no_grad()
    def evaluate(self, network: GatedNetwork, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """Query-set accuracy and per-task means of the per-input sparsity and MACs."""
        network.set_gate_noise(False)
        output = network.forward_with_masks(images, sliced=True)
        num_classes = network.head.out_features
        accuracy = multiclass_accuracy(output.logits, labels, num_classes, average="micro")
        cost = forward_cost(network, output.masks)
        row = {
            "accuracy": float(accuracy),
            "sparsity": float(cost.gated_sparsity.mean()),
            "flops_skipped": float(cost.flops_skipped.mean()),
            "dense_macs": cost.dense_macs,
            "executed_macs": float(cost.executed_macs.mean()),
        }
        for layer, sparsity in zip(network.gated_layers, cost.layer_sparsity, strict=True):
            row[f"sparsity_layer{layer + 1}"] = float(sparsity.mean())
        return row

    def evaluate_targets(self, clients) -> list[dict]:
        return [self.adapt_and_evaluate(client, i) for i, client in enumerate(clients)]

    def on_test_epoch_start(self) -> None:
        self.task_rows = []

    def test_step(self, task_index: int, batch_idx: int) -> None:
        client = self.trainer.datamodule.target_clients[int(task_index)]
        with torch.inference_mode(False), torch.enable_grad():  # adaptation takes gradients
            self.task_rows.append(self.adapt_and_evaluate(client, int(task_index)))

    def configure_optimizers(self) -> list:
        return []  # no torch optimizer: the step updates the parameters itself
