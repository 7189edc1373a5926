"""Which channels of a gate point are on over a batch, and removing channels from a network.

:class:`ChannelSets` is the one reading of a point's masks (B, C) into always-off, always-on
and input-dependent channels: the sliced forward computes the channels on for some input, the
export removes the always-off ones and keeps a gate only where some channel varies, and the
gating measures report the three shares. :func:`prune_at_rest` removes channels physically,
from every parameter the network's description lists for their gate point.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cached_property

import torch
from torch import nn

from mglightning.models.gate_points import GatePoint


class ChannelSets:
    """The channel sets of masks (B, C) of one gate point (1 = on for that input)."""

    def __init__(self, masks: torch.Tensor) -> None:
        self.masks = masks

    @cached_property
    def on_for_some(self) -> torch.Tensor:
        """(C,) bool: on for at least one input."""
        return self.masks.amax(dim=0) > 0

    @cached_property
    def always_on(self) -> torch.Tensor:
        """(C,) bool: on for every input."""
        return self.masks.amin(dim=0) > 0

    @property
    def always_off(self) -> torch.Tensor:
        return ~self.on_for_some

    @property
    def input_dependent(self) -> torch.Tensor:
        return self.on_for_some & ~self.always_on

    def present(self) -> tuple[torch.Tensor | None, bool]:
        """(indices of the channels on for some input, or None when that is all of them;
        whether any is on). With none on, channel 0 stands in: computed, then masked to 0, so
        that a layer never has zero channels."""
        keep = self.on_for_some.nonzero().squeeze(1)  # (C_on,)
        if keep.numel() == self.masks.shape[1]:
            return None, True
        if keep.numel() == 0:
            return torch.zeros(1, dtype=torch.long, device=self.masks.device), False
        return keep, True


def input_columns(weight: torch.Tensor, keep: torch.Tensor, area: int = 1) -> torch.Tensor:
    """The columns (dim 1) of ``weight`` reading only channels ``keep``, ``area`` columns per
    channel (flatten is channel-major): a conv's (out, C, kh, kw), a linear's (out, C·area)."""
    return weight.unflatten(1, (-1, area)).index_select(1, keep).flatten(1, 2)


def prune_at_rest(network: nn.Module, keeps: Mapping[int, torch.Tensor]) -> nn.Module:
    """A copy of ``network`` holding only the channels ``keeps[i]`` (indices) of gate point i
    (0-based): their producers' rows, their gate's rows and their readers' columns are cut
    from the parameters, so the copy computes exactly the kept channels' values at less cost
    (the forward reads channel counts from the parameters). Its description still holds."""
    pruned = copy.deepcopy(network)
    points = network.describe().points
    for index, keep in keeps.items():
        point: GatePoint = points[index]
        for name in [*point.producers, *(point.group if point.gate is not None else ())]:
            _set_parameter(pruned, name, pruned.get_parameter(name).index_select(0, keep))
        for reader in point.readers:
            weight = pruned.get_parameter(reader.parameter)
            _set_parameter(pruned, reader.parameter, input_columns(weight, keep, reader.area))
    return pruned


def _set_parameter(network: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attribute = name.rpartition(".")
    requires_grad = network.get_parameter(name).requires_grad
    setattr(network.get_submodule(owner), attribute,
            nn.Parameter(value.detach().clone(), requires_grad=requires_grad))
