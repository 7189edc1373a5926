"""A CIFAR-style residual backbone, gated in every block (METHOD.md §1, §1.7, §7).

He et al.'s CIFAR ResNet (6n + 2 layers): a 3×3 stem, stages of basic blocks (conv3×3 →
norm → ReLU → conv3×3 → norm, plus the shortcut, then ReLU), stride 2 and a 1×1 conv (+ norm)
shortcut where a stage changes the shape, global average pooling and a linear head. With one,
two or three blocks a stage it is ResNet-8, -14 or -20 (``conf/model/resnet8.yaml`` …).

A block's gate reads the block's input (global average pool → MLP) and switches the output
channels of its first conv, after their norm and ReLU (METHOD.md §1 places the mask after the
nonlinearity); the second conv alone reads them. Sliced, the first conv computes only the
channels on for some input of the batch, its bias or its norm's affine entries are sliced
alike, and the second conv reads only those channels; the residual stream is never sliced.

Whatever the normalization (``norm``), three properties hold. No running statistics: nothing
to average across nodes, nothing to re-estimate after a one-step adaptation, training and
evaluation compute the same function. Per sample: an input's gates and output never depend on
the other inputs of its batch, as per-input gating and the sliced forward need. Per channel:
removing an always-off channel leaves every other channel's values unchanged, so the exported
network equals the gated one (GroupNorm with fewer groups, or LayerNorm, would mix a removed
channel into its neighbours' statistics).

``norm="channel"`` is a GroupNorm with one group per channel (affine), instance normalization.
It erases what the gates read: after it a channel's spatial mean is its bias β whatever the
input, so the residual stream's per-channel means, which a gate's global average pool reads,
barely vary between inputs and the gates see almost the same vector for every input.
``norm="none"`` keeps them: normalization-free blocks in the style of SkipInit (De & Smith,
2020): no norm layers, He-initialized convs with biases, and each residual branch's output
multiplied by a learnable scalar gain that starts at 0, so that every block starts as the
identity (before its final ReLU; the identity itself where the shortcut is) and the network
trains stably without normalization. The stem is conv + bias → ReLU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from mglightning.constraints import integer, integer_list, one_of
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
NORMS = ("channel", "none")  # see the module docstring


def channel_norm(channels: int, norm: str) -> nn.GroupNorm | None:
    """Per-channel, per-sample normalization with ``norm="channel"``; None with ``"none"``."""
    return nn.GroupNorm(channels, channels) if norm == "channel" else None


def normalize(norm: nn.GroupNorm | None, x: torch.Tensor, keep: torch.Tensor | None = None):
    """``norm`` on ``x``, whose channels are ``norm``'s channels ``keep`` (None: all); ``x``
    itself when there is no norm."""
    if norm is None:
        return x
    weight, bias = norm.weight, norm.bias
    if keep is not None:
        weight, bias = weight.index_select(0, keep), bias.index_select(0, keep)
    return F.group_norm(x, x.shape[1], weight, bias, norm.eps)


def he_init(network: nn.Module) -> None:
    """He initialization of every conv (normal, fan in, ReLU gain; biases 0), as SkipInit
    trains with: without norms nothing rescales the stream, and PyTorch's default init shrinks
    a signal's second moment about sixfold a conv + ReLU, so the head would read almost
    nothing."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)


class ResidualBlock(nn.Module):
    """A basic block whose gate (if any) switches its first conv's output channels; without
    norms (``norm="none"``) its convs have biases and its residual branch a gain from 0."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, gated: bool,
                 gate_hidden: int, gate_bias_init: float | None, norm: str) -> None:
        super().__init__()
        self.stride = stride
        bias = norm == "none"  # a norm's affine shift stands in for a conv's bias
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.norm1 = channel_norm(out_channels, norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.norm2 = channel_norm(out_channels, norm)
        reshaped = stride != 1 or in_channels != out_channels
        self.shortcut_conv = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias)
                              if reshaped else None)
        self.shortcut_norm = channel_norm(out_channels, norm) if reshaped else None
        self.gate = (ChannelGate(in_channels, out_channels, gate_hidden, gate_bias_init)
                     if gated else None)
        self.gain = nn.Parameter(torch.zeros(())) if norm == "none" else None

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
        weight, bias = self.conv1.weight, self.conv1.bias
        keep, mask, logits, all_present_on = None, None, None, False
        if self.gate is not None:
            mask, logits, keep, all_present_on = gate_mask(
                self.gate, x, None, temperature, sliced, noise_scale, generator)
            if keep is not None:
                weight = weight.index_select(0, keep)
                bias = None if bias is None else bias.index_select(0, keep)
        hidden = F.conv2d(x, weight, bias, self.stride, 1)
        hidden = apply_mask(torch.relu(normalize(self.norm1, hidden, keep)), mask, keep,
                            all_present_on, scale)
        weight = self.conv2.weight if keep is None else self.conv2.weight.index_select(1, keep)
        y = normalize(self.norm2, F.conv2d(hidden, weight, self.conv2.bias, 1, 1))
        if self.gain is not None:
            y = self.gain * y
        shortcut = (x if self.shortcut_conv is None
                    else normalize(self.shortcut_norm, self.shortcut_conv(x)))
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
        norm: str = "none",
    ) -> None:
        super().__init__(input_shape, temperature, channels_last)
        self.stem_conv = nn.Conv2d(input_shape[0], stage_widths[0], 3, 1, 1,
                                   bias=norm == "none")
        self.stem_norm = channel_norm(stage_widths[0], norm)
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
        if norm == "none":
            he_init(self)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(normalize(self.stem_norm, self.stem_conv(x)))

    def head_logits(self, x: torch.Tensor, in_keep: torch.Tensor | None) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))  # the residual stream: every channel present

    def describe(self) -> NetworkDescription:
        """Point i: block i's first conv's output channels (made by its filters and its norm's
        affine, or its bias without norms), read by its second conv. A k×k conv costs k² MACs
        per channel pair and output position (biases, norms and gains are not counted)."""
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
            makers = (("conv1.weight", "conv1.bias") if block.norm1 is None
                      else ("conv1.weight", "norm1.weight", "norm1.bias"))
            points.append(GatePoint(
                i + 1, middle, tuple(f"blocks.{i}.{name}" for name in makers),
                (Reader(f"blocks.{i}.conv2.weight"),),
                None if block.gate is None else f"blocks.{i}.gate"))
        ops.append(MacOp("head.weight", self.layer_shapes[-1][0], self.head.out_features, 1))
        return NetworkDescription(tuple(points), tuple(ops))


@dataclass(frozen=True)
class ResidualBackbone:
    """The config's face of :class:`ResNet`: ``stage_widths`` (each × ``width``) and
    ``blocks_per_stage`` set its shape; ``gated_layers`` (1-based block numbers) its gates;
    ``norm`` its normalization (``channel`` or ``none``, see the module docstring)."""

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
        norm: Annotated[str, one_of(*NORMS)] = "none",
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
