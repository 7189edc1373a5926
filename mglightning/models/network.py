"""The gated network of METHOD.md §1: blocks, some of them channel-gated, and a linear head.

:class:`GatedNetwork` is what every backbone shares: one forward path serving training,
adaptation and deployment, and the split of its parameters into θ and φ. With
``sliced=True`` a gated block computes only the channels that are on for at least one input
of the batch, whatever reads them reads only those channels, and the masks are constants
(METHOD.md §4 Stage II, and real inference savings). With ``sliced=False`` every channel is
computed and masked, which the gate's straight-through gradient needs: it flows through
channels that are off. A backbone says where its gates sit and what each op costs through
:meth:`GatedNetwork.describe` (:mod:`mglightning.models.gate_points`).

:class:`LayerStack` is the paper's backbones: a chain of conv/linear blocks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mglightning.constraints import GATES_ONLY, integer, integer_list, neutral, number, optional
from mglightning.models.channels import ChannelSets
from mglightning.models.gate import ChannelGate, binarize
from mglightning.models.gate_points import GateOp, GatePoint, MacOp, NetworkDescription, Reader

Pool = Literal["max", "avg", "global_avg"] | None
# The options every backbone takes (a model config's keys), with the config walker's rules.
GatedLayers = Annotated[Sequence[int], integer_list(1), GATES_ONLY]  # 1-based block numbers
GateHidden = Annotated[int, integer(1), GATES_ONLY]
Temperature = Annotated[float, number(above=0), GATES_ONLY]  # τ of the straight-through estimator
GateBiasInit = Annotated[float | None, optional(number()), GATES_ONLY]
# Every hidden width × this (see scaled_width); at 1.0 it is left out of the identity.
Width = Annotated[float, number(above=0), neutral(1.0)]


def scaled_width(channels: int, width: float) -> int:
    """A hidden width under the width multiplier: rounded, at least 1."""
    return max(1, round(channels * width))


@dataclass(frozen=True)
class LayerSpec:
    """One backbone layer: a 3×3 conv (padding 1) or a linear layer, ReLU, optional pooling."""

    kind: Literal["conv", "linear"]
    out: int
    pool: Pool = None
    gated: bool = False


@dataclass
class GatedOutput:
    """Logits and, per gated point, the (B, C) 0/1 masks that produced them and the gate
    logits z before binarization (the relaxed mask is σ(z/τ), METHOD.md §1)."""

    logits: torch.Tensor
    masks: list[torch.Tensor]
    gate_logits: list[torch.Tensor]


class BlockOutput(NamedTuple):
    """What a block returns: its output, the indices of the output channels present (None:
    all), and, if gated, its mask (B, C) and gate logits (B, C)."""

    features: torch.Tensor
    keep: torch.Tensor | None
    mask: torch.Tensor | None
    gate_logits: torch.Tensor | None


def gate_mask(
    gate: ChannelGate, x: torch.Tensor, in_keep: torch.Tensor | None, temperature: float,
    sliced: bool, noise_scale: float, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """(mask (B, C), gate logits, indices of the channels to compute or None for all, whether
    every computed channel is on for every input) of ``gate`` reading ``x``. Sliced, the mask
    is a constant and only the channels on for some input are computed."""
    logits = gate.logits(x, in_keep)
    mask = binarize(logits, temperature, noise_scale, generator)
    if not sliced:
        return mask, logits, None, False
    mask = mask.detach()
    keep, any_on = ChannelSets(mask).present()
    return mask, logits, keep, any_on and mask.shape[0] == 1


def apply_mask(
    y: torch.Tensor, mask: torch.Tensor | None, keep: torch.Tensor | None,
    all_present_on: bool, scale: torch.Tensor | None,
) -> torch.Tensor:
    """``y`` (B, C_present[, H, W]) times the mask's present columns, then times ``scale``
    (C,), structured SNIP's fixed channel multipliers (METHOD.md §5)."""
    if mask is not None and not all_present_on:
        present = mask if keep is None else mask.index_select(1, keep)  # (B, C_present)
        y = y * (present[:, :, None, None] if y.dim() == 4 else present)
    if scale is not None:
        y = y * (scale[:, None, None] if y.dim() == 4 else scale)
    return y


