"""What the gates do at a target node, as pure arithmetic on 0/1 mask tensors.

A mask is ``(inputs, channels)`` for one gated layer (METHOD.md §1: 1 = channel on for that
input). These numbers say whether gating earns its keep: how many channels a task never or
always uses (only the rest are decided per input), how much Stage I moved the masks, and
whether the channel sets differ more between tasks than between the inputs of one task — the
paper's "task-specific" claim holds only if they do.

The Jaccard distance of two channel sets A, B is 1 − |A ∩ B| / |A ∪ B|; of two empty sets
it is 0 (they are the same set).
"""

from __future__ import annotations

import math

import torch

from mglightning.models.channels import ChannelSets


def channel_shares(masks: torch.Tensor) -> dict[str, float]:
    """Shares of the channels off for every input, on for every input, and decided per
    input (the three add up to 1), over the inputs of ``masks`` (B, C)."""
    sets = ChannelSets(masks)
    always_off = float(sets.always_off.float().mean())
    always_on = float(sets.always_on.float().mean())
    return {
        "always_off": always_off,
        "always_on": always_on,
        "input_dependent": 1.0 - always_off - always_on,
    }


def channel_measures(masks: torch.Tensor) -> dict[str, float | str]:
    """What the gates of ``masks`` (B, C) do over the inputs: the :func:`channel_shares`, the
    mean Jaccard distance between the inputs' channel sets (``input_jaccard``) and the
    majority-on set as :func:`channel_set_text` (``majority_on``, compared across tasks)."""
    return channel_shares(masks) | {
        "input_jaccard": mean_pairwise_jaccard_distance(masks),
        "majority_on": channel_set_text(majority_on(masks)),
    }


def flip_rate(before: torch.Tensor, after: torch.Tensor) -> float:
    """Share of mask entries that differ between two masks of the same inputs and channels."""
    if before.shape != after.shape:
        raise ValueError(f"masks of shapes {tuple(before.shape)} and {tuple(after.shape)}")
    return float((before.bool() != after.bool()).float().mean())


def majority_on(masks: torch.Tensor) -> torch.Tensor:
    """(C,) bool: the channels on for more than half of the inputs of ``masks`` (B, C)."""
    return masks.bool().float().mean(dim=0) > 0.5


def pairwise_jaccard_distances(sets: torch.Tensor) -> torch.Tensor:
    """(N, N) Jaccard distances between the rows of ``sets`` (N, C), each row a channel set."""
    members = sets.bool().double()
    shared = members @ members.T  # (N, N) |A ∩ B|
    sizes = members.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - shared  # (N, N) |A ∪ B|
    return torch.where(union > 0, 1.0 - shared / union.clamp_min(1.0), 0.0)


def mean_pairwise_jaccard_distance(sets: torch.Tensor) -> float:
    """Mean Jaccard distance over the pairs i < j of the rows of ``sets`` (N, C); NaN when
    there are fewer than two rows (no pair to compare)."""
    count = sets.shape[0]
    if count < 2:
        return math.nan
    upper = torch.triu_indices(count, count, offset=1)
    return float(pairwise_jaccard_distances(sets)[upper[0], upper[1]].mean())


def channel_set_text(channels: torch.Tensor) -> str:
    """A (C,) channel set as a string of 0/1, channel 0 first: how ``tasks.csv`` stores it."""
    return "".join("1" if on else "0" for on in channels.bool().tolist())


def channel_set_from_text(text: str) -> torch.Tensor:
    """The (C,) bool channel set that :func:`channel_set_text` wrote."""
    return torch.tensor([char == "1" for char in text], dtype=torch.bool)


def zeroed_groups(weight: torch.Tensor, bias: torch.Tensor) -> int:
    """Group Lasso groups (METHOD.md §3: row c of the gate's last Linear weight with bias entry c)
    that are exactly zero: the prox switched those channels off for every input."""
    group_nonzero = weight.ne(0).any(dim=1) | bias.ne(0)  # (C_out,)
    return int((~group_nonzero).sum())
