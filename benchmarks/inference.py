"""Goal 4: inference of the adapted gated network with physical channel slicing (METHOD.md §1)
against the dense backbone, as a measured speedup over the one the MAC counts predict.

Two views: the whole network (sliced ``forward_with_masks`` vs the ungated backbone), and
each gated point in isolation with what reads it: the blocks from the point's own to the one
holding its last reader (a chain's next layer, or the head; a residual block's second conv,
in the same block). Sliced, that is the gate, the active filters only, and the readers
reading only the active channels, against the same blocks dense. At batch 1 the blocks are
also timed pruned at rest beforehand to the one input's active channels (no gate, no
gathers): what the convolution kernels allow, the floor under any slicing. For context, the
deployed task module (channels off for the whole task removed at rest, compiled as an
AOTInductor package as `make deploy` does, :mod:`mglightning.export`) is timed against the
same dense network. Every count and cut reads the network's description
(:mod:`mglightning.models.gate_points`), so any backbone runs here.
"""

from __future__ import annotations

from functools import partial

import torch

from benchmarks.timing import alternate, ratio
from mglightning.models.channels import ChannelSets, prune_at_rest
from mglightning.models.cost import forward_cost
from mglightning.models.gate_points import MacOp
from mglightning.models.network import GatedNetwork

CALLS_PER_TIMING = {1: 200, 64: 8}  # batch size → calls per timed repeat (fewer for slower calls)


def _holder(network: GatedNetwork, parameter: str) -> int | None:
    """The block holding ``parameter``; ``len(network.blocks)`` for the head, None for the
    stem."""
    owner = network.get_parameter(parameter)
    if any(owner is param for param in network.head.parameters()):
        return len(network.blocks)
    return next((index for index, block in enumerate(network.blocks)
                 if any(owner is param for param in block.parameters())), None)


def pair_stop(network: GatedNetwork, index: int) -> int:
    """One past the last block holding a reader of gate point ``index``
    (``len(network.blocks) + 1`` when the head reads it): the pair is blocks ``index`` to
    there, the head included then."""
    point = network.describe().points[index]
    return 1 + max(_holder(network, reader.parameter) for reader in point.readers)


def pair_macs(network: GatedNetwork, index: int, active: dict[int, torch.Tensor]
              ) -> tuple[float, float]:
    """(dense, executed) MACs per input of the pair of gate point ``index`` (see
    :func:`pair_stop`): the ops of its blocks (and the head, if in it) and their gates' MLPs,
    counted as :func:`~mglightning.models.cost.forward_cost` counts them. ``active`` holds
    the (B,) active channel counts of the gated points (a point missing: every channel)."""
    description = network.describe()
    pair = range(index, pair_stop(network, index))

    def count(point: int | None, channels: int) -> torch.Tensor | float:
        return active[point].float() if point in active else float(channels)

    dense, executed = 0.0, torch.zeros(())  # executed: (B,) once a count is per input
    for op in description.ops:
        if isinstance(op, MacOp):
            if _holder(network, op.weight) not in pair:
                continue
            dense += op.out_channels * op.in_channels * op.per_pair
            executed = executed + (count(op.out_point, op.out_channels)
                                   * count(op.in_point, op.in_channels) * op.per_pair)
        elif op.point in pair:  # a gate MLP: its inputs → hidden → one logit per channel
            inputs = count(op.in_point, op.in_channels) * op.inputs_per_channel
            executed = executed + inputs * op.hidden + op.hidden * op.outputs
    return dense, float(executed.mean())


def run_pair(network: GatedNetwork, index: int, stop: int, x: torch.Tensor,
             sliced: bool) -> torch.Tensor:
    """Blocks ``index`` to ``stop - 1`` on ``x``, the input of block ``index``, then the head
    if ``stop`` says so (:func:`pair_stop`, computed once, outside the timings); sliced: only
    the active channels."""
    y, keep, *_ = network.run_blocks(x, index, min(stop, len(network.blocks)), sliced)
    return network.head_logits(y, keep) if stop > len(network.blocks) else y


def pruned_pair(dense: GatedNetwork, gated: GatedNetwork, index: int,
                masks: dict[int, torch.Tensor]) -> GatedNetwork:
    """``dense`` pruned at rest to the channels on for the first input at every gated point of
    ``index``'s pair (``masks``: (B, C) per gated point): the same code path as the dense
    pair, computing what the sliced gated pair computes for that input, with less work."""
    keeps = {}
    for point in range(index, min(pair_stop(gated, index), len(gated.blocks))):
        if point in masks:
            keep, _ = ChannelSets(masks[point][:1]).present()
            if keep is not None:
                keeps[point] = keep
    return prune_at_rest(dense, keeps)


def _speedup(seconds, dense_macs: float, executed_macs: float) -> dict:
    measured = ratio(seconds, "dense", "sliced").summary()
    ideal = dense_macs / executed_macs
    return {**measured, "ideal_speedup": ideal,
            "share_of_ideal": measured["ratio_median"] / ideal}


@torch.no_grad()
def bench_inference(gated: GatedNetwork, dense: GatedNetwork, images: torch.Tensor,
                    batch_sizes: tuple[int, ...], repeats: int, exported=None,
                    calls_per_timing: dict[int, int] | None = None) -> dict:
    """Per batch size: whole-network and per-gated-point speedups, measured and ideal."""
    gated.set_gate_noise(0.0)
    results = {}
    for batch_size in batch_sizes:
        x = images[:batch_size]
        calls = (calls_per_timing or CALLS_PER_TIMING).get(batch_size, 3)
        output = gated.forward_with_masks(x, sliced=True)
        cost = forward_cost(gated, output.masks)
        whole = alternate({"sliced": lambda x=x: gated.forward_with_masks(x, sliced=True),
                           "dense": lambda x=x: dense(x)}, repeats, calls)
        row = {"whole_network": _speedup(whole, cost.dense_macs,
                                         float(cost.executed_macs.mean())),
               "channels_off": float(cost.gated_sparsity.mean())}
        if exported is not None:
            at_rest = alternate({"sliced": lambda x=x: exported(x), "dense": lambda x=x: dense(x)},
                                repeats, calls)
            row["exported_whole_network"] = _speedup(at_rest, cost.dense_macs,
                                                     float(cost.executed_macs.mean()))
        masks = dict(zip(gated.gated_layers, output.masks, strict=True))
        active = {point: mask.sum(dim=1) for point, mask in masks.items()}
        for index in gated.gated_layers:
            stop, layer_input = pair_stop(gated, index), dense.features(x, index)
            dense_pair = partial(run_pair, dense, index, stop, layer_input, False)
            pair = alternate({"sliced": partial(run_pair, gated, index, stop, layer_input, True),
                              "dense": dense_pair}, repeats, calls)
            macs = pair_macs(gated, index, active)
            row[f"layer{index + 1}_and_next"] = _speedup(pair, *macs)
            if batch_size == 1:
                pruned = pruned_pair(dense, gated, index, masks)
                floor = alternate({"sliced": partial(run_pair, pruned, index, stop, layer_input,
                                                     False),
                                   "dense": dense_pair}, repeats, calls)
                row[f"layer{index + 1}_and_next_pruned_beforehand"] = _speedup(floor, *macs)
        results[f"batch{batch_size}"] = row
    return results
