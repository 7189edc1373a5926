"""MetaSNIP's adaptation (METHOD.md §5): exact keep fraction, highest saliency, pruned stay zero;
its structured twin: channel saliency against finite differences, channels off for every input,
and its keep fraction for a MAC count (METHOD.md §7.4) against a scan."""

import pytest
import torch
import torch.nn.functional as F

from mglightning.adaptation.snip import (
    channel_saliency,
    keep_fraction_for_macs,
    kept_channels,
    prunable_weights,
    pruned_macs,
    snip,
    snip_channels,
    snip_masks,
)
from mglightning.models import build_network


def network_and_batch(gated_layers=()):
    torch.manual_seed(0)
    network = build_network("cnn4", (1, 8, 8), 4, gated_layers=list(gated_layers)).double()
    images = torch.randn(12, 1, 8, 8, dtype=torch.float64)
    return network, images, torch.randint(0, 4, (12,))


def hand_saliency(network, images, labels):
    """|w · ∂L/∂w| of every conv/linear weight of an ungated network, by a plain backward."""
    network.zero_grad()
    F.cross_entropy(network(images), labels).backward()
    layers = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    return torch.cat([(m.weight * m.weight.grad).abs().reshape(-1) for m in layers])


def test_prunable_weights_are_the_conv_and_linear_weights_not_the_gates():
    network, _, _ = network_and_batch(gated_layers=[3])
    names = {id(p): n for n, p in network.named_parameters()}
    pruned = [names[id(w)] for w in prunable_weights(network)]
    assert pruned == [
        "blocks.0.op.weight",
        "blocks.1.op.weight",
        "blocks.2.op.weight",
        "head.weight",
    ]


def test_masks_keep_exactly_the_fraction_of_highest_saliency():
    network, images, labels = network_and_batch()
    saliency = hand_saliency(network, images, labels)
    for keep_fraction in (0.05, 0.3, 0.77):
        masks = snip_masks(network, images, labels, keep_fraction)
        kept = torch.cat([mask.reshape(-1) for mask in masks])
        assert int(kept.sum()) == round(keep_fraction * saliency.numel())
        assert saliency[kept].min() >= saliency[~kept].max()


def test_one_step_moves_only_kept_weights_and_pruned_ones_stay_zero():
    network, images, labels = network_and_batch()
    masks = snip_masks(network, images, labels, 0.2)
    # The expected step, by hand: the gradient of the pruned network, applied to kept weights.
    pruned_network = network_and_batch()[0]
    with torch.no_grad():
        for weight, mask in zip(prunable_weights(pruned_network), masks, strict=True):
            weight.mul_(mask)
    pruned_network.zero_grad()
    F.cross_entropy(pruned_network(images), labels).backward()
    lr = 0.1
    measured = snip(network, images, labels, lr, keep_fraction=0.2)
    for weight, hand_weight, mask in zip(
        prunable_weights(network), prunable_weights(pruned_network), masks, strict=True
    ):
        assert torch.all(weight[~mask] == 0)
        expected = hand_weight - lr * hand_weight.grad
        torch.testing.assert_close(weight[mask], expected[mask].detach())
    head_bias = pruned_network.head.bias
    torch.testing.assert_close(network.head.bias, (head_bias - lr * head_bias.grad).detach())
    total = sum(mask.numel() for mask in masks)
    assert measured["sparsity"] == 1 - round(0.2 * total) / total


def loss_with_channel_scale(network, images, labels, block, scale):
    """The loss with block ``block``'s output channels multiplied by ``scale`` (C,), by hand:
    the blocks, the scaling, then the rest of the network."""
    x = images
    for index, layer in enumerate(network.blocks):
        if layer.spec.kind == "linear" and x.dim() > 2:
            x = x.flatten(1)
        x = layer(x, temperature=1.0)[0]
        if index == block:
            x = x * scale[:, None, None]
    return F.cross_entropy(network.head(x.flatten(1)), labels)


