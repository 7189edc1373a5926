"""Export an adapted task network as a small, gate-free-at-rest module, compiled ahead of time.

After fast adaptation (SPEC §4) a target node serves one task. Channels that its gates switch
off for every input of that task's data are dead weight: the export removes them physically,
as filters of the gated layer and as input channels (or flattened feature columns) of the
layer reading it, so the module at rest is smaller and computes less. Channels that are on
for every input lose their gate; channels that vary per input keep it (only their rows of the
gate), so that predictions on the task's data equal the gated network's. A layer whose kept
channels are all always on carries no gate at all. The module is for inference only: its
parameters take no gradient, so its outputs carry no autograd graph.

The saved format is an AOTInductor package (``.pt2``): the module captured by ``torch.export``
with a dynamic batch dimension and compiled to C++ ahead of time. It replaces TorchScript,
which torch 2.14 marks deprecated: loaded, it ran 0.75× TorchScript's time at batch 1 and 0.91×
at batch 64, where a plain ``torch.export`` program, which dispatches each op from Python, ran
2.27× and 1.09× (cnn4 on Fashion-MNIST, one thread: ``python -m benchmarks.export_format``).
The price is paid once, at export: a C++ compile (44 s here, against 0.2 s to script), and a
package bound to the CPU's instruction set and the torch version that made it; it holds a
shared library, so load only packages you trust, as you would run only binaries you trust.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch._inductor
from torch import nn
from torch._inductor.cpp_builder import get_cpp_compiler
from torch._inductor.exc import InvalidCxxCompiler

from mglightning.models.network import GatedBlock, GatedNetwork, _numel, pool_relu


class ExportedGate(nn.Module):
    """The gate's MLP on the kept channels only: a 0/1 mask per input, no noise, no gradient."""

    def __init__(self, hidden: nn.Linear, out: nn.Linear) -> None:
        super().__init__()
        self.hidden, self.out = hidden, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=[2, 3]) if x.dim() == 4 else x  # (B, C_in)
        return (self.out(torch.relu(self.hidden(pooled))) > 0).to(x.dtype)  # (B, C_kept)


