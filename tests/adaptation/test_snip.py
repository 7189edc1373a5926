"""MetaSNIP's adaptation (SPEC §5): exact keep fraction, highest saliency, pruned stay zero."""

import torch
import torch.nn.functional as F

from mglightning.adaptation.snip import prunable_weights, snip, snip_masks
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
