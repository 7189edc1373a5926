import pytest
import torch

from mglightning.models import build_network, forward_cost

# Hand counts of multiply-accumulates for 3×32×32 inputs and 10 classes (3×3 convs, padding 1):
# conv: C_out·C_in·9·H·W at the conv's input resolution; linear: out·in.
CNN4_HAND = 32 * 3 * 9 * 32 * 32 + 64 * 32 * 9 * 16 * 16 + 128 * 64 * 9 * 8 * 8 + 10 * 128 * 4 * 4
CNN7_HAND = (
    32 * 3 * 9 * 32 * 32
    + 32 * 32 * 9 * 32 * 32  # conv1, conv2 at 32×32, then max-pool
    + 64 * 32 * 9 * 16 * 16
    + 64 * 64 * 9 * 16 * 16  # conv3, conv4 at 16×16, then max-pool
    + 128 * 64 * 9 * 8 * 8
    + 128 * 128 * 9 * 8 * 8  # conv5, conv6 at 8×8, then global pool
    + 10 * 128
)


@pytest.mark.parametrize(
    ("name", "gated", "hand"), [("cnn4", [3], CNN4_HAND), ("cnn7", [5, 6], CNN7_HAND)]
)
def test_dense_macs_match_hand_count(name, gated, hand):
    network = build_network(name, (3, 32, 32), 10, gated_layers=gated)
    masks = network.forward_with_masks(torch.randn(2, 3, 32, 32)).masks
    assert forward_cost(network, masks).dense_macs == hand


def test_cnn4_executed_macs_and_sparsity_follow_the_masks():
    network = build_network("cnn4", (3, 32, 32), 10, gated_layers=[3])
    mask = torch.zeros(3, 128)
    mask[0, :128] = 1  # all on
    mask[1, :32] = 1  # 96 off
    # mask[2]: all off
    cost = forward_cost(network, [mask])
    gate_macs = 64 * 16 + 16 * 128
    per_conv3_channel = 64 * 9 * 8 * 8
    per_head_channel = 10 * 4 * 4
    off = torch.tensor([0.0, 96.0, 128.0])
    expected = CNN4_HAND + gate_macs - off * (per_conv3_channel + per_head_channel)
    torch.testing.assert_close(cost.executed_macs, expected)
    torch.testing.assert_close(cost.gated_sparsity, off / 128)
    torch.testing.assert_close(cost.flops_skipped, 1 - expected / CNN4_HAND)


def test_a_fixed_channel_pruning_of_an_ungated_network_costs_no_gate():
    network = build_network("cnn4", (3, 32, 32), 10)  # no gates: structured SNIP's network
    mask = torch.zeros(1, 128)
    mask[0, :40] = 1  # 88 of conv3's channels pruned
    cost = forward_cost(network, [mask], blocks=[2])
    expected = CNN4_HAND - 88 * (64 * 9 * 8 * 8 + 10 * 4 * 4)
    torch.testing.assert_close(cost.executed_macs, torch.tensor([float(expected)]))
    torch.testing.assert_close(cost.gated_sparsity, torch.tensor([88 / 128]))


def test_cnn7_next_gated_layer_reads_only_active_channels():
    network = build_network("cnn7", (3, 32, 32), 10, gated_layers=[5, 6])
    conv5, conv6 = torch.zeros(1, 128), torch.zeros(1, 128)
    conv5[0, :64], conv6[0, :32] = 1, 1
    cost = forward_cost(network, [conv5, conv6])
    gates = 2 * (64 * 16 + 16 * 128)  # conv6's gate reads only conv5's 64 active channels
    expected = (
        CNN7_HAND
        - 128 * 64 * 9 * 64
        - 128 * 128 * 9 * 64
        - 10 * 128
        + 64 * 64 * 9 * 64
        + 32 * 64 * 9 * 64
        + 10 * 32
        + gates
    )
    assert float(cost.executed_macs[0]) == expected
    torch.testing.assert_close(cost.layer_sparsity[0], torch.tensor([0.5]))
    torch.testing.assert_close(cost.layer_sparsity[1], torch.tensor([0.75]))


@pytest.mark.parametrize(
    ("name", "shape", "gated"),
    [
        ("mlp2", (1, 28, 28), [1]),
        ("cnn4", (1, 28, 28), [3]),
        ("cnn4", (3, 32, 32), [1, 2, 3]),
        ("cnn7", (3, 32, 32), [5, 6]),
    ],
)
def test_sliced_forward_equals_masked_dense_forward(name, shape, gated):
    torch.manual_seed(0)
    network = build_network(name, shape, 7, gated_layers=gated)
    for block in network.blocks:  # push some channels off for every input
        if block.gate is not None:
            with torch.no_grad():
                block.gate.out.bias[: block.spec.out // 2] = -50.0
    x = torch.randn(6, *shape)
    dense, sliced = network.forward_with_masks(x), network.forward_with_masks(x, sliced=True)
    torch.testing.assert_close(sliced.logits, dense.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(dense.masks, sliced.masks, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sliced", [False, True])
def test_conv_blocks_run_channels_last_from_the_input_on(sliced):
    """The input is made channels-last once, so no block copies its (wider) output to that
    layout before pooling; the logits are the same bits as from an NCHW-held network."""
    torch.manual_seed(0)
    network = build_network("cnn4", (3, 32, 32), 10, gated_layers=[3])  # 1-based: conv3
    layouts = []
    for block in network.blocks:
        block.register_forward_hook(lambda module, inputs, output: layouts.append(
            (inputs[0].is_contiguous(memory_format=torch.channels_last),
             output[0].is_contiguous(memory_format=torch.channels_last))))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits = network.forward_with_masks(x, sliced=sliced).logits
        features = network.features(x, 2)
    assert layouts[:4] == [(True, True)] * 4
    assert features.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(logits, network.forward_with_masks(
        x.contiguous(memory_format=torch.channels_last), sliced=sliced).logits)


def test_the_nchw_layout_keeps_nchw_and_computes_the_same_logits():
    """The layout option vmap needs (set_layout): NCHW all the way, the same logits up to the
    kernels' summation order, and channels-last back on when asked."""
    torch.manual_seed(0)
    network = build_network("cnn4", (3, 16, 16), 5, gated_layers=[3])
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        channels_last = network(x)
        network.set_layout(channels_last=False)
        features = network.features(x, 2)
        nchw = network(x)
        network.set_layout(channels_last=True)
        again = network(x)
    assert features.is_contiguous() and not features.is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(nchw, channels_last, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, channels_last)
    assert all(block.channels_last for block in network.blocks)


def test_backbones_fit_any_input_shape_and_class_count():
    for name in ("mlp2", "cnn4", "cnn7"):
        for shape, classes in [((1, 28, 28), 10), ((3, 32, 32), 100), ((1, 16, 16), 3)]:
            network = build_network(name, shape, classes)
            assert network(torch.randn(2, *shape)).shape == (2, classes)


def test_unknown_backbone_is_a_clear_error():
    """(A gated layer the backbone lacks is the config walker's: tests/test_config.py.)"""
    with pytest.raises(ValueError, match="model.name"):
        build_network("resnet", (1, 28, 28), 10)
