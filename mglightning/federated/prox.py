"""The non-smooth regularizer h(φ) of SPEC §3 and its proximal operator."""

from __future__ import annotations

import torch


class GroupLasso:
    """h(φ) = γ Σ_g ‖φ_g‖₂ over the gate groups (one per gated output channel, SPEC §3)."""

    def __init__(self, gamma: float, group_ids: torch.Tensor, num_groups: int) -> None:
        self.gamma = gamma
        self.num_groups = num_groups
        self.members = (group_ids >= 0).nonzero().squeeze(1)  # flat positions inside a group
        self.member_group = group_ids[self.members]  # their group ids

    def group_norms(self, vector: torch.Tensor) -> torch.Tensor:
        squares = torch.zeros(self.num_groups, dtype=vector.dtype, device=vector.device)
        return squares.index_add_(0, self.member_group, vector[self.members] ** 2).sqrt()

    def value(self, vector: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.group_norms(vector).sum()

    def prox(self, vector: torch.Tensor, step: float) -> torch.Tensor:
        """Group soft-threshold: φ_g ← max(0, 1 − step·γ/‖φ_g‖) φ_g; other entries unchanged."""
        if self.gamma == 0 or self.num_groups == 0:
            return vector
        norms = self.group_norms(vector)
        scale = torch.clamp(1 - step * self.gamma / norms.clamp_min(1e-30), min=0.0)
        out = vector.clone()
        out[self.members] *= scale[self.member_group]
        return out


class L1:
    """h(φ) = γ ‖φ‖₁ over every gate parameter."""

    def __init__(self, gamma: float, gate_mask: torch.Tensor) -> None:
        self.gamma = gamma
        self.members = gate_mask.nonzero().squeeze(1)

    def value(self, vector: torch.Tensor) -> torch.Tensor:
        return self.gamma * vector[self.members].abs().sum()

    def prox(self, vector: torch.Tensor, step: float) -> torch.Tensor:
        if self.gamma == 0:
            return vector
        out = vector.clone()
        entries = out[self.members]
        out[self.members] = entries.sign() * (entries.abs() - step * self.gamma).clamp_min(0.0)
        return out
