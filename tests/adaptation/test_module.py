"""FastAdaptation's gating measures against the same numbers made another way."""

import copy
import math
from dataclasses import dataclass
from functools import partial

import pytest
import torch

from mglightning.adaptation.gating_stats import channel_set_text, flip_rate
from mglightning.adaptation.module import FastAdaptation, accuracy
from mglightning.adaptation.steps import adapt_gates, two_stage
from mglightning.analysis.task_summary import summarize_tasks
from mglightning.models import build_network


@dataclass
class Client:
    """The part of a ClientDataModule that FastAdaptation reads."""

    support: tuple[torch.Tensor, torch.Tensor]
    query: tuple[torch.Tensor, torch.Tensor]
    node_id: int = 7
    classes: tuple[int, ...] = (0, 1, 2, 3)

    def support_set(self):
        return self.support

    def query_set(self):
        return self.query

    @property
    def support_idx(self):
        return torch.arange(len(self.support[1]))

    @property
    def query_idx(self):
        return torch.arange(len(self.query[1]))


def gated_meta_network_and_client(seed=0):
    torch.manual_seed(seed)
    network = build_network("cnn4", (1, 16, 16), 4, gated_layers=[3])
    with torch.no_grad():  # a zeroed Group Lasso group (channel 5), as the prox leaves them
        network.blocks[2].gate.out.weight[5] = 0.0
        network.blocks[2].gate.out.bias[5] = 0.0
    client = Client((torch.randn(24, 1, 16, 16), torch.randint(0, 4, (24,))),
                    (torch.randn(20, 1, 16, 16), torch.randint(0, 4, (20,))))
    return network, client


def adapter_for(network, lr=0.5):
    adapter = FastAdaptation(partial(two_stage, lr=lr))
    adapter.set_meta_network(network)
    return adapter


def test_stage_one_measures_equal_stage_one_applied_by_hand():
    network, client = gated_meta_network_and_client()
    row = adapter_for(network).adapt_and_evaluate(client, 0)
    by_hand = copy.deepcopy(network)
    adapt_gates(by_hand, *client.support, lr=0.5)  # Stage I alone, on the support set
    query_images, query_labels = client.query
    with torch.no_grad():
        stage1 = by_hand.forward_with_masks(query_images, sliced=True)
        meta = network.forward_with_masks(query_images, sliced=True)
    assert row["accuracy_stage1"] == accuracy(stage1.logits, query_labels)
    assert row["mask_flip_rate"] == flip_rate(meta.masks[0], stage1.masks[0])
    assert row["mask_flip_rate"] > 0  # the test can tell: Stage I moved some masks


def test_gates_on_accuracy_equals_gates_that_output_plus_one_for_every_input():
    network, client = gated_meta_network_and_client()
    adapter = adapter_for(network)
    row = adapter.adapt_and_evaluate(client, 0)
    adapted, _, _ = adapter.adapt(client)
    with torch.no_grad():
        adapted.blocks[2].gate.out.weight.zero_()
        adapted.blocks[2].gate.out.bias.fill_(1.0)
        logits = adapted(client.query[0])
    assert row["accuracy_gates_on"] == accuracy(logits, client.query[1])


def test_per_layer_shares_sets_and_zeroed_groups_of_one_task():
    network, client = gated_meta_network_and_client()
    adapter = adapter_for(network)
    row = adapter.adapt_and_evaluate(client, 0)
    adapted, _, _ = adapter.adapt(client)
    with torch.no_grad():
        masks = adapted.forward_with_masks(client.query[0], sliced=True).masks[0]
    on_count = masks.sum(0)
    assert row["always_off_layer3"] == float((on_count == 0).float().mean())
    assert row["always_off_layer3"] + row["always_on_layer3"] + row[
        "input_dependent_layer3"] == pytest.approx(1.0)
    assert row["majority_on_layer3"] == channel_set_text(on_count > len(masks) / 2)
    assert row["zeroed_groups_layer3"] == 1  # channel 5, zeroed by hand
    assert 0.0 <= row["input_jaccard_layer3"] <= 1.0
    assert row["gate_logit_abs_mean"] > 0


