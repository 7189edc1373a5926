"""Goal 4: inference of the adapted gated network with physical channel slicing (METHOD.md §1)
against the dense backbone, as a measured speedup over the one the MAC counts predict.

Two views: the whole network (sliced ``forward_with_masks`` vs the ungated backbone), and
each gated layer in isolation together with the layer that reads it (the gate, the active
filters only, and the next layer reading only the active channels, vs both layers dense).
At batch 1 the pair is also timed pruned beforehand to the one input's active channels (no
gate, no gathers): what the convolution kernels allow, the floor under any slicing. For
context, the deployed task module (channels off for the whole task removed at rest, compiled
as an AOTInductor package as `make deploy` does,
:mod:`mglightning.export`) is timed against the same dense network.
"""

from __future__ import annotations

import math

import torch

from benchmarks.timing import alternate, ratio
from mglightning.export import input_columns
from mglightning.models.cost import forward_cost, layer_macs
from mglightning.models.network import GatedNetwork, LayerSpec, active_channels

CALLS_PER_TIMING = {1: 200, 64: 8}  # batch size → calls per timed repeat (fewer for slower calls)


def _channels(network: GatedNetwork, index: int) -> int:
    """Output channels of block ``index``, or classes for the head."""
    return (network.head.out_features if index == len(network.blocks)
            else network.blocks[index].spec.out)


def pair_macs(network: GatedNetwork, index: int, active: torch.Tensor) -> tuple[float, float]:
    """(dense, executed) MACs per input of gated block ``index`` and the layer reading it;
    ``active`` is (B,) active channel counts. Executed includes the gate's MLP."""
    block = network.blocks[index]
    in_channels, out_channels = network.layer_shapes[index][0], block.spec.out
    following = _channels(network, index + 1)
    dense = (layer_macs(network, index, in_channels, out_channels)
             + layer_macs(network, index + 1, out_channels, following))
    gate_macs = block.gate.hidden.out_features * (block.gate.hidden.in_features + out_channels)
    executed = (layer_macs(network, index, in_channels, active) + gate_macs
                + layer_macs(network, index + 1, active, following))
    return dense, float(executed.float().mean())


def block_input(network: GatedNetwork, index: int, images: torch.Tensor) -> torch.Tensor:
    """The dense input of block ``index`` of the ungated ``network``, flattened if the block
    is linear."""
    x = network.features(images, index)
    return x.flatten(1) if network.blocks[index].spec.kind == "linear" and x.dim() > 2 else x


def run_pair(network: GatedNetwork, index: int, x: torch.Tensor, sliced: bool) -> torch.Tensor:
    """Block ``index`` and the layer reading it (the next block, or the head); sliced: only
    the active channels."""
    following = index + 1
    y, keep, *_ = network.run_blocks(x, index, following + 1, sliced)
    return y if following < len(network.blocks) else network.head_logits(y, keep)


def pruned_copy(dense: GatedNetwork, index: int, keep: torch.Tensor) -> GatedNetwork:
    """``dense`` with block ``index`` cut to the channels ``keep`` and the layer reading it cut
    to those inputs, weights gathered at rest: the same code path as the dense pair, less work."""
    specs = [LayerSpec(block.spec.kind, len(keep) if i == index else block.spec.out,
                       block.spec.pool) for i, block in enumerate(dense.blocks)]
    pruned = GatedNetwork(dense.input_shape, dense.head.out_features, specs)
    state = dense.state_dict()
    for name in (f"blocks.{index}.op.weight", f"blocks.{index}.op.bias"):
        state[name] = state[name][keep]
    following = (f"blocks.{index + 1}.op.weight" if index + 1 < len(dense.blocks)
                 else "head.weight")
    reads_flattened = following == "head.weight" or dense.blocks[index + 1].spec.kind == "linear"
    area = math.prod(dense.layer_shapes[index + 1][1:]) if reads_flattened else 0
    state[following] = input_columns(state[following], keep, area)
    pruned.load_state_dict(state)
    return pruned


def _speedup(seconds, dense_macs: float, executed_macs: float) -> dict:
    measured = ratio(seconds, "dense", "sliced").summary()
    ideal = dense_macs / executed_macs
    return {**measured, "ideal_speedup": ideal,
            "share_of_ideal": measured["ratio_median"] / ideal}


@torch.no_grad()
def bench_inference(gated: GatedNetwork, dense: GatedNetwork, images: torch.Tensor,
                    batch_sizes: tuple[int, ...], repeats: int, exported=None,
                    calls_per_timing: dict[int, int] | None = None) -> dict:
    """Per batch size: whole-network and per-gated-layer speedups, measured and ideal."""
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
        for index, mask in zip(gated.gated_layers, output.masks, strict=True):
            layer_input = block_input(dense, index, x)
            pair = alternate({"sliced": lambda i=index, v=layer_input: run_pair(gated, i, v, True),
                              "dense": lambda i=index, v=layer_input: run_pair(dense, i, v, False)},
                             repeats, calls)
            macs = pair_macs(gated, index, mask.sum(dim=1))
            row[f"layer{index + 1}_and_next"] = _speedup(pair, *macs)
            if batch_size == 1:
                keep, _ = active_channels(mask[:1])
                pruned = pruned_copy(dense, index, torch.arange(mask.shape[1]) if keep is None
                                     else keep)
                floor = alternate(
                    {"sliced": lambda i=index, v=layer_input, p=pruned: run_pair(p, i, v, False),
                     "dense": lambda i=index, v=layer_input: run_pair(dense, i, v, False)},
                    repeats, calls)
                row[f"layer{index + 1}_and_next_pruned_beforehand"] = _speedup(floor, *macs)
        results[f"batch{batch_size}"] = row
    return results
