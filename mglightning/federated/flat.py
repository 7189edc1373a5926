"""A module's parameters as views into one vector, so that federated math is vector math.

Local steps, averaging and the proximal server step (METHOD.md §3) all act on x = (θ, φ) as a
whole; keeping every parameter (and its gradient) a view into one contiguous tensor turns
each of them into a handful of fused vector operations, with no per-layer Python loops and
no per-client model copies.
"""

from __future__ import annotations

import torch
from torch import nn


class FlatParameters:
    """Re-seats ``module``'s parameters and gradients as views into ``vector`` and ``grad``.

    Call once the module is on its final device; ``module.to`` afterwards would undo it.
    """

    def __init__(self, module: nn.Module, is_gate_parameter=lambda name: False) -> None:
        self.module = module
        named = list(module.named_parameters())
        self.vector = torch.cat([p.detach().reshape(-1) for _, p in named])
        self.grad = torch.zeros_like(self.vector)
        self.slices: dict[str, slice] = {}
        self.gate_mask = torch.zeros_like(self.vector, dtype=torch.bool)  # φ entries
        self._grad_views: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        offset = 0
        for name, param in named:
            span = slice(offset, offset + param.numel())
            param.data = self.vector[span].view_as(param)
            self._grad_views.append((param, self.grad[span].view_as(param)))
            self.slices[name] = span
            self.gate_mask[span] = is_gate_parameter(name)
            offset = span.stop

    def __len__(self) -> int:
        return self.vector.numel()

    def load(self, values: torch.Tensor) -> None:
        """Set every parameter at once from a flat vector."""
        self.vector.copy_(values)

    def zero_grad(self) -> None:
        """Zero ``grad`` and (re)attach it as every parameter's ``.grad``: code outside our
        control (Lightning's loops, ``module.zero_grad()``) may have set them to None."""
        self.grad.zero_()
        for param, view in self._grad_views:
            if param.grad is not view:
                param.grad = view

    def group_index(self, group_parameters: list[tuple[str, str]]) -> tuple[torch.Tensor, int]:
        """Group ids of METHOD.md §3: row c of each ``weight`` with entry c of its ``bias``.

        ``group_parameters`` lists (weight name, bias name) pairs. Returns (ids, count) with
        ids[k] the group of flat entry k, or -1 for entries outside every group.
        """
        ids = torch.full((len(self),), -1, dtype=torch.long, device=self.vector.device)
        count = 0
        for weight_name, bias_name in group_parameters:
            weight_span, bias_span = self.slices[weight_name], self.slices[bias_name]
            rows = bias_span.stop - bias_span.start
            row_width = (weight_span.stop - weight_span.start) // rows
            channel = torch.arange(count, count + rows, device=self.vector.device)
            ids[weight_span] = channel.repeat_interleave(row_width)
            ids[bias_span] = channel
            count += rows
        return ids, count
