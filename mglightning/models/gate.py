"""The channel gate of METHOD.md §1: a small MLP that picks output channels per input."""

from __future__ import annotations

import torch
from torch import nn


def binarize(
    gate_logits: torch.Tensor,
    temperature: float,
    noise_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gumbel-sigmoid straight-through binarization (METHOD.md §1).

    Forward: ``1[z + s·eps > 0]`` (strict, so an all-zero gate is off). Backward: the
    gradient of ``sigmoid((z + s·eps) / temperature)``. ``eps ~ Logistic(0, 1)``, ``s`` the
    ``noise_scale`` of the round (1: reading (b); annealed: 1 → 0); with ``s = 0`` no noise is
    drawn (evaluation and fast adaptation are noise-free and deterministic).
    """
    if noise_scale:
        uniform = torch.rand(
            gate_logits.shape, generator=generator, device=gate_logits.device
        ).clamp_(1e-6, 1 - 1e-6)
        # s·log u − s·log(1 − u): at s = 1 exactly the unscaled sum, bit for bit
        gate_logits = (gate_logits + noise_scale * torch.log(uniform)
                       - noise_scale * torch.log1p(-uniform))
    hard = (gate_logits > 0).to(gate_logits.dtype)
    if not (gate_logits.requires_grad and torch.is_grad_enabled()):
        return hard  # no gradient wanted (inference): the soft term would add exactly 0
    soft = torch.sigmoid(gate_logits / temperature)
    return hard + (soft - soft.detach())  # value exactly hard, gradient of soft


class ChannelGate(nn.Module):
    """Global average pool of the layer input → Linear(C_in, hidden) → ReLU → Linear(hidden, C_out).

    The last Linear's rows are the Group Lasso groups of METHOD.md §3: row c with its bias entry
    decides channel c for every input. ``bias_init`` sets that bias to a constant (a positive
    one starts every channel on); None keeps PyTorch's default initialization.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int = 16,
        bias_init: float | None = None,
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels, hidden)
        self.out = nn.Linear(hidden, out_channels)
        if bias_init is not None:  # after the default init: the random draws stay the same
            nn.init.constant_(self.out.bias, bias_init)

    def logits(
        self, layer_input: torch.Tensor, in_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gate logits (B, C_out). ``in_keep`` lists the input channels physically present."""
        pooled = (
            layer_input.mean(dim=(2, 3)) if layer_input.dim() == 4 else layer_input
        )  # (B, C_in)
        weight = self.hidden.weight if in_keep is None else self.hidden.weight[:, in_keep]
        return self.out(torch.relu(nn.functional.linear(pooled, weight, self.hidden.bias)))
