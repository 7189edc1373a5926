"""TorchScript against ``torch.export`` as the saved format of a deployed task module.

torch 2.14 marks TorchScript deprecated; ``torch.export`` (export → save → load → ``.module()``)
is its successor. Each format is saved and loaded back, as a deployment loads it, and the two
loaded modules are timed side by side at each batch size. The program is exported with a
dynamic batch dimension, so that one file serves every batch size, as the TorchScript file
does. :mod:`mglightning.deploy` would switch only if ``torch.export`` holds the speed (within
:data:`SAME_SPEED`) and predicts exactly as TorchScript does.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from mglightning.bench.inference import CALLS_PER_TIMING
from mglightning.bench.timing import alternate, ratio

SAME_SPEED = 1.10  # torch.export time ÷ TorchScript time still counted as holding the speed


def saved_and_loaded_script(module: nn.Module) -> torch.jit.ScriptModule:
    """``module`` scripted, saved and loaded back (in memory)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch 2.14: TorchScript is deprecated, still works
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)


def saved_and_loaded_export(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """``module`` exported with a dynamic batch dimension, saved and loaded back (in memory).
    ``example`` needs two or more images: a batch of one would be specialized to batch 1."""
    program = torch.export.export(module, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer).module()


@torch.no_grad()
def bench_export_formats(module: nn.Module, images: torch.Tensor, batch_sizes: tuple[int, ...],
                         repeats: int, calls_per_timing: dict[int, int] | None = None) -> dict:
    """Whether both loaded formats predict alike on ``images``, and per batch size the time
    ratio torch.export ÷ TorchScript (median and range over repeats)."""
    loaded = {
        "torch_export": saved_and_loaded_export(module, images[torch.arange(2) % len(images)]),
        "torchscript": saved_and_loaded_script(module),
    }
    logits = {name: candidate(images) for name, candidate in loaded.items()}
    results = {
        "predictions_equal": torch.equal(logits["torch_export"].argmax(1),
                                         logits["torchscript"].argmax(1)),
        "max_logit_difference": float((logits["torch_export"] - logits["torchscript"])
                                      .abs().max()),
    }
    for batch_size in batch_sizes:
        batch = images[torch.arange(batch_size) % len(images)]  # (batch_size, C, H, W)
        calls = (calls_per_timing or CALLS_PER_TIMING).get(batch_size, 3)
        seconds = alternate({name: lambda run=candidate, x=batch: run(x)
                             for name, candidate in loaded.items()}, repeats, calls)
        results[f"batch{batch_size}"] = ratio(seconds, "torch_export", "torchscript").summary()
    return results


def holds_up(results: dict) -> bool:
    """torch.export predicts as TorchScript does and is within :data:`SAME_SPEED` of its
    time at every batch size measured."""
    return results["predictions_equal"] and all(
        figure["ratio_median"] <= SAME_SPEED for name, figure in results.items()
        if name.startswith("batch"))
