import torch

from mglightning.models import ChannelGate, binarize, build_network


def test_binarize_outputs_exactly_zero_or_one():
    logits = torch.randn(64, 32) * 3
    for noise in (0.0, 1.0):
        mask = binarize(
            logits, temperature=1.0, noise_scale=noise, generator=torch.Generator().manual_seed(0)
        )
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binarize(logits, 1.0, noise_scale=0.0), (logits > 0).float())


def test_gradient_equals_soft_sigmoid_path():
    logits = torch.randn(8, 5, requires_grad=True)
    weights = torch.randn(8, 5)
    for temperature in (1.0, 0.5):
        mask = binarize(logits, temperature, 1.0, generator=torch.Generator().manual_seed(3))
        (grad_ste,) = torch.autograd.grad((mask * weights).sum(), logits)
        # The same logistic noise, drawn again from the same seed, on the soft path alone.
        uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3)).clamp(
            1e-6, 1 - 1e-6
        )
        noisy = logits + torch.log(uniform) - torch.log1p(-uniform)
        (grad_soft,) = torch.autograd.grad(
            (torch.sigmoid(noisy / temperature) * weights).sum(), logits
        )
        torch.testing.assert_close(grad_ste, grad_soft)


def test_noise_scale_multiplies_the_logistic_noise():
    logits = torch.randn(256, 32)
    uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(5)).clamp(
        1e-6, 1 - 1e-6
    )
    log_u, log_1mu = torch.log(uniform), torch.log1p(-uniform)

    def scaled(scale):
        return binarize(logits, 1.0, scale, generator=torch.Generator().manual_seed(5))

    # Scale 1 is reading (b) bit for bit, as before the scale existed.
    assert torch.equal(scaled(1.0), (logits + log_u - log_1mu > 0).float())
    assert torch.equal(scaled(0.3), (logits + 0.3 * (log_u - log_1mu) > 0).float())
    assert not torch.equal(scaled(0.3), scaled(1.0))
    # A vanishing scale is the noise-free forward.
    assert torch.equal(scaled(1e-12), (logits > 0).float())


def test_zeroed_gate_switches_its_channels_off():
    gate = ChannelGate(in_channels=4, out_channels=6)
    with torch.no_grad():
        gate.out.weight[2].zero_()
        gate.out.bias[2] = 0.0
        gate.out.bias[[0, 1, 3, 4, 5]] = 10.0  # the others strongly on
        gate.out.weight[[0, 1, 3, 4, 5]] = 0.0
    mask = binarize(gate.logits(torch.randn(16, 4, 5, 5)), 1.0, noise_scale=0.0)
    assert mask[:, 2].sum() == 0 and mask[:, [0, 1, 3, 4, 5]].min() == 1


def test_zeroed_network_gate_zeroes_layer_output_and_costs_nothing_there():
    network = build_network("cnn4", (1, 16, 16), 4, gated_layers=[3])
    with torch.no_grad():
        network.blocks[2].gate.out.weight.zero_()
        network.blocks[2].gate.out.bias.zero_()
    x = torch.randn(5, 1, 16, 16)
    output = network.forward_with_masks(x)
    assert output.masks[0].sum() == 0
    # With every gated channel off the classifier sees zeros: logits are the bias.
    torch.testing.assert_close(output.logits, network.head.bias.expand(5, -1))


def test_eval_is_deterministic_and_training_noise_is_not():
    network = build_network("cnn4", (3, 16, 16), 10, gated_layers=[3])
    x = torch.randn(32, 3, 16, 16)
    first, second = network.forward_with_masks(x).masks[0], network.forward_with_masks(x).masks[0]
    assert torch.equal(first, second)
    network.set_gate_noise(1.0, torch.Generator().manual_seed(0))
    noisy_a = network.forward_with_masks(x).masks[0]
    noisy_b = network.forward_with_masks(x).masks[0]
    assert not torch.equal(noisy_a, noisy_b)


def test_gate_bias_init_sets_only_the_gate_bias_and_keeps_every_other_draw():
    torch.manual_seed(4)
    default = build_network("cnn4", (1, 16, 16), 4, gated_layers=[2, 3])
    torch.manual_seed(4)
    biased = build_network("cnn4", (1, 16, 16), 4, gated_layers=[2, 3], gate_bias_init=2.5)
    moved = set()
    for (name, a), (_, b) in zip(default.named_parameters(), biased.named_parameters(),
                                 strict=True):
        if not torch.equal(a, b):
            moved.add(name)
    assert moved == {"blocks.1.gate.out.bias", "blocks.2.gate.out.bias"}
    assert torch.all(biased.blocks[2].gate.out.bias == 2.5)
