"""The residual backbone, tested as cnn4 is, with either normalization (``norm``): MACs by
hand, the sliced forward against the dense one, the export against both, the two stages of
adaptation, both SNIPs, the Group Lasso groups; which norm sits where."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import sliced_and_dense_stage_two

from mglightning.adaptation.snip import (
    channel_saliency,
    prunable_weights,
    snip_channels,
)
from mglightning.adaptation.steps import adapt_backbone, adapt_gates, two_stage
from mglightning.build import compose_config
from mglightning.config import validate
from mglightning.errors import ConfigError
from mglightning.export import task_network
from mglightning.federated.flat import FlatParameters
from mglightning.federated.prox import GroupLasso
from mglightning.models import build_network, forward_cost
from mglightning.models.resnet import NORMS

both_norms = pytest.mark.parametrize("norm", NORMS)

# A ResNet of one block a stage, widths 2-3-4, on 1×8×8 inputs, 5 classes, gates of 4 hidden
# units: every conv by hand, C_out · C_in · k² · H_out · W_out.
STEM = 2 * 1 * 9 * 8 * 8
BLOCK1 = 2 * 2 * 9 * 8 * 8 + 2 * 2 * 9 * 8 * 8  # 2 → 2 at 8×8, no shortcut conv
BLOCK2 = 3 * 2 * 9 * 4 * 4 + 3 * 3 * 9 * 4 * 4 + 3 * 2 * 4 * 4  # stride 2, 1×1 shortcut
BLOCK3 = 4 * 3 * 9 * 2 * 2 + 4 * 4 * 9 * 2 * 2 + 4 * 3 * 2 * 2
HEAD = 5 * 4
TINY_HAND = STEM + BLOCK1 + BLOCK2 + BLOCK3 + HEAD


def tiny_resnet(gated_layers=(1, 2, 3), **options):
    torch.manual_seed(0)
    return build_network("cifar_resnet", (1, 8, 8), 5, gated_layers=list(gated_layers),
                         stage_widths=[2, 3, 4], gate_hidden=4, **options)


def resnet_with_dead_channels(shape=(1, 16, 16), classes=4, **options):
    """ResNet-8 (16-32-64) gated in every block; in each, the first half of the channels off
    for every input, the rest on for half of the inputs: their gate bias moves to the median
    logit (midway between two inputs'), block by block, as a block's input depends on the
    gates before it."""
    torch.manual_seed(0)
    network = build_network("cifar_resnet", shape, classes, gated_layers=[1, 2, 3], **options)
    images = torch.randn(24, *shape) + 2 * torch.randn(24, 1, 1, 1)  # inputs far apart
    labels = torch.randint(0, classes, (24,))
    with torch.no_grad():
        for index, block in enumerate(network.blocks):
            bias, half = block.gate.out.bias, block.gate.out.bias.numel() // 2
            bias[:half] = -50.0
            logits = network.forward_with_masks(images).gate_logits[index]  # (B, C)
            bias[half:] -= logits[:, half:].quantile(0.5, dim=0, interpolation="midpoint")
    return network, images, labels


@both_norms
def test_dense_and_executed_macs_match_the_hand_count(norm):
    network = tiny_resnet(norm=norm)
    masks = [torch.ones(2, 2), torch.ones(2, 3), torch.ones(2, 4)]
    masks[0][1, 0] = 0  # input 1: one of block 1's two channels off
    masks[2][1, :3] = 0  # and three of block 3's four
    cost = forward_cost(network, masks)
    assert cost.dense_macs == TINY_HAND
    gates = (2 * 4 + 4 * 2) + (2 * 4 + 4 * 3) + (3 * 4 + 4 * 4)  # read C_in pooled, write C
    off_input_1 = (1 * (2 * 9 * 64) + 1 * (2 * 9 * 64)  # block 1: conv1 filter, conv2 column
                   + 3 * (3 * 9 * 4) + 3 * (4 * 9 * 4))  # block 3
    torch.testing.assert_close(cost.executed_macs,
                               torch.tensor([TINY_HAND + gates, TINY_HAND + gates - off_input_1],
                                            dtype=torch.float32))
    torch.testing.assert_close(cost.gated_sparsity, torch.tensor([0.0, 4 / 9]))


@both_norms
def test_ungated_blocks_cost_no_gate_and_their_channels_are_all_on(norm):
    network = tiny_resnet(gated_layers=[2], norm=norm)
    output = network.forward_with_masks(torch.randn(3, 1, 8, 8))
    assert len(output.masks) == 1 and output.masks[0].shape == (3, 3)
    cost = forward_cost(network, [torch.ones(3, 3)])
    assert torch.equal(cost.executed_macs, torch.full((3,), float(TINY_HAND + 2 * 4 + 4 * 3)))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet_fits_mnist_and_cifar_shapes_and_strides_twice(shape):
    network = build_network("cifar_resnet", shape, 10, blocks_per_stage=2)
    side = shape[1]
    assert [s[1] for s in network.layer_shapes] == [side] * 3 + [(side + 1) // 2] * 2 + [
        ((side + 1) // 2 + 1) // 2] * 2
    assert [s[0] for s in network.layer_shapes] == [16, 16, 16, 32, 32, 64, 64]
    assert network(torch.randn(2, *shape)).shape == (2, 10)


def test_the_width_multiplier_scales_every_stage():
    network = build_network("cifar_resnet", (1, 8, 8), 5, width=0.5)
    assert [block.conv1.out_channels for block in network.blocks] == [8, 16, 32]
    assert network.stem_conv.out_channels == 8


@both_norms
def test_sliced_forward_equals_masked_dense_forward_and_gate_logits_make_the_masks(norm):
    network, images, _ = resnet_with_dead_channels(norm=norm)
    dense = network.forward_with_masks(images)
    sliced = network.forward_with_masks(images, sliced=True)
    torch.testing.assert_close(sliced.logits, dense.logits, rtol=1e-4, atol=1e-5)
    for dense_mask, sliced_mask, logits in zip(dense.masks, sliced.masks, sliced.gate_logits,
                                               strict=True):
        assert torch.equal(dense_mask, sliced_mask)
        assert torch.equal(sliced_mask, (logits > 0).float())
        assert 0 < int(sliced_mask.amax(0).sum()) < sliced_mask.shape[1]


@both_norms
def test_an_inputs_output_does_not_depend_on_its_batch(norm):
    """Per-sample norms: an input alone or among others, the same gates and
    logits."""
    network, images, _ = resnet_with_dead_channels(norm=norm)
    together = network.forward_with_masks(images, sliced=True)
    for index in (0, 7):
        alone = network.forward_with_masks(images[index:index + 1], sliced=True)
        torch.testing.assert_close(alone.logits[0], together.logits[index],
                                   rtol=1e-4, atol=1e-5)
        for mask_alone, mask_together in zip(alone.masks, together.masks, strict=True):
            assert torch.equal(mask_alone[0], mask_together[index])


def parameter_count(module) -> int:
    return sum(param.numel() for param in module.parameters())


@both_norms
def test_export_removes_always_off_channels_and_equals_the_gated_network(norm):
    network, images, _ = resnet_with_dead_channels(classes=5, norm=norm)
    with torch.no_grad():  # block 3: every kept channel on for every input, so no gate
        gate = network.blocks[2].gate.out
        gate.bias[gate.bias.numel() // 2:] = 50.0
    exported = task_network(network, images)
    with torch.no_grad():
        masks = network.forward_with_masks(images).masks
        expected = network.forward_with_masks(images, sliced=True).logits
        torch.testing.assert_close(exported(images), expected, rtol=1e-5, atol=1e-5)
    removed = 0
    for block, mask in zip(network.blocks, masks, strict=True):
        off = int((mask.amax(0) == 0).sum())
        in_channels, channels = block.conv1.in_channels, block.conv1.out_channels
        per_channel = in_channels * 9 + 2 + channels * 9 + block.gate.hidden.out_features + 1
        removed += off * per_channel  # filter, norm affine, conv2 column, gate row
    gate3 = network.blocks[2].gate
    kept3 = int((masks[2].amax(0) > 0).sum())
    removed += parameter_count(gate3) - kept3 * (gate3.hidden.out_features + 1)  # no gate left
    assert exported.blocks[2].gate is None and exported.blocks[0].gate is not None
    assert parameter_count(exported) == parameter_count(network) - removed


def changed(before, after):
    previous = dict(before.named_parameters())
    return {name for name, p in after.named_parameters() if not torch.equal(p, previous[name])}


@both_norms
def test_stage_one_changes_only_the_gates(norm):
    network, images, labels = resnet_with_dead_channels(norm=norm)
    adapted = copy.deepcopy(network)
    adapt_gates(adapted, images, labels, lr=0.5)
    moved = changed(network, adapted)
    assert moved and all(".gate." in name for name in moved)


@both_norms
def test_stage_two_changes_only_the_backbone_and_only_active_channels(norm):
    network, images, labels = resnet_with_dead_channels(norm=norm)
    adapted = copy.deepcopy(network)
    adapt_backbone(adapted, images, labels, lr=0.5)
    assert not any(".gate." in name for name in changed(network, adapted))
    with torch.no_grad():
        masks = network.forward_with_masks(images).masks
    points = network.describe().points
    for index, mask in enumerate(masks):
        active = mask.amax(0) > 0
        before, after = network.blocks[index], adapted.blocks[index]
        assert len(points[index].producers) == 3
        for name in points[index].producers:  # filters, and the norm's affine
            was, now = network.get_parameter(name), adapted.get_parameter(name)
            assert torch.equal(now[~active], was[~active]), name
        assert torch.equal(after.conv2.weight[:, ~active], before.conv2.weight[:, ~active])
        assert not torch.equal(after.conv1.weight[active], before.conv1.weight[active])


@both_norms
def test_sliced_stage_two_equals_the_dense_step_with_constant_masks(monkeypatch, norm):
    network, images, labels = resnet_with_dead_channels(norm=norm)
    sliced, dense = sliced_and_dense_stage_two(network, images, labels, monkeypatch, lr=0.3)
    for (name, a), (_, b) in zip(sliced.named_parameters(), dense.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@both_norms
def test_two_stage_sharing_the_stem_equals_the_two_stages_in_turn(norm):
    network, images, labels = resnet_with_dead_channels(norm=norm)
    shared, in_turn = copy.deepcopy(network), copy.deepcopy(network)
    two_stage(shared, images, labels, 0.1)
    adapt_gates(in_turn, images, labels, 0.1)
    adapt_backbone(in_turn, images, labels, 0.1)
    for (name, p), q in zip(shared.named_parameters(), in_turn.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@both_norms
def test_snip_scores_every_conv_and_the_head_not_the_gates_or_norms(norm):
    network = tiny_resnet(norm=norm)
    names = {id(p): n for n, p in network.named_parameters()}
    assert [names[id(w)] for w in prunable_weights(network)] == [
        "stem_conv.weight",
        "blocks.0.conv1.weight", "blocks.0.conv2.weight",
        "blocks.1.conv1.weight", "blocks.1.conv2.weight", "blocks.1.shortcut_conv.weight",
        "blocks.2.conv1.weight", "blocks.2.conv2.weight", "blocks.2.shortcut_conv.weight",
        "head.weight",
    ]


def double_batch(norm):
    network = tiny_resnet(gated_layers=(), norm=norm).double()
    torch.manual_seed(1)
    return network, torch.randn(10, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (10,))


def loss_with_channel_scale(network, images, labels, block, scale):
    """The loss with block ``block``'s first-conv channels multiplied by ``scale``, by hand."""
    x = network.stem(images)
    for index, layer in enumerate(network.blocks):
        if index != block:
            x = layer(x, temperature=1.0).features
            continue
        hidden = torch.relu(layer.norm1(layer.conv1(x)))
        y = layer.norm2(layer.conv2(hidden * scale[:, None, None]))
        shortcut = (x if layer.shortcut_conv is None
                    else layer.shortcut_norm(layer.shortcut_conv(x)))
        x = torch.relu(y + shortcut)
    return F.cross_entropy(network.head(x.mean(dim=(2, 3))), labels)


@both_norms
def test_channel_saliency_is_the_mask_gradient_by_finite_differences(norm):
    network, images, labels = double_batch(norm)
    (saliency,) = channel_saliency(network, images, labels, blocks=[1])
    step = 1e-6
    for channel in range(3):
        up, down = (torch.ones(3, dtype=torch.float64) for _ in range(2))
        up[channel] += step
        down[channel] -= step
        with torch.no_grad():
            slope = (loss_with_channel_scale(network, images, labels, 1, up)
                     - loss_with_channel_scale(network, images, labels, 1, down)) / (2 * step)
        torch.testing.assert_close(saliency[channel], slope.abs(), rtol=1e-5, atol=1e-9)


@both_norms
def test_snip_channels_switches_channels_off_for_every_input(norm):
    network, images, labels = double_batch(norm)
    measured = snip_channels(network, images, labels, lr=0.1, keep_fraction=0.5, layers=[3])
    block = network.blocks[2]
    off = block.conv1.weight.flatten(1).abs().sum(1) == 0
    assert int(off.sum()) == 2  # of 4, round(0.5 · 4) kept
    assert torch.all(block.norm1.weight[off] == 0) and torch.all(block.norm1.bias[off] == 0)
    with torch.no_grad():
        hidden = torch.relu(block.norm1(block.conv1(network.features(images, 2))))
    assert torch.all(hidden[:, off] == 0)
    assert measured["sparsity_layer3"] == 0.5
    skipped = 2 * (3 * 9 * 4 + 4 * 9 * 4)  # two filters of conv1, two columns of conv2
    assert measured["executed_macs"] == TINY_HAND - skipped


@both_norms
def test_group_lasso_groups_are_the_gate_rows_of_every_gated_block(norm):
    network = tiny_resnet(gated_layers=[1, 3], norm=norm)
    flat = FlatParameters(network, network.is_gate_parameter)
    lasso = GroupLasso.for_network(1.0, flat, network)
    by_hand = torch.cat([
        torch.cat([gate.out.weight, gate.out.bias[:, None]], dim=1).norm(dim=1)  # (C,)
        for gate in (network.blocks[0].gate, network.blocks[2].gate)])
    assert lasso.num_groups == 2 + 4
    torch.testing.assert_close(lasso.group_norms(flat.vector.detach()), by_hand)


@pytest.mark.parametrize(("model", "gated", "problem"), [
    ("resnet8", "[4]", "model.gated_layers=[4]: resnet8 has layers 1..3, not [4]"),
    ("resnet14", "[6]", None),
    ("resnet20", "[1,9]", None),
])
def test_the_config_checks_gated_blocks_against_the_depth(model, gated, problem):
    cfg = compose_config([f"model={model}", f"model.gated_layers={gated}", "dataset=synthetic"])
    if problem is None:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            validate(cfg)


def group_counts(module):
    """``{name: (groups, channels)}`` of every GroupNorm in ``module``."""
    return {name: (norm.num_groups, norm.num_channels) for name, norm in module.named_modules()
            if isinstance(norm, torch.nn.GroupNorm)}


@pytest.mark.parametrize("overrides", [[], ["model.norm=layer"], ["model.norm=channel"]])
def test_the_stream_is_normalized_over_all_channels_with_layer_the_gated_ones_each_alone(
        overrides):
    """``layer`` (the default, and the YAMLs'): GroupNorm(1, C) on the stem, each second conv
    and each shortcut conv, GroupNorm(C, C) on each first conv's (gated) channels; ``channel``:
    GroupNorm(C, C) everywhere. No conv has a bias (the norms' shifts stand in for them)."""
    cfg = compose_config(["model=resnet8", "model.stage_widths=[2,3,4]", "dataset=synthetic",
                          *overrides])
    torch.manual_seed(0)
    network = build_network("cifar_resnet", (1, 8, 8), 5, stage_widths=[2, 3, 4],
                            **({"norm": cfg.model.norm} if overrides else {}))
    stream = 1 if cfg.model.norm == "layer" else None  # None: one group per channel
    widths = {"stem_norm": 2, "blocks.0.norm1": 2, "blocks.0.norm2": 2, "blocks.1.norm1": 3,
              "blocks.1.norm2": 3, "blocks.1.shortcut_norm": 3, "blocks.2.norm1": 4,
              "blocks.2.norm2": 4, "blocks.2.shortcut_norm": 4}
    assert group_counts(network) == {
        name: (channels if name.endswith("norm1") or stream is None else stream, channels)
        for name, channels in widths.items()}
    assert not any(name.endswith(".bias") for name, _ in network.named_parameters()
                   if "conv" in name)


def test_channel_is_instance_normalization_everywhere_as_before_the_option():
    """``channel`` is the ResNet before ``model.norm``: every norm, the stream's too, an
    instance normalization (each channel of each sample over its positions), by hand."""
    network = tiny_resnet(gated_layers=(), norm="channel").double()
    images = torch.randn(4, 1, 8, 8, dtype=torch.float64)

    def instance(norm, x):
        return F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)

    x = torch.relu(instance(network.stem_norm, network.stem_conv(images)))
    for block in network.blocks:
        y = instance(block.norm2, block.conv2(torch.relu(instance(block.norm1, block.conv1(x)))))
        x = torch.relu(y + (x if block.shortcut_conv is None
                            else instance(block.shortcut_norm, block.shortcut_conv(x))))
    torch.testing.assert_close(network(images), network.head(x.mean(dim=(2, 3))))


def test_the_config_refuses_an_unknown_norm():
    cfg = compose_config(["model=resnet8", "model.norm=batch", "dataset=synthetic"])
    with pytest.raises(ConfigError, match=re.escape("model.norm='batch': must be one of")):
        validate(cfg)
