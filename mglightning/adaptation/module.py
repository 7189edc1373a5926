"""Fast adaptation at the target nodes as a LightningModule (METHOD.md §4).

``test_step`` takes one target node: copy the meta-network, adapt it on the node's support
set (timed), evaluate it on the query set. Rows collect in ``task_rows``; callbacks write and
log them. The adaptation rule is the config's ``method.adaptation`` node, a ``_target_``
naming the rule (:func:`~mglightning.adaptation.steps.two_stage`, ``one_step``, ``snip``,
``snip_channels``) with its options, built by :func:`mglightning.build.build_adapter`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import lightning as L
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from mglightning.adaptation.gating_stats import channel_measures, flip_rate, zeroed_groups
from mglightning.devices import device_clock
from mglightning.models.cost import forward_cost
from mglightning.models.network import GatedNetwork, GatedOutput


@torch.no_grad()
def query_forward(network: GatedNetwork, images: torch.Tensor) -> GatedOutput:
    """The evaluation forward (METHOD.md §1: no noise; §4: only the active subnet computed):
    logits and, per gated point, the (B, C) masks and gate logits."""
    network.set_gate_noise(0.0)
    return network.forward_with_masks(images, sliced=True)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(multiclass_accuracy(logits, labels, logits.shape[1], average="micro"))


def stage1_network(meta_network: GatedNetwork, adapted: GatedNetwork) -> GatedNetwork:
    """The meta-model's backbone with the adapted network's gates: (θ*, φ_t), the network
    after Stage I of ``two_stage``, whose Stage II changes θ alone (METHOD.md §4)."""
    network = copy.deepcopy(meta_network)
    adapted_parameters = dict(adapted.named_parameters())
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if network.is_gate_parameter(name):
                parameter.copy_(adapted_parameters[name])
    return network


class FastAdaptation(L.LightningModule):
    """Adapts the meta-network to each target node and measures it there."""

    def __init__(self, rule: Callable[[GatedNetwork, torch.Tensor, torch.Tensor], dict | None]
                 ) -> None:
        """``rule(network, support_images, support_labels)`` adapts ``network`` in place (its
        step sizes and options bound) and returns what it measured, if anything."""
        super().__init__()
        self.rule = rule
        self.meta_network: GatedNetwork | None = None
        self.task_rows: list[dict] = []

    def set_meta_network(self, network: GatedNetwork) -> None:
        self.meta_network = network

    def adapt(self, client) -> tuple[GatedNetwork, dict, float]:
        """A copy of the meta-network adapted on the node's support set, what the rule
        measured (SNIP: the share of weights it pruned), and the seconds it took."""
        support_images, support_labels = client.support_set()
        network = copy.deepcopy(self.meta_network)
        network.set_gate_noise(0.0)
        device = support_images.device
        start = device_clock(device)
        measured = self.rule(network, support_images, support_labels)
        return network, measured or {}, device_clock(device) - start

    def adapt_and_evaluate(self, client, task_index: int, measure_gating: bool = True) -> dict:
        """One target task: accuracy before/after adaptation, sparsity, MACs, learning time;
        for a gated network also what the gates do (:meth:`gating_measures`), unless
        ``measure_gating`` is off (evaluations for the accuracy curve alone)."""
        query_images, query_labels = client.query_set()
        meta_forward = query_forward(self.meta_network, query_images)
        network, measured, learning_seconds = self.adapt(client)
        adapted_forward = query_forward(network, query_images)
        row = {
            "task": task_index,
            "node_id": client.node_id,
            "classes": "-".join(str(c) for c in client.classes),
            "support_size": len(client.support_idx),
            "query_size": len(client.query_idx),
            "accuracy_meta": accuracy(meta_forward.logits, query_labels),
            **self.measure(network, adapted_forward, query_labels),
            **measured,
            "learning_seconds": learning_seconds,
        }
        if network.gated_layers and measure_gating:
            row |= self.gating_measures(network, meta_forward, adapted_forward, query_images,
                                        query_labels)
        return row

    @torch.no_grad()
    def gating_measures(
        self,
        network: GatedNetwork,
        meta_forward: GatedOutput,
        adapted_forward: GatedOutput,
        images: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict:
        """What gating does at this task, over its query inputs: accuracy after
        Stage I and with every gate on; the share of mask entries Stage I flipped; the mean
        |gate logit|; over all gated channels together (no suffix) and per gated layer
        (``_layer<l>``) the shares of channels always off / always on / input-dependent, the
        mean Jaccard distance between inputs' channel sets and the majority-on channel set
        (compared across tasks in the summary); per gated layer the meta-model's zeroed Group
        Lasso groups. Two forwards beyond the meta-model's and the adapted network's."""
        stage1_forward = query_forward(stage1_network(self.meta_network, network), images)
        row = {
            "accuracy_stage1": accuracy(stage1_forward.logits, labels),
            "accuracy_gates_on": accuracy(network.without_gates()(images), labels),
            "mask_flip_rate": flip_rate(torch.cat(meta_forward.masks, dim=1),
                                        torch.cat(stage1_forward.masks, dim=1)),
            "gate_logit_abs_mean": float(torch.cat(adapted_forward.gate_logits, dim=1)
                                         .abs().mean()),
        }
        points = network.describe().points
        for index, masks in zip(network.gated_layers, adapted_forward.masks, strict=True):
            suffix = f"_layer{points[index].layer}"
            row |= {f"{key}{suffix}": value for key, value in channel_measures(masks).items()}
            weight, bias = (self.meta_network.get_parameter(name)
                            for name in points[index].group)
            row[f"zeroed_groups{suffix}"] = zeroed_groups(weight, bias)
        return row | channel_measures(torch.cat(adapted_forward.masks, dim=1))  # (B, all gated)

    @staticmethod
    def measure(network: GatedNetwork, forward: GatedOutput, labels: torch.Tensor) -> dict:
        """Query-set accuracy and per-task means of the per-input sparsity and MACs, from the
        query forward (:func:`query_forward`) of ``network``."""
        cost = forward_cost(network, forward.masks)
        row = {
            "accuracy": accuracy(forward.logits, labels),
            "sparsity": float(cost.gated_sparsity.mean()),
            "flops_skipped": float(cost.flops_skipped.mean()),
            "dense_macs": cost.dense_macs,
            "executed_macs": float(cost.executed_macs.mean()),
        }
        points = network.describe().points
        for index, sparsity in zip(network.gated_layers, cost.layer_sparsity, strict=True):
            row[f"sparsity_layer{points[index].layer}"] = float(sparsity.mean())
        return row

    def evaluate_targets(self, clients, tasks: Iterable[int] | None = None,
                         on_task_done: Callable[[], None] | None = None,
                         measure_gating: bool = True) -> list[dict]:
        """The target tasks ``tasks`` (indices into ``clients``; default all) in turn;
        ``on_task_done`` after each (e.g. a progress bar)."""
        rows = []
        for task_index in range(len(clients)) if tasks is None else tasks:
            rows.append(self.adapt_and_evaluate(clients[task_index], task_index, measure_gating))
            if on_task_done is not None:
                on_task_done()
        return rows

    def on_test_epoch_start(self) -> None:
        self.task_rows = []

    def test_step(self, task_index: int, batch_idx: int) -> None:
        client = self.trainer.datamodule.target_clients[int(task_index)]
        with torch.inference_mode(False), torch.enable_grad():  # adaptation takes gradients
            self.task_rows.append(self.adapt_and_evaluate(client, int(task_index)))

    def configure_optimizers(self) -> list:
        return []  # no torch optimizer: the step updates the parameters itself
