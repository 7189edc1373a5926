"""Goal 3: fast-adaptation learning time at a target node (METHOD.md §4, §5).

MetaGater w/ gating (two-stage: Stage I dense for the gates, Stage II through the sliced
forward, computing only the active subnet) against w/o gating (one gradient step on an
ungated backbone) and MetaSNIP (SNIP pruning then one step on the kept weights), all on the
same support set, each from the same starting parameters at every call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.timing import alternate, ratio
from mglightning.adaptation.snip import snip
from mglightning.adaptation.steps import one_step, two_stage
from mglightning.models.network import GatedNetwork


class TimedAdaptation:
    """One adaptation rule on one network, reset to the same parameters before every call."""

    def __init__(self, network: GatedNetwork, rule: Callable, images, labels, lr: float,
                 **options) -> None:
        self.network, self.rule, self.options = network, rule, options
        self.images, self.labels, self.lr = images, labels, lr
        self.start = [param.detach().clone() for param in network.parameters()]

    def __call__(self) -> None:
        with torch.no_grad():
            for param, value in zip(self.network.parameters(), self.start, strict=True):
                param.copy_(value)
        self.rule(self.network, self.images, self.labels, self.lr, **self.options)


def bench_adaptation(
    gated: GatedNetwork, ungated: GatedNetwork, images, labels, lr: float,
    keep_fraction: float, repeats: int,
) -> dict:
    """Learning-time ratios against MetaGater w/ gating, which every other rule divides."""
    gated.set_gate_noise(0.0)
    candidates = {
        "with_gating": TimedAdaptation(gated, two_stage, images, labels, lr),
        "without_gating": TimedAdaptation(ungated, one_step, images, labels, lr),
        "metasnip": TimedAdaptation(ungated, snip, images, labels, lr,
                                    keep_fraction=keep_fraction),
    }
    seconds = alternate(candidates, repeats)
    with torch.no_grad():
        masks = gated.forward_with_masks(images, sliced=True).masks
    return {
        "support_size": len(labels),
        "gated_channels_off": float(1 - torch.cat(masks, dim=1).float().mean()),
        "keep_fraction": keep_fraction,
        "without_gating_over_with_gating": ratio(seconds, "without_gating",
                                                 "with_gating").summary(),
        "metasnip_over_with_gating": ratio(seconds, "metasnip", "with_gating").summary(),
    }