def test_channel_saliency_is_the_mask_gradient_by_finite_differences():
    network, images, labels = network_and_batch()
    (saliency,) = channel_saliency(network, images, labels, blocks=[2])
    step = 1e-6
    for channel in (0, 5, 17):
        up, down = torch.ones(saliency.numel(), dtype=torch.float64), torch.ones(
            saliency.numel(), dtype=torch.float64)
        up[channel] += step
        down[channel] -= step
        with torch.no_grad():
            slope = (loss_with_channel_scale(network, images, labels, 2, up)
                     - loss_with_channel_scale(network, images, labels, 2, down)) / (2 * step)
        torch.testing.assert_close(saliency[channel], slope.abs(), rtol=1e-5, atol=1e-9)


def test_snip_channels_switches_the_least_salient_channels_off_for_every_input():
    network, images, labels = network_and_batch()
    (saliency,) = channel_saliency(network, images, labels, blocks=[2])
    channels = saliency.numel()
    measured = snip_channels(network, images, labels, lr=0.1, keep_fraction=0.25, layers=[3])
    conv3 = network.blocks[2].op
    off = (conv3.weight.flatten(1).abs().sum(dim=1) == 0) & (conv3.bias == 0)
    assert int(off.sum()) == channels - round(0.25 * channels)  # they stayed zero after the step
    assert saliency[~off].min() >= saliency[off].max()
    with torch.no_grad():
        features = images
        for layer in network.blocks[:3]:
            features = layer(features, temperature=1.0)[0]
    assert torch.all(features[:, off] == 0)  # off for every input, not on average
    assert measured["sparsity"] == measured["sparsity_layer3"] == int(off.sum()) / channels
    assert 0 < measured["flops_skipped"] < 1


def test_pruned_macs_count_the_kept_channels_by_hand():
    """cnn4 on 8×8 (2×2 max-pool after each conv: 8, 4, 2, 1), conv2 and conv3 pruned to k2
    and k3 channels: conv1 32·1·9·64, conv2 k2·32·9·16, conv3 k3·k2·9·4, head 4·k3."""
    network, _, _ = network_and_batch()
    for k2, k3 in ((64, 128), (10, 7), (1, 1)):
        hand = 32 * 9 * 64 + k2 * 32 * 9 * 16 + k3 * k2 * 9 * 4 + 4 * k3
        assert pruned_macs(network, [1, 2], [k2, k3]) == hand


def scanned_macs(network, layers, steps=20000):
    """Every keep fraction i / steps as structured SNIP rounds it, and its executed MACs:
    {kept counts: (MACs, a keep fraction giving them)}."""
    channels = [network.describe().points[layer - 1].channels for layer in layers]
    found = {}
    for step in range(1, steps + 1):
        kept = tuple(kept_channels(step / steps, total) for total in channels)
        found.setdefault(kept, step / steps)
    return {kept: (pruned_macs(network, [layer - 1 for layer in layers], list(kept)), keep)
            for kept, keep in found.items()}


@pytest.mark.parametrize(("backbone", "layers"), [("cnn4", [2, 3]), ("cifar_resnet", [1, 2, 3])])
def test_keep_fraction_for_macs_is_the_best_keep_fraction_of_a_scan(backbone, layers):
    """Its MACs are the closest to the target among all keep fractions of a fine scan, for
    targets between the scanned counts, on them, below the least and above the dense."""
    torch.manual_seed(0)
    network = build_network(backbone, (1, 8, 8), 4)
    blocks = [layer - 1 for layer in layers]
    scan = sorted(macs for macs, _ in scanned_macs(network, layers).values())
    targets = [scan[0] - 1, scan[-1] + 1, scan[len(scan) // 3]]
    targets += [low + share * (high - low) for low, high in zip(scan[5:60:9], scan[6:61:9],
                                                               strict=True) for share in (0.3, 0.7)]
    channels = [network.describe().points[block].channels for block in blocks]
    for target in targets:
        keep = keep_fraction_for_macs(network, layers, target)
        macs = pruned_macs(network, blocks, [kept_channels(keep, total) for total in channels])
        assert abs(macs - target) == min(abs(scanned - target) for scanned in scan)
    assert keep_fraction_for_macs(network, layers, scan[-1] + 1) == 1.0
