"""The gate-point description of the chain backbones, the channel sets, pruning at rest and
the width multiplier, against hand counts and the networks' own forward passes."""

import pytest
import torch

from mglightning.models import (
    ChannelSets,
    GatePoint,
    Reader,
    build_network,
    dense_macs,
    forward_cost,
    prune_at_rest,
    width_for_macs,
)
from mglightning.models.backbones import cifar_resnet, cnn4
from mglightning.models.cost import closest_index


def test_cnn4_describes_each_blocks_channels_and_what_reads_them():
    network = build_network("cnn4", (1, 16, 16), 5, gated_layers=[2, 3])
    points = network.describe().points
    assert points[0] == GatePoint(1, 32, ("blocks.0.op.weight", "blocks.0.op.bias"),
                                  (Reader("blocks.1.op.weight"),
                                   Reader("blocks.1.gate.hidden.weight")))
    assert points[2] == GatePoint(3, 128, ("blocks.2.op.weight", "blocks.2.op.bias"),
                                  (Reader("head.weight", 2 * 2),), "blocks.2.gate")
    assert points[2].group == ("blocks.2.gate.out.weight", "blocks.2.gate.out.bias")
    assert network.describe().gated == [1, 2] == network.gated_layers


def test_mlp2s_gate_reads_the_flattened_image():
    network = build_network("mlp2", (1, 4, 4), 3, gated_layers=[1])
    ops = network.describe().ops
    assert [(op.in_channels, op.per_pair) for op in (ops[0], ops[-1])] == [(1, 16), (100, 1)]
    assert ops[1].inputs_per_channel == 16 and ops[1].outputs == 100


def test_channel_sets_of_hand_made_masks():
    sets = ChannelSets(torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1.0]]))
    assert sets.always_off.tolist() == [True, False, False, False]
    assert sets.always_on.tolist() == [False, True, False, False]
    assert sets.input_dependent.tolist() == [False, False, True, True]
    assert sets.present()[0].tolist() == [1, 2, 3]
    assert ChannelSets(torch.ones(2, 3)).present() == (None, True)
    keep, any_on = ChannelSets(torch.zeros(2, 3)).present()
    assert keep.tolist() == [0] and not any_on  # channel 0 stands in, masked to 0


@pytest.mark.parametrize(("name", "shape", "gated", "options"), [
    ("cnn4", (1, 16, 16), [1, 2, 3], {}), ("mlp2", (1, 4, 4), [1], {}),
    ("cnn7", (3, 8, 8), [5, 6], {}),
    ("cifar_resnet", (1, 8, 8), [1, 3], {"norm": "layer"}),
    ("cifar_resnet", (1, 8, 8), [1, 3], {"norm": "channel"}),
])
def test_pruning_at_rest_computes_the_kept_channels_as_the_sliced_forward_does(
        name, shape, gated, options):
    """Channels cut from the weights compute what the sliced forward computes when the gates
    keep exactly those channels; the pruned network describes its smaller self."""
    torch.manual_seed(0)
    network = build_network(name, shape, 4, gated_layers=gated, **options)
    points = network.describe().points
    keeps = {index: torch.arange(0, points[index].channels, 2) for index in network.gated_layers}
    with torch.no_grad():
        for index, keep in keeps.items():  # gates: the kept channels on, the rest off
            gate = network.blocks[index].gate.out
            gate.weight.zero_()
            gate.bias.fill_(-1.0)
            gate.bias[keep] = 1.0
    pruned = prune_at_rest(network, keeps)
    images = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(pruned(images),
                                   network.forward_with_masks(images, sliced=True).logits,
                                   rtol=1e-5, atol=1e-6)
    pruned_points = pruned.describe().points
    for index, keep in keeps.items():
        assert pruned_points[index].channels == len(keep)
    masks = [torch.zeros(1, points[index].channels).index_fill_(1, keep, 1.0)
             for index, keep in keeps.items()]
    fixed_pruning = forward_cost(network.without_gates(), masks, blocks=list(keeps))
    assert float(fixed_pruning.executed_macs) == dense_macs(pruned) < dense_macs(network)


def test_width_multiplier_scales_every_hidden_width_and_one_keeps_the_network():
    torch.manual_seed(0)
    same = build_network("cnn4", (1, 16, 16), 5, width=1.0)
    torch.manual_seed(0)
    default = build_network("cnn4", (1, 16, 16), 5)
    for a, b in zip(same.parameters(), default.parameters(), strict=True):
        assert torch.equal(a, b)
    narrow = build_network("cnn4", (1, 16, 16), 5, width=0.3)
    assert [block.spec.out for block in narrow.blocks] == [10, 19, 38]  # round(0.3 · C)
    assert build_network("mlp2", (1, 4, 4), 3, width=0.001).blocks[0].spec.out == 1


@pytest.mark.parametrize(("backbone", "options"), [(cnn4, {}),
                                                   (cifar_resnet, {"blocks_per_stage": 2})])
def test_width_for_macs_is_the_best_width_of_a_scan(backbone, options):
    def macs(width):
        return dense_macs(backbone((1, 28, 28), 10, width=width, **options))

    widths = [step / 100 for step in range(1, 101)]
    scanned = [macs(width) for width in widths]
    for target in (scanned[49], scanned[49] + 1, (scanned[30] + scanned[31]) / 2 + 0.5, 1.0):
        width = width_for_macs(backbone, (1, 28, 28), 10, target, max_width=1.0,
                               resolution=0.01, **options)
        assert width in widths
        assert abs(macs(width) - target) == min(abs(count - target) for count in scanned)
    assert macs(width_for_macs(backbone, (1, 28, 28), 10, scanned[49], **options)) == scanned[49]


@pytest.mark.parametrize("target", [-1.0, 0.0, 2.4, 2.5, 2.6, 7.0, 100.0])
def test_closest_index_finds_the_cost_nearest_the_target_as_a_scan_does(target):
    """A non-decreasing cost with plateaus: the bisection's index has the nearest cost, and on
    a tie the lower one (the last at or under the target)."""
    costs = [0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 7.0]
    index = closest_index(costs.__getitem__, len(costs), target)
    assert abs(costs[index] - target) == min(abs(cost - target) for cost in costs)
    if target == 2.5:
        assert costs[index] == 2.0
