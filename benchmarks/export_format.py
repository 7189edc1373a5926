"""The saved format of a deployed task module: the AOTInductor package ``make deploy`` writes,
a plain ``torch.export`` program and TorchScript (the format before, deprecated in torch 2.14;
traced, see :func:`saved_and_loaded_script`).

Each format is saved and loaded back, as a deployment loads it, and the loaded modules are
timed side by side (alternating) at each batch size, each as a ratio to TorchScript. Both
exported formats carry a dynamic batch dimension, so that one file serves every batch size, as
the TorchScript file does. The package stays the format of :mod:`mglightning.deploy` only while
it holds the speed (within :data:`SAME_SPEED` of TorchScript) and predicts as TorchScript does;
the time to make each file (the package's C++ compile) is reported beside.

``OMP_NUM_THREADS=1 python -m benchmarks.export_format``: this measurement alone, on
``make bench``'s deployed module (cnn4 on Fashion-MNIST if present, its gates sparsified).
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings

import torch
from torch import nn

from benchmarks.inference import CALLS_PER_TIMING
from benchmarks.timing import alternate, ratio
from benchmarks.workload import build_workload, dataset_overrides, sparsify_gates
from mglightning.export import RawImageInput, compile_package, load_package, task_network

SAME_SPEED = 1.10  # a format's time ÷ TorchScript's still counted as holding the speed
DEPLOYED = "aoti_package"  # the format make deploy writes
FORMATS = (DEPLOYED, "torch_export", "torchscript")


def saved_and_loaded_script(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``module`` traced on ``example`` to TorchScript, saved and loaded back (in memory).
    Traced, not scripted: ``torch.jit.script`` rejects the gated network's Python (its class
    annotations to begin with). The forward branches on no tensor's value (masks are
    multiplied in, not branched on), so the trace serves every input and batch size; the
    bench checks that it predicts as the other formats do."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch 2.14: TorchScript is deprecated, still works
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks (GroupNorm)
        torch.jit.save(torch.jit.trace(module, (example,)), buffer)
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


def saved_and_loaded(module: nn.Module, images: torch.Tensor) -> tuple[dict, dict]:
    """Each format of :data:`FORMATS` loaded back, and the seconds it took to make its file."""
    example = images[torch.arange(2) % len(images)]  # (2, C, H, W): batch 1 would specialize
    makers = {
        DEPLOYED: lambda: load_package(compile_package(module, images)),
        "torch_export": lambda: saved_and_loaded_export(module, example),
        "torchscript": lambda: saved_and_loaded_script(module, example),
    }
    loaded, seconds = {}, {}
    for name, make in makers.items():
        started = time.perf_counter()
        loaded[name] = make()
        seconds[name] = time.perf_counter() - started
    return loaded, seconds


@torch.no_grad()
def bench_export_formats(module: nn.Module, images: torch.Tensor, batch_sizes: tuple[int, ...],
                         repeats: int, calls_per_timing: dict[int, int] | None = None) -> dict:
    """Whether every loaded format predicts as TorchScript on ``images``; per batch size the
    time ratio of the deployed package ÷ TorchScript (median and range over repeats), and the
    same for the plain ``torch.export`` program under ``torch_export``."""
    loaded, make_seconds = saved_and_loaded(module, images)
    logits = {name: candidate(images) for name, candidate in loaded.items()}
    reference = logits["torchscript"]
    results = {
        "predictions_equal": all(torch.equal(values.argmax(1), reference.argmax(1))
                                 for values in logits.values()),
        "max_logit_difference": max(float((values - reference).abs().max())
                                    for values in logits.values()),
        "make_seconds": make_seconds,
        "torch_export": {},
    }
    for batch_size in batch_sizes:
        batch = images[torch.arange(batch_size) % len(images)]  # (batch_size, C, H, W)
        calls = (calls_per_timing or CALLS_PER_TIMING).get(batch_size, 3)
        seconds = alternate({name: lambda run=candidate, x=batch: run(x)
                             for name, candidate in loaded.items()}, repeats, calls)
        results[f"batch{batch_size}"] = ratio(seconds, DEPLOYED, "torchscript").summary()
        results["torch_export"][f"batch{batch_size}"] = ratio(
            seconds, "torch_export", "torchscript").summary()
    return results


def holds_up(results: dict) -> bool:
    """The deployed package predicts as TorchScript does and is within :data:`SAME_SPEED` of
    its time at every batch size measured."""
    return results["predictions_equal"] and all(
        figure["ratio_median"] <= SAME_SPEED for name, figure in results.items()
        if name.startswith("batch"))


def deployed_module(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """``make bench``'s deployed module shape (its meta-network at x_0, 60 % of the gated
    channels off, 15 % varying: speed depends on the shapes, not on training) and the raw
    query images of target 0."""
    workload = build_workload(dataset_overrides()[0])
    gated = workload.learner.meta_network()
    sparsify_gates(gated, 0.6, 0.15, seed)
    target = workload.datamodule.target_clients[0]
    images = torch.cat([target.support_set()[0], target.query_set()[0]])
    module = RawImageInput(task_network(gated, images), target.data.mean, target.data.std)
    return module, target.data.images[target.query_idx]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_format",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    module, images = deployed_module()
    print(json.dumps(bench_export_formats(module, images, (1, 64), args.repeats), indent=1))


if __name__ == "__main__":
    main()
