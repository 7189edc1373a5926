import copy

import torch
from conftest import sliced_and_dense_stage_two

from mglightning.adaptation.steps import adapt_backbone, adapt_gates, one_step, two_stage
from mglightning.models import build_network


def gated_cnn4_with_dead_channels():
    torch.manual_seed(0)
    network = build_network("cnn4", (1, 16, 16), 4, gated_layers=[3])
    with torch.no_grad():  # channels 0..39 off for every input, the rest decided per input
        network.blocks[2].gate.out.bias[:40] = -100.0
    images, labels = torch.randn(24, 1, 16, 16), torch.randint(0, 4, (24,))
    return network, images, labels


def changed(before, after):
    return {
        name
        for name, p in after.named_parameters()
        if not torch.equal(p, dict(before.named_parameters())[name])
    }


def test_stage_one_changes_only_the_gate():
    network, images, labels = gated_cnn4_with_dead_channels()
    adapted = copy.deepcopy(network)
    adapt_gates(adapted, images, labels, lr=0.5)
    assert changed(network, adapted) and all(".gate." in name for name in changed(network, adapted))


def test_stage_two_changes_only_active_channels_filters():
    network, images, labels = gated_cnn4_with_dead_channels()
    adapted = copy.deepcopy(network)
    adapt_backbone(adapted, images, labels, lr=0.5)
    assert not any(".gate." in name for name in changed(network, adapted))
    with torch.no_grad():
        masks = network.forward_with_masks(images).masks[0]
    active = masks.amax(0) > 0
    assert 0 < int(active.sum()) < 128
    conv3_before, conv3_after = network.blocks[2].op.weight, adapted.blocks[2].op.weight
    assert torch.equal(conv3_after[~active], conv3_before[~active])
    assert torch.equal(adapted.blocks[2].op.bias[~active], network.blocks[2].op.bias[~active])
    per_filter_change = (conv3_after[active] - conv3_before[active]).flatten(1).abs().sum(1)
    assert float((per_filter_change > 0).float().mean()) > 0.5  # some may be dead under ReLU
    # The classifier columns reading inactive channels stay too (flatten is channel-major, 2×2).
    head_delta = (adapted.head.weight - network.head.weight).reshape(4, 128, 4)
    assert torch.all(head_delta[:, ~active] == 0)


def test_sliced_stage_two_equals_the_dense_gradient_step(monkeypatch):
    """Computing only the active subnet is an optimization, not a change of the update:
    it equals a dense step with the masks held constant ("with the masks of φ_t")."""
    network, images, labels = gated_cnn4_with_dead_channels()
    sliced, dense = sliced_and_dense_stage_two(network, images, labels, monkeypatch, lr=0.3)
    for (name, a), (_, b) in zip(sliced.named_parameters(), dense.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_two_stage_without_gates_is_one_step():
    torch.manual_seed(2)
    network = build_network("cnn4", (1, 16, 16), 4)
    images, labels = torch.randn(10, 1, 16, 16), torch.randint(0, 4, (10,))
    a, b = copy.deepcopy(network), copy.deepcopy(network)
    two_stage(a, images, labels, 0.1)
    one_step(b, images, labels, 0.1)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_two_stage_sharing_the_gate_free_prefix_equals_the_two_stages_in_turn():
    network, images, labels = gated_cnn4_with_dead_channels()
    shared, in_turn = copy.deepcopy(network), copy.deepcopy(network)
    two_stage(shared, images, labels, 0.1)
    adapt_gates(in_turn, images, labels, 0.1)
    adapt_backbone(in_turn, images, labels, 0.1)
    assert changed(network, shared) == changed(network, in_turn)
    for (name, p), q in zip(shared.named_parameters(), in_turn.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def assert_same_parameters(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_two_stage_with_two_stage_one_steps_equals_two_gate_steps_by_hand():
    network, images, labels = gated_cnn4_with_dead_channels()
    shared, by_hand = copy.deepcopy(network), copy.deepcopy(network)
    two_stage(shared, images, labels, 0.1, stage1_steps=2)
    adapt_gates(by_hand, images, labels, 0.1)
    adapt_gates(by_hand, images, labels, 0.1)
    adapt_backbone(by_hand, images, labels, 0.1)
    assert_same_parameters(shared, by_hand)
    once = copy.deepcopy(network)
    two_stage(once, images, labels, 0.1)
    assert not torch.equal(once.blocks[2].gate.out.bias, shared.blocks[2].gate.out.bias)


def test_two_stage_gate_lr_is_stage_ones_step_and_zero_skips_it():
    network, images, labels = gated_cnn4_with_dead_channels()
    adapted, by_hand = copy.deepcopy(network), copy.deepcopy(network)
    two_stage(adapted, images, labels, 0.1, gate_lr=0.4)
    adapt_gates(by_hand, images, labels, 0.4)
    adapt_backbone(by_hand, images, labels, 0.1)
    assert_same_parameters(adapted, by_hand)
    frozen, stage_two_only = copy.deepcopy(network), copy.deepcopy(network)
    two_stage(frozen, images, labels, 0.1, gate_lr=0.0)
    adapt_backbone(stage_two_only, images, labels, 0.1)
    assert not any(".gate." in name for name in changed(network, frozen))
    assert_same_parameters(frozen, stage_two_only)
