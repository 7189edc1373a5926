"""Export an adapted task network as a small, gate-free-at-rest module, compiled ahead of time.

After fast adaptation (METHOD.md §4) a target node serves one task. Channels that its gates switch
off for every input of that task's data are dead weight: the export removes them physically
from every parameter their gate point's description lists (the producers' filters and affine
entries, the gate's rows, the readers' input columns; :func:`prune_at_rest`), so the module
at rest is smaller and computes less, for any backbone. A gate point whose kept channels are
all on for every input loses its gate; where some vary per input the gate stays (its rows of
the kept channels), so that predictions on the task's data equal the gated network's. The
module is the pruned network itself, for inference only: its parameters take no gradient, so
its outputs carry no autograd graph.

The saved format is an AOTInductor package (``.pt2``): the module captured by ``torch.export``
with a dynamic batch dimension and compiled to C++ ahead of time. It replaces TorchScript,
which torch 2.14 marks deprecated: loaded, it is at least as fast as TorchScript, where a plain
``torch.export`` program, which dispatches each op from Python, is slower at batch 1
(BENCHMARKS.md, README; ``python -m benchmarks.export_format``).
The price is paid once, at export: a C++ compile (far longer than scripting takes), and a
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

from mglightning.models.channels import ChannelSets, prune_at_rest
from mglightning.models.network import GatedNetwork


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


def channel_decisions(network: GatedNetwork, images: torch.Tensor) -> dict[int, ChannelSets]:
    """Per gated point (0-based): its channel sets over ``images``, noise-free."""
    network.set_gate_noise(0.0)
    with torch.no_grad():
        masks = network.forward_with_masks(images).masks
    return {point: ChannelSets(mask) for point, mask in zip(network.gated_layers, masks,
                                                              strict=True)}


def task_network(network: GatedNetwork, images: torch.Tensor) -> GatedNetwork:
    """A module equal to ``network`` on ``images`` (pass every image the module will serve,
    e.g. the task's support and query sets), with the channels that are off for all of them
    removed and gates kept only where channels vary per input; eval mode, no gradients. A
    point with no channel on keeps one, gated (it stays 0 on this data)."""
    decisions = {point: (sets, *sets.present())
                 for point, sets in channel_decisions(network, images).items()}
    exported = prune_at_rest(network, {point: keep for point, (_, keep, _) in decisions.items()
                                       if keep is not None})
    for point, (sets, _, any_on) in decisions.items():
        if any_on and not sets.input_dependent.any():  # every kept channel on for every input
            exported.blocks[point].gate = None
    exported.set_gate_noise(0.0)
    return exported.eval().requires_grad_(False)


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