class PlainBlock(nn.Module):
    """conv/linear → ReLU → pool, with no gate (ungated, or every kept channel always on)."""

    def __init__(self, op: nn.Module, pool: str) -> None:
        super().__init__()
        self.op, self.pool = op, pool
        self.flatten_input = isinstance(op, nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_input and x.dim() > 2:
            x = x.flatten(1)
        return pool_relu(self.op(x), self.pool)


class MaskedBlock(nn.Module):
    """conv/linear → ReLU → pool → × the gate's mask on the channels that vary per input."""

    def __init__(self, op: nn.Module, pool: str, gate: ExportedGate) -> None:
        super().__init__()
        self.op, self.pool, self.gate = op, pool, gate
        self.flatten_input = isinstance(op, nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_input and x.dim() > 2:
            x = x.flatten(1)
        mask = self.gate(x)
        y = pool_relu(self.op(x), self.pool)
        return y * (mask[:, :, None, None] if y.dim() == 4 else mask)


class RawImageInput(nn.Module):
    """uint8 images (B, C, H, W) normalized exactly as ``ImageData.batch`` normalizes them (the
    equality check in :func:`mglightning.deploy.deploy` holds it to that), then the task
    network: the module a deployment saves."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.to(torch.float32).div(255.0).sub(self.mean).div(self.std))


class TaskNetwork(nn.Module):
    """The exported network: blocks, then the classifier on the flattened last output."""

    def __init__(self, blocks: list[nn.Module], head: nn.Linear) -> None:
        super().__init__()
        self.blocks, self.head = nn.ModuleList(blocks), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.flatten(1))


def input_columns(weight: torch.Tensor, keep: torch.Tensor | None, area: int) -> torch.Tensor:
    """Columns of a weight reading only input channels ``keep``: (out, C_in[, kh, kw]) for a
    conv (area 0), or (out, C_in·area) for a linear layer reading flattened channels."""
    if keep is None:
        return weight
    if area == 0:
        return weight[:, keep]
    return weight.unflatten(1, (-1, area))[:, keep].flatten(1)


def _sliced_op(block: GatedBlock, in_keep, area: int, out_keep) -> nn.Module:
    """A copy of the block's conv/linear with only the kept inputs and outputs."""
    weight = input_columns(block.op.weight.detach(), in_keep, area)
    bias = block.op.bias.detach()
    if out_keep is not None:
        weight, bias = weight[out_keep], bias[out_keep]
    if block.spec.kind == "conv":
        op = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
    else:
        op = nn.Linear(weight.shape[1], weight.shape[0])
    op.weight.data, op.bias.data = weight.clone(), bias.clone()
    return op


def _sliced_gate(block: GatedBlock, in_keep, area: int, out_keep) -> ExportedGate:
    """The gate reading only the kept inputs and deciding only the kept outputs. It pools
    conv inputs per channel, so for a conv its input columns are channels (area 0)."""
    hidden_weight = input_columns(block.gate.hidden.weight.detach(), in_keep,
                                   0 if block.spec.kind == "conv" else area)
    out_weight, out_bias = block.gate.out.weight.detach(), block.gate.out.bias.detach()
    if out_keep is not None:
        out_weight, out_bias = out_weight[out_keep], out_bias[out_keep]
    hidden = nn.Linear(hidden_weight.shape[1], hidden_weight.shape[0])
    hidden.weight.data = hidden_weight.clone()
    hidden.bias.data = block.gate.hidden.bias.detach().clone()
    out = nn.Linear(out_weight.shape[1], out_weight.shape[0])
    out.weight.data, out.bias.data = out_weight.clone(), out_bias.clone()
    return ExportedGate(hidden, out)


def channel_decisions(network: GatedNetwork, images: torch.Tensor) -> list[tuple]:
    """Per gated layer: (kept channel indices, whether any kept channel varies per input)."""
    network.set_gate_noise(0.0)
    with torch.no_grad():
        masks = network.forward_with_masks(images).masks
    decisions = []
    for mask in masks:  # (B, C_out)
        on_some, on_all = mask.amax(dim=0) > 0, mask.amin(dim=0) > 0
        kept = on_some.nonzero().squeeze(1)
        if kept.numel() == 0:  # all off: keep one channel, gated (it stays 0 on this data)
            decisions.append((torch.zeros(1, dtype=torch.long, device=mask.device), True))
        else:
            decisions.append((kept, bool((on_some & ~on_all).any())))
    return decisions


def task_network(network: GatedNetwork, images: torch.Tensor) -> TaskNetwork:
    """A module equal to ``network`` on ``images`` (pass every image the module will serve,
    e.g. the task's support and query sets), with the channels that are off for all of them
    removed and gates kept only where channels vary per input; eval mode, no gradients."""
    decisions = iter(channel_decisions(network, images))
    blocks, in_keep, area = [], None, 0  # area: spatial size of flattened inputs, 0 for convs
    for block, in_shape in zip(network.blocks, network.layer_shapes, strict=False):
        if block.spec.kind == "linear" and len(in_shape) > 1:
            area = _numel(in_shape[1:])
        out_keep, varying = (None, False) if block.gate is None else next(decisions)
        if out_keep is not None and out_keep.numel() == block.spec.out:
            out_keep = None  # every channel kept: no slicing
        op = _sliced_op(block, in_keep, area, out_keep)
        pool = block.spec.pool or "none"
        blocks.append(MaskedBlock(op, pool, _sliced_gate(block, in_keep, area, out_keep))
                      if varying else PlainBlock(op, pool))
        in_keep, area = out_keep, 0
    last_shape = network.layer_shapes[-1]
    head_area = _numel(last_shape[1:]) if len(last_shape) > 1 else 0
    head_weight = network.head.weight.detach()
    if in_keep is not None:
        head_weight = (head_weight[:, in_keep] if head_area == 0
                       else head_weight.unflatten(1, (-1, head_area))[:, in_keep].flatten(1))
    head = nn.Linear(head_weight.shape[1], head_weight.shape[0])
    head.weight.data = head_weight.clone()
    head.bias.data = network.head.bias.detach().clone()
    return TaskNetwork(blocks, head).eval().requires_grad_(False)


class NoCompilerError(RuntimeError):
    """AOTInductor found no C++ compiler; the message says what to install."""


def compile_package(module: nn.Module, images: torch.Tensor) -> bytes:
    """``module`` as an AOTInductor ``.pt2`` package (the bytes of the file), exported with a
    dynamic batch dimension so that one file serves every batch size. ``images`` gives the
    input's dtype and shape; two of them are traced, as a batch of one would be specialized
    to batch 1."""
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as error:
        raise NoCompilerError("the export compiles C++ (AOTInductor) and found no compiler: "
                              "install g++ (e.g. apt install g++) or point CXX at one") from error
    example = images[torch.arange(2) % len(images)]  # (2, C, H, W)
    program = torch.export.export(module, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    package = io.BytesIO()
    torch._inductor.aoti_compile_and_package(program, package_path=package)
    return package.getvalue()


def load_package(package: bytes | str | Path):
    """A ``.pt2`` package (its bytes or its path) loaded as a callable module."""
    source = io.BytesIO(package) if isinstance(package, bytes) else str(package)
    return torch._inductor.aoti_load_package(source)