class GatedBlock(nn.Module):
    """conv/linear → ReLU → channel mask (from the gate reading the block input) → pool;
    ``channels_last``: pooled in that layout (see :func:`pool_relu`), else in NCHW. A linear
    block reads its input flattened."""

    def __init__(
        self, spec: LayerSpec, in_channels: int, gate_hidden: int,
        gate_bias_init: float | None = None, channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.spec, self.channels_last = spec, channels_last
        self.op = (
            nn.Conv2d(in_channels, spec.out, 3, padding=1)
            if spec.kind == "conv"
            else nn.Linear(in_channels, spec.out)
        )
        self.gate = (ChannelGate(in_channels, spec.out, gate_hidden, gate_bias_init)
                     if spec.gated else None)

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
        """``in_keep``: the input channels present (None: all); ``sliced``: compute only the
        channels some input keeps (METHOD.md §4); ``noise_scale`` 0: no gate noise (§1);
        ``scale``: fixed multipliers of the output channels (structured SNIP)."""
        if self.spec.kind == "linear" and x.dim() > 2:
            x, in_keep = x.flatten(1), _feature_indices(in_keep, x.shape[2:])
        weight, bias = self.op.weight, self.op.bias
        if in_keep is not None:
            weight = weight.index_select(1, in_keep)
        mask = logits = out_keep = None
        all_present_on = False  # whether every computed channel is on for every input
        if self.gate is not None:
            mask, logits, out_keep, all_present_on = gate_mask(
                self.gate, x, in_keep, temperature, sliced, noise_scale, generator)
            if out_keep is not None:
                weight, bias = weight.index_select(0, out_keep), bias.index_select(0, out_keep)
        y = (
            F.conv2d(x, weight, bias, padding=1)
            if self.spec.kind == "conv"
            else F.linear(x, weight, bias)
        )
        y = pool_relu(y, self.spec.pool, self.channels_last)
        # masking after pooling: the same values
        return BlockOutput(apply_mask(y, mask, out_keep, all_present_on, scale), out_keep,
                           mask, logits)


def pool_relu(y: torch.Tensor, pool: str, channels_last: bool = True) -> torch.Tensor:
    """pool(ReLU(y)). Max-pooling commutes with ReLU (both monotone), so it pools first and
    runs ReLU, forward and backward, on a quarter of the values. It pools in channels-last
    layout, which the next convolutions keep: on CPU, NCHW max-pooling (with the indices its
    backward needs) is a large share of a cnn4 training step, which channels-last makes
    faster (the round in NCHW against ours: BENCHMARKS.md). The network's input is made
    channels-last already (:func:`to_layout`), so here the layout is normally kept, not
    copied: copying the first block's output had cost as much as its convolution. With
    ``channels_last=False`` it keeps NCHW (ReLU, then pool), which ``vmap`` needs."""
    if pool == "max" and channels_last:
        return torch.relu(F.max_pool2d(y.contiguous(memory_format=torch.channels_last), 2))
    return _pool(torch.relu(y), pool)


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image batch in channels-last layout, which every block keeps (see :func:`pool_relu`):
    copying the input (C channels) costs a fraction of copying the first block's output. With
    ``channels_last=False``, ``x`` as it is (NCHW)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _pool(y: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "max":
        return F.max_pool2d(y, 2)
    if pool == "avg":
        return F.avg_pool2d(y, 2)
    if pool == "global_avg":  # a mean, not adaptive_avg_pool2d: the same values, and its
        return y.mean(dim=(2, 3), keepdim=True)  # CUDA backward has a deterministic kernel
    return y


class BlocksOutput(NamedTuple):
    """The last block's output, the indices of its channels present (None: all), and the
    masks and gate logits of the gated blocks among them."""

    features: torch.Tensor
    keep: torch.Tensor | None
    masks: list[torch.Tensor]
    gate_logits: list[torch.Tensor]


class GatedNetwork(nn.Module):
    """A backbone's blocks (``self.blocks``; block i holds gate point i, its ``gate`` None when
    ungated) between a stem (:meth:`stem`) and a linear classifier head (:meth:`head_logits`),
    each block called as :class:`GatedBlock` is. A subclass builds them and describes them
    (:meth:`describe`); this class runs them.

    ``theta`` (backbone) and ``phi`` (gates) are told apart by parameter name: every gate
    parameter lives under a ``.gate.`` submodule (see :meth:`is_gate_parameter`). The memory
    layout of its activations is ``channels_last`` (the fast one on CPU, see
    :func:`pool_relu`) unless set otherwise (:meth:`set_layout`); the values are the same.
    """

    blocks: nn.ModuleList
    head: nn.Linear

    def __init__(self, input_shape: tuple[int, ...], temperature: float = 1.0,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.channels_last = channels_last
        self.temperature = temperature
        self.gate_noise = 0.0  # the scale of the Logistic gate noise; 0: none
        self.noise_generator: torch.Generator | None = None

    def describe(self) -> NetworkDescription:
        """The gate points and the ops that cost MACs, from the parameters as they are (a
        network pruned at rest describes its smaller self)."""
        raise NotImplementedError

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """What block 0 reads, from the input (in the activations' layout); no gate there."""
        return x

    def head_logits(self, x: torch.Tensor, in_keep: torch.Tensor | None) -> torch.Tensor:
        """The classifier on the last block's output, of which only the channels ``in_keep``
        are present (None: all)."""
        raise NotImplementedError

    @property
    def gated_layers(self) -> list[int]:
        """Indices of the blocks that carry a gate."""
        return [i for i, block in enumerate(self.blocks) if block.gate is not None]

    @staticmethod
    def is_gate_parameter(name: str) -> bool:
        return ".gate." in name

    def without_gates(self) -> GatedNetwork:
        """A copy with every gate removed: the same backbone with every channel on."""
        network = copy.deepcopy(self)
        for block in network.blocks:
            block.gate = None
        return network

    def set_layout(self, channels_last: bool) -> None:
        """Keep activations channels-last (True) or NCHW (False): ``torch.func.vmap`` cannot
        batch channels-last copies (torch 2.14: "NYI: Tensor.clone(memory_format)")."""
        self.channels_last = channels_last
        for block in self.blocks:
            block.channels_last = channels_last

    def set_gate_noise(self, scale: float, generator: torch.Generator | None = None) -> None:
        """Set the scale of the Logistic gate noise of training (METHOD.md §1); 0: none."""
        self.gate_noise, self.noise_generator = scale, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_masks(x).logits

    def features(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """The input of block ``stop``, computed dense; blocks before ``stop`` must be ungated
        (their masks would be lost). Lets callers reuse a gate-free prefix across passes."""
        if any(block.gate is not None for block in self.blocks[:stop]):
            raise ValueError(f"blocks before {stop} carry gates: their masks would be lost")
        return self.run_blocks(self.stem(to_layout(x, self.channels_last)), 0, stop).features

    def forward_with_masks(
        self, x: torch.Tensor, sliced: bool = False, first_block: int | None = None,
        channel_scales: dict[int, torch.Tensor] | None = None,
    ) -> GatedOutput:
        """Logits, masks and gate logits of the network's input ``x``, or, given
        ``first_block``, of ``x`` the input of that block (see :meth:`features`).
        ``channel_scales``: fixed multipliers (C,) of gate point i's channels, where its mask
        acts (structured SNIP)."""
        x = to_layout(x, self.channels_last)
        if first_block is None:
            x, first_block = self.stem(x), 0
        output = self.run_blocks(x, first_block, len(self.blocks), sliced, channel_scales)
        return GatedOutput(self.head_logits(output.features, output.keep), output.masks,
                           output.gate_logits)

    def run_blocks(
        self, x: torch.Tensor, start: int, stop: int, sliced: bool = False,
        channel_scales: dict[int, torch.Tensor] | None = None,
    ) -> BlocksOutput:
        """Blocks ``start`` to ``stop - 1`` on ``x``, the dense input of block ``start``."""
        masks, gate_logits, in_keep = [], [], None
        for index in range(start, stop):
            x, in_keep, mask, logits = self.blocks[index](
                x, in_keep, temperature=self.temperature, sliced=sliced,
                noise_scale=self.gate_noise, generator=self.noise_generator,
                scale=None if channel_scales is None else channel_scales.get(index),
            )
            if mask is not None:
                masks.append(mask)
                gate_logits.append(logits)
        return BlocksOutput(x, in_keep, masks, gate_logits)


class LayerStack(GatedNetwork):
    """The paper's backbones: a chain of conv/linear blocks, gates where the layer specs say,
    and a linear head reading the last block's output flattened."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        layers: list[LayerSpec],
        gate_hidden: int = 16,
        temperature: float = 1.0,
        gate_bias_init: float | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__(input_shape, temperature, channels_last)
        blocks, shapes = [], [self.input_shape]
        for spec in layers:
            in_channels = shapes[-1][0] if spec.kind == "conv" else _numel(shapes[-1])
            blocks.append(GatedBlock(spec, in_channels, gate_hidden, gate_bias_init,
                                     channels_last))
            shapes.append(_block_output_shape(spec, shapes[-1]))
        self.blocks = nn.ModuleList(blocks)
        self.layer_shapes = shapes  # input shape of block i is shapes[i]; head reads shapes[-1]
        self.head = nn.Linear(_numel(shapes[-1]), num_classes)

    def head_logits(self, x: torch.Tensor, in_keep: torch.Tensor | None) -> torch.Tensor:
        """Only the weight columns of the present channels are read."""
        weight = self.head.weight
        if in_keep is not None:  # the columns of the present channels (flatten is channel-major)
            columns = weight.unflatten(1, (-1, _numel(x.shape[2:]))) if x.dim() > 2 else weight
            weight = columns.index_select(1, in_keep).flatten(1)
        return F.linear(x.flatten(1), weight, self.head.bias)

    def describe(self) -> NetworkDescription:
        """Point i: block i's output channels, read by the next block's op and gate (or the
        head). A conv costs 9 MACs per channel pair and position at its input resolution
        (padding 1, then pooling); a linear layer reading a map reads each channel's H·W."""
        points, ops = [], []
        in_channels = self.input_shape[0]
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            out_channels = block.op.weight.shape[0]
            in_point = i - 1 if i else None
            in_area = _numel(self.layer_shapes[i][1:])
            conv = block.spec.kind == "conv"
            ops.append(MacOp(f"blocks.{i}.op.weight", in_channels, out_channels,
                             in_area * (9 if conv else 1), in_point, i))
            if block.gate is not None:
                ops.append(GateOp(i, in_point, in_channels, 1 if conv else in_area,
                                  block.gate.hidden.out_features, out_channels))
            points.append(GatePoint(
                i + 1, out_channels, (f"blocks.{i}.op.weight", f"blocks.{i}.op.bias"),
                self._readers(i), None if block.gate is None else f"blocks.{i}.gate"))
            in_channels = out_channels
        ops.append(MacOp("head.weight", in_channels, self.head.out_features,
                         _numel(self.layer_shapes[-1][1:]), last if last >= 0 else None))
        return NetworkDescription(tuple(points), tuple(ops))

    def _readers(self, index: int) -> tuple[Reader, ...]:
        """What reads block ``index``'s output: the next block's op and gate (a linear one
        reads it flattened; a conv's gate pools it), or the head (flattened)."""
        area = _numel(self.layer_shapes[index + 1][1:])
        if index + 1 == len(self.blocks):
            return (Reader("head.weight", area),)
        following = self.blocks[index + 1]
        per_channel = area if following.spec.kind == "linear" else 1
        readers = [Reader(f"blocks.{index + 1}.op.weight", per_channel)]
        if following.gate is not None:
            readers.append(Reader(f"blocks.{index + 1}.gate.hidden.weight", per_channel))
        return tuple(readers)


def _feature_indices(channel_keep: torch.Tensor | None, spatial: torch.Size) -> torch.Tensor | None:
    """Flattened feature indices of the kept channels (flatten is channel-major)."""
    if channel_keep is None:
        return None
    area = _numel(spatial)
    offsets = torch.arange(area, device=channel_keep.device)
    return (channel_keep[:, None] * area + offsets).flatten()  # (C_keep * H * W,)


def _numel(shape: tuple[int, ...] | torch.Size) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _block_output_shape(spec: LayerSpec, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.kind == "linear":
        return (spec.out,)
    height, width = in_shape[1], in_shape[2]
    if spec.pool in ("max", "avg"):
        height, width = height // 2, width // 2
    elif spec.pool == "global_avg":
        height, width = 1, 1
    return (spec.out, height, width)
