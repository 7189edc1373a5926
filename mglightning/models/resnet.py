"""A CIFAR-style residual backbone, gated in every block (METHOD.md §1, §1.7, §7).

He et al.'s CIFAR ResNet (6n + 2 layers): a 3×3 stem, stages of basic blocks (conv3×3 →
norm → ReLU → conv3×3 → norm, plus the shortcut, then ReLU), stride 2 and a 1×1 conv (+ norm)
shortcut where a stage changes the shape, global average pooling and a linear head. With one,
two or three blocks a stage it is ResNet-8, -14 or -20 (``conf/model/resnet8.yaml`` …).

A block's gate reads the block's input (global average pool → MLP) and switches the output
channels of its first conv, after their norm and ReLU (METHOD.md §1 places the mask after the
nonlinearity); the second conv alone reads them. Sliced, the first conv computes only the
channels on for some input of the batch, its norm's affine entries are sliced alike, and the
second conv reads only those channels; the residual stream is never sliced.

Whatever the normalization (``norm``), three properties hold. No running statistics: nothing
to average across nodes, nothing to re-estimate after a one-step adaptation, training and
evaluation compute the same function. Per sample: an input's gates and output never depend on
the other inputs of its batch, as per-input gating and the sliced forward need. Per channel
where channels are removed: the gated hidden channels (after a block's first conv) are
normalized each on its own, a GroupNorm with one group per channel (affine), so removing an
always-off channel leaves every other channel's values unchanged and the export without it
equals the gated network.

``norm="layer"`` (the default) normalizes the residual stream (the stem's, the second conv's
and the shortcut's outputs) over all its channels at once, a GroupNorm with one group
(affine): a LayerNorm of the sample's feature map. The gates read the stream's per-channel
means through a global average pool; a per-channel (instance) normalization of the stream
makes each channel's spatial mean its shift β whatever the input, so the gates would see one
vector for every input. A norm over all the stream's channels keeps the channels' relative
means, so the gates see the input; and the stream is never sliced, so mixing its channels
costs the export nothing. ``norm="channel"`` normalizes the stream per channel too (instance
normalization everywhere; measured: RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from mglightning.constraints import integer, integer_list, neutral, one_of
from mglightning.models.gate import ChannelGate
from mglightning.models.gate_points import GateOp, GatePoint, MacOp, NetworkDescription, Reader
from mglightning.models.network import (
    BlockOutput,
    GateBiasInit,
    GatedLayers,
    GatedNetwork,
    GateHidden,
    Temperature,
    Width,
    apply_mask,
    gate_mask,
    scaled_width,
)

STAGE_WIDTHS = (16, 32, 64)  # the CIFAR ResNet's
BLOCKS_PER_STAGE = 1  # ResNet-8
NORMS = ("layer", "channel")  # see the module docstring


def channel_norm(channels: int) -> nn.GroupNorm:
    """The norm of a block's gated channels, per channel and per sample (any ``norm``)."""
    return nn.GroupNorm(channels, channels)


def stream_norm(channels: int, norm: str) -> nn.GroupNorm:
    """The norm of the residual stream, which no gate slices: over all its channels with
    ``norm="layer"`` (a LayerNorm of the sample's feature map), per channel with
    ``"channel"``."""
    return nn.GroupNorm(1 if norm == "layer" else channels, channels)


def normalize(norm: nn.GroupNorm, x: torch.Tensor, keep: torch.Tensor | None = None):
    """The per-channel ``norm`` on ``x``, whose channels are ``norm``'s channels ``keep``
    (None: all)."""
    weight, bias = norm.weight, norm.bias
    if keep is not None:
        weight, bias = weight.index_select(0, keep), bias.index_select(0, keep)
    return F.group_norm(x, x.shape[1], weight, bias, norm.eps)


