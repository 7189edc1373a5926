"""The non-smooth regularizer h(φ) of METHOD.md §3 and its proximal operator.

A regularizer is built once, from the flat parameter vector as it is then (usually on the
CPU); its index tensors follow the vector they are applied to onto its device the first time
they meet it there, so a strategy holding one works wherever the run puts the parameters.
A config names one by ``method.regularizer._target_`` (its ``for_network``, which builds the
index tensors from the network and its flat vector); a new regularizer is a new class with a
``for_network`` here and its key in the method files.
"""

from __future__ import annotations

from typing import Annotated

import torch

from mglightning.constraints import number
from mglightning.federated.flat import FlatParameters
from mglightning.models.network import GatedNetwork

Weight = Annotated[float, number(at_least=0)]  # γ


class GroupLasso:
    """h(φ) = γ Σ_g ‖φ_g‖₂ over the gate groups (one per gated output channel, METHOD.md §3)."""

    def __init__(self, gamma: float, group_ids: torch.Tensor, num_groups: int) -> None:
        self.gamma = gamma
        self.num_groups = num_groups
        self.members = (group_ids >= 0).nonzero().squeeze(1)  # flat positions inside a group
        self.member_group = group_ids[self.members]  # their group ids

    @classmethod
    def for_network(cls, gamma: Weight, flat: FlatParameters,
                    network: GatedNetwork) -> GroupLasso:
        """One group per gated channel: row c of the gate's last Linear with bias c, for
        every gated point of the network's description."""
        pairs = [point.group for point in network.describe().points if point.gate is not None]
        return cls(gamma, *flat.group_index(pairs))

    def _indices(self, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(members, their groups) on ``vector``'s device, moved there once."""
        if self.members.device != vector.device:
            self.members, self.member_group = (self.members.to(vector.device),
                                               self.member_group.to(vector.device))
        return self.members, self.member_group

    def group_norms(self, vector: torch.Tensor) -> torch.Tensor:
        members, member_group = self._indices(vector)
        squares = torch.zeros(self.num_groups, dtype=vector.dtype, device=vector.device)
        return squares.index_add_(0, member_group, vector[members] ** 2).sqrt()

    def value(self, vector: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.group_norms(vector).sum()

    def prox(self, vector: torch.Tensor, step: float) -> torch.Tensor:
        """Group soft-threshold: φ_g ← max(0, 1 − step·γ/‖φ_g‖) φ_g; other entries unchanged."""
        if self.gamma == 0 or self.num_groups == 0:
            return vector
        norms = self.group_norms(vector)
        members, member_group = self._indices(vector)
        scale = torch.clamp(1 - step * self.gamma / norms.clamp_min(1e-30), min=0.0)
        out = vector.clone()
        out[members] *= scale[member_group]
        return out


class L1:
    """h(φ) = γ ‖φ‖₁ over every gate parameter."""

    def __init__(self, gamma: float, gate_mask: torch.Tensor) -> None:
        self.gamma = gamma
        self.members = gate_mask.nonzero().squeeze(1)

    @classmethod
    def for_network(cls, gamma: Weight, flat: FlatParameters, network: GatedNetwork) -> L1:
        return cls(gamma, flat.gate_mask)

    def _indices(self, vector: torch.Tensor) -> torch.Tensor:
        """The gate entries' positions on ``vector``'s device, moved there once."""
        if self.members.device != vector.device:
            self.members = self.members.to(vector.device)
        return self.members

    def value(self, vector: torch.Tensor) -> torch.Tensor:
        return self.gamma * vector[self._indices(vector)].abs().sum()

    def prox(self, vector: torch.Tensor, step: float) -> torch.Tensor:
        if self.gamma == 0:
            return vector
        members = self._indices(vector)
        out = vector.clone()
        entries = out[members]
        out[members] = entries.sign() * (entries.abs() - step * self.gamma).clamp_min(0.0)
        return out
