"""The gated network of SPEC §1: a stack of conv/linear blocks, some of them channel-gated.

One forward path serves training, adaptation and deployment. With ``sliced=True`` a gated
block computes only the channels that are on for at least one input of the batch, the next
layer reads only those channels, and the masks are constants (SPEC §4 Stage II, and real
inference savings). With ``sliced=False`` every channel is computed and masked, which the
gate's straight-through gradient needs: it flows through channels that are off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mglightning.models.gate import ChannelGate, binarize

Pool = Literal["max", "avg", "global_avg"] | None


@dataclass(frozen=True)
class LayerSpec:
    """One backbone layer: a 3×3 conv (padding 1) or a linear layer, ReLU, optional pooling."""

    kind: Literal["conv", "linear"]
    out: int
    pool: Pool = None
    gated: bool = False


@dataclass
class GatedOutput:
    """Logits and, per gated layer, the (B, C_out) 0/1 masks that produced them and the gate
    logits z they were binarized from (without the training noise)."""

    logits: torch.Tensor
    masks: list[torch.Tensor]
    gate_logits: list[torch.Tensor]


class GatedBlock(nn.Module):
    """conv/linear → ReLU → channel mask (from the gate reading the block input) → pool;
    ``channels_last``: pooled in that layout (see :func:`pool_relu`), else in NCHW."""

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
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Returns (output, indices of the output channels present or None for all, mask, gate
        logits; the last two None without a gate).
        ``in_keep``: the input channels present (None: all); ``sliced``: compute only the
        channels some input keeps (SPEC §4); ``noise_scale`` 0: no gate noise (SPEC §1)."""
        weight, bias = self.op.weight, self.op.bias
        if in_keep is not None:
            weight = weight.index_select(1, in_keep)
        mask = out_keep = gate_logits = None
        all_present_on = False  # whether every computed channel is on for every input
        if self.gate is not None:
            gate_logits = self.gate.logits(x, in_keep)
            mask = binarize(gate_logits, temperature, noise_scale, generator)
            if sliced:
                mask = mask.detach()
                out_keep, any_on = active_channels(mask)
                all_present_on = any_on and mask.shape[0] == 1
                if out_keep is not None:
                    weight, bias = weight.index_select(0, out_keep), bias.index_select(0, out_keep)
        y = (
            F.conv2d(x, weight, bias, padding=1)
            if self.spec.kind == "conv"
            else F.linear(x, weight, bias)
        )
        y = pool_relu(y, self.spec.pool, self.channels_last)
        if mask is not None and not all_present_on:  # masking after pooling: same values
            present = mask if out_keep is None else mask.index_select(1, out_keep)  # (B, C_pres.)
            y = y * (present[:, :, None, None] if y.dim() == 4 else present)
        return y, out_keep, mask, gate_logits


def active_channels(mask: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
    """(indices of the channels on for some input, or None when all are on; whether any is
    on). With none on, channel 0 stands in (computed, then masked to 0)."""
    keep = (mask.amax(dim=0) > 0).nonzero().squeeze(1)  # (C_on,)
    if keep.numel() == mask.shape[1]:
        return None, True
    if keep.numel() == 0:
        return torch.zeros(1, dtype=torch.long, device=mask.device), False
    return keep, True


def pool_relu(y: torch.Tensor, pool: str, channels_last: bool = True) -> torch.Tensor:
    """pool(ReLU(y)). Max-pooling commutes with ReLU (both monotone), so it pools first and
    runs ReLU, forward and backward, on a quarter of the values. It pools in channels-last
    layout, which the next convolutions keep: on CPU, NCHW max-pooling (with the indices its
    backward needs) took a quarter of a cnn4 training step; channels-last made the step
    ~25 % faster (batch 32, one thread, measured side by side). The network's input is made
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


class GatedNetwork(nn.Module):
    """Backbone blocks + a linear classifier head; gates where the layer specs say.

    ``theta`` (backbone) and ``phi`` (gates) are told apart by parameter name: every gate
    parameter lives under a ``.gate.`` submodule (see :meth:`is_gate_parameter`). The memory
    layout of its activations is ``channels_last`` (the fast one on CPU, see
    :func:`pool_relu`) unless set otherwise (:meth:`set_layout`); the values are the same.
    """

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
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.channels_last = channels_last
        self.temperature = temperature
        self.gate_noise = 0.0  # the scale of the Logistic gate noise; 0: none
        self.noise_generator: torch.Generator | None = None
        blocks, shapes = [], [self.input_shape]
        for spec in layers:
            in_channels = shapes[-1][0] if spec.kind == "conv" else _numel(shapes[-1])
            blocks.append(GatedBlock(spec, in_channels, gate_hidden, gate_bias_init,
                                     channels_last))
            shapes.append(_block_output_shape(spec, shapes[-1]))
        self.blocks = nn.ModuleList(blocks)
        self.layer_shapes = shapes  # input shape of block i is shapes[i]; head reads shapes[-1]
        self.head = nn.Linear(_numel(shapes[-1]), num_classes)

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
        """Set the scale of the Logistic gate noise of training (SPEC §1); 0 switches it off."""
        self.gate_noise, self.noise_generator = scale, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_masks(x).logits

    def features(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """The input of block ``stop``, computed dense; blocks before ``stop`` must be ungated
        (their masks would be lost). Lets callers reuse a gate-free prefix across passes."""
        if any(block.gate is not None for block in self.blocks[:stop]):
            raise ValueError(f"blocks before {stop} carry gates: their masks would be lost")
        return self.run_blocks(to_layout(x, self.channels_last), 0, stop)[0]

    def forward_with_masks(
        self, x: torch.Tensor, sliced: bool = False, first_block: int = 0
    ) -> GatedOutput:
        """Logits, masks and gate logits; ``x`` is the input of block ``first_block`` (see
        :meth:`features`)."""
        x, in_keep, masks, gate_logits = self.run_blocks(
            to_layout(x, self.channels_last), first_block, len(self.blocks), sliced)
        return GatedOutput(self.head_logits(x, in_keep), masks, gate_logits)

    def run_blocks(
        self, x: torch.Tensor, start: int, stop: int, sliced: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor], list[torch.Tensor]]:
        """Blocks ``start`` to ``stop - 1`` on ``x``, the dense input of block ``start``:
        (their output, the indices of its channels present or None for all, the masks of the
        gated blocks among them, their gate logits). A linear block reads its input
        flattened."""
        masks, gate_logits, in_keep = [], [], None
        for block in self.blocks[start:stop]:
            if block.spec.kind == "linear" and x.dim() > 2:
                x, in_keep = x.flatten(1), _feature_indices(in_keep, x.shape[2:])
            x, in_keep, mask, logits = block(
                x, in_keep, temperature=self.temperature, sliced=sliced,
                noise_scale=self.gate_noise, generator=self.noise_generator,
            )
            if mask is not None:
                masks.append(mask)
                gate_logits.append(logits)
        return x, in_keep, masks, gate_logits

    def head_logits(self, x: torch.Tensor, in_keep: torch.Tensor | None) -> torch.Tensor:
        """The classifier on the last block's output, of which only the channels ``in_keep``
        are present (None: all): it reads only their weight columns."""
        weight = self.head.weight
        if in_keep is not None:  # the columns of the present channels (flatten is channel-major)
            columns = weight.unflatten(1, (-1, _numel(x.shape[2:]))) if x.dim() > 2 else weight
            weight = columns.index_select(1, in_keep).flatten(1)
        return F.linear(x.flatten(1), weight, self.head.bias)


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