def test_measures_over_all_gated_channels_weigh_each_layer_by_its_channels():
    """Gates on conv2 (64 channels) and conv3 (128): the shares over all 192 gated channels
    are the layers' shares weighted by their channel counts, and the overall majority-on set
    is the layers' sets side by side."""
    torch.manual_seed(0)
    network = build_network("cnn4", (1, 16, 16), 4, gated_layers=[2, 3])
    _, client = gated_meta_network_and_client()
    row = adapter_for(network).adapt_and_evaluate(client, 0)
    for share in ("always_off", "always_on", "input_dependent"):
        weighted = (64 * row[f"{share}_layer2"] + 128 * row[f"{share}_layer3"]) / 192
        assert row[share] == pytest.approx(weighted)
    assert row["majority_on"] == row["majority_on_layer2"] + row["majority_on_layer3"]
    assert 0.0 <= row["input_jaccard"] <= 1.0


def test_ungated_network_rows_and_summary_have_no_gating_measures():
    torch.manual_seed(0)
    network = build_network("cnn4", (1, 16, 16), 4)
    _, client = gated_meta_network_and_client()
    rows = [adapter_for(network).adapt_and_evaluate(client, i) for i in range(2)]
    gating = ("stage1", "gates_on", "flip", "logit", "layer", "jaccard", "zeroed")
    assert not [key for key in rows[0] if any(word in key for word in gating)]
    summary = summarize_tasks(rows)
    assert not [key for key in summary if any(word in key for word in gating)]
    assert summary["accuracy_mean"] == pytest.approx(rows[0]["accuracy"])


def test_summary_compares_tasks_majority_sets_and_averages_input_spread():
    network, client = gated_meta_network_and_client()
    row = adapter_for(network).adapt_and_evaluate(client, 0)
    rows = [row | {"majority_on_layer3": text, "input_jaccard_layer3": spread}
            for text, spread in (("1100", 0.2), ("0110", 0.4), ("1100", 0.6))]
    summary = summarize_tasks(rows)
    # pairs: {0,1}-{1,2} 2/3, {0,1}-{0,1} 0, {1,2}-{0,1} 2/3
    assert summary["task_jaccard_layer3"] == pytest.approx(4 / 9)
    assert summary["input_jaccard_layer3_mean"] == pytest.approx(0.4)
    assert summary["zeroed_groups_layer3"] == 1.0
    assert summary["mask_flip_rate_mean"] == row["mask_flip_rate"]
    single = summarize_tasks(rows[:1])
    assert math.isnan(single["task_jaccard_layer3"])  # one task: no pair to compare


def test_summary_over_all_gated_channels_compares_tasks_with_inputs():
    """The overall majority-on sets of three tasks, 6 channels of two layers side by side:
    their mean pairwise distance over the mean input-to-input one is the goal's ratio."""
    network, client = gated_meta_network_and_client()
    row = adapter_for(network).adapt_and_evaluate(client, 0)
    rows = [row | {"majority_on": text, "input_jaccard": spread, "input_dependent": share}
            for text, spread, share in (("110011", 0.1, 0.3), ("110110", 0.2, 0.5),
                                        ("011011", 0.3, 0.4))]
    summary = summarize_tasks(rows)
    # {0,1,4,5}-{0,1,3,4}: 3 shared of 5, 2/5; {0,1,4,5}-{1,2,4,5}: 2/5;
    # {0,1,3,4}-{1,2,4,5}: 2 shared of 6, 4/6
    assert summary["task_jaccard"] == pytest.approx((2 / 5 + 2 / 5 + 4 / 6) / 3)
    assert summary["input_jaccard_mean"] == pytest.approx(0.2)
    assert summary["input_dependent_mean"] == pytest.approx(0.4)
    assert summary["task_input_jaccard_ratio"] == pytest.approx(summary["task_jaccard"] / 0.2)
    assert summary["task_jaccard_layer3"] == 0.0  # every per-layer key stays as it was
    constant = summarize_tasks([r | {"input_jaccard": 0.0} for r in rows])
    assert constant["task_input_jaccard_ratio"] == math.inf  # tasks differ, inputs never