class ResidualBlock(nn.Module):
    """A basic block whose gate (if any) switches its first conv's output channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, gated: bool,
                 gate_hidden: int, gate_bias_init: float | None, norm: str) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = channel_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = stream_norm(out_channels, norm)
        reshaped = stride != 1 or in_channels != out_channels
        self.shortcut_conv = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                              if reshaped else None)
        self.shortcut_norm = stream_norm(out_channels, norm) if reshaped else None
        self.gate = (ChannelGate(in_channels, out_channels, gate_hidden, gate_bias_init)
                     if gated else None)

    def forward(
        self,
        x: torch.Tensor,
        in_keep: torch.Tensor | None = None,
        *,
        temperature: float,
        sliced: bool = False,
        noise_scale: float = 0.0,
        generator: torch.Generator | None = None,
        scale: torch.Tensor | None = None,
    ) -> BlockOutput:
        """As :meth:`GatedBlock.forward`; ``in_keep`` is always None here (the residual
        stream carries every channel), and so is the keep returned."""
        weight, keep, mask, logits, all_present_on = self.conv1.weight, None, None, None, False
        if self.gate is not None:
            mask, logits, keep, all_present_on = gate_mask(
                self.gate, x, None, temperature, sliced, noise_scale, generator)
            if keep is not None:
                weight = weight.index_select(0, keep)
        hidden = F.conv2d(x, weight, None, self.stride, 1)
        hidden = apply_mask(torch.relu(normalize(self.norm1, hidden, keep)), mask, keep,
                            all_present_on, scale)
        weight = self.conv2.weight if keep is None else self.conv2.weight.index_select(1, keep)
        y = self.norm2(F.conv2d(hidden, weight, None, 1, 1))
        shortcut = x if self.shortcut_conv is None else self.shortcut_norm(self.shortcut_conv(x))
        return BlockOutput(torch.relu(y + shortcut), None, mask, logits)


class ResNet(GatedNetwork):
    """Stem, residual blocks in stages (``stage_widths`` channels, ``blocks_per_stage``
    blocks each, stride 2 entering every stage after the first), global average pool, head;
    ``norm`` one of :data:`NORMS` (see the module docstring)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        stage_widths: Sequence[int],
        blocks_per_stage: int,
        gated_layers: Sequence[int] = (),
        gate_hidden: int = 16,
        temperature: float = 1.0,
        gate_bias_init: float | None = None,
        channels_last: bool = True,
        norm: str = "layer",
    ) -> None:
        super().__init__(input_shape, temperature, channels_last)
        self.stem_conv = nn.Conv2d(input_shape[0], stage_widths[0], 3, 1, 1, bias=False)
        self.stem_norm = stream_norm(stage_widths[0], norm)
        blocks, shapes = [], [(stage_widths[0], *input_shape[1:])]
        for stage, channels in enumerate(stage_widths):
            for position in range(blocks_per_stage):
                stride = 2 if stage > 0 and position == 0 else 1
                in_shape = shapes[-1]
                blocks.append(ResidualBlock(in_shape[0], channels, stride,
                                            len(blocks) + 1 in gated_layers, gate_hidden,
                                            gate_bias_init, norm))
                shapes.append((channels, *((size - 1) // stride + 1 for size in in_shape[1:])))
        self.blocks = nn.ModuleList(blocks)
        self.layer_shapes = shapes  # input shape of block i is shapes[i]; the last, the pool's
        self.head = nn.Linear(stage_widths[-1], num_classes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.stem_norm(self.stem_conv(x)))

    def head_logits(self, x: torch.Tensor, in_keep: torch.Tensor | None) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))  # the residual stream: every channel present

    def describe(self) -> NetworkDescription:
        """Point i: block i's first conv's output channels (with its norm's affine), read by
        its second conv. A k×k conv costs k² MACs per channel pair and output position."""
        height, width = self.input_shape[1:]
        ops = [MacOp("stem_conv.weight", self.input_shape[0], self.stem_conv.weight.shape[0],
                     9 * height * width)]
        points = []
        for i, block in enumerate(self.blocks):
            in_channels, out_shape = self.layer_shapes[i][0], self.layer_shapes[i + 1]
            middle, area = block.conv1.weight.shape[0], out_shape[1] * out_shape[2]
            ops.append(MacOp(f"blocks.{i}.conv1.weight", in_channels, middle, 9 * area, None, i))
            if block.gate is not None:
                ops.append(GateOp(i, None, in_channels, 1, block.gate.hidden.out_features,
                                  middle))
            ops.append(MacOp(f"blocks.{i}.conv2.weight", middle, out_shape[0], 9 * area, i))
            if block.shortcut_conv is not None:
                ops.append(MacOp(f"blocks.{i}.shortcut_conv.weight", in_channels, out_shape[0],
                                 area))
            points.append(GatePoint(
                i + 1, middle,
                (f"blocks.{i}.conv1.weight", f"blocks.{i}.norm1.weight", f"blocks.{i}.norm1.bias"),
                (Reader(f"blocks.{i}.conv2.weight"),),
                None if block.gate is None else f"blocks.{i}.gate"))
        ops.append(MacOp("head.weight", self.layer_shapes[-1][0], self.head.out_features, 1))
        return NetworkDescription(tuple(points), tuple(ops))


@dataclass(frozen=True)
class ResidualBackbone:
    """The config's face of :class:`ResNet`: ``stage_widths`` (each × ``width``) and
    ``blocks_per_stage`` set its shape; ``gated_layers`` (1-based block numbers) its gates;
    ``norm`` its normalization (``layer`` or ``channel``, see the module docstring)."""

    def __call__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        gated_layers: GatedLayers = (),
        gate_hidden: GateHidden = 16,
        temperature: Temperature = 1.0,
        gate_bias_init: GateBiasInit = None,
        width: Width = 1.0,
        blocks_per_stage: Annotated[int, integer(1)] = BLOCKS_PER_STAGE,
        stage_widths: Annotated[Sequence[int], integer_list(1)] = STAGE_WIDTHS,
        # channel: the ResNet before the option, so its runs keep their fingerprints
        norm: Annotated[str, one_of(*NORMS), neutral("channel")] = "layer",
    ) -> ResNet:
        widths = [scaled_width(channels, width) for channels in stage_widths]
        return ResNet(tuple(input_shape), num_classes, widths, blocks_per_stage, gated_layers,
                      gate_hidden, temperature, gate_bias_init, norm=norm)

    def layer_count(self, options: Mapping) -> int:
        """How many blocks ``model.gated_layers`` may name (a mistyped option raises; the
        config walker names it)."""
        widths = options.get("stage_widths") or STAGE_WIDTHS
        return len(widths) * int(options.get("blocks_per_stage") or BLOCKS_PER_STAGE)


cifar_resnet = ResidualBackbone()
