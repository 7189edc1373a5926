"""The whole benchmark suite: builds the workload once and runs every measurement."""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import dataclass

import torch

from benchmarks.adaptation import bench_adaptation
from benchmarks.alternatives import bench_alternatives
from benchmarks.device_rounds import bench_devices
from benchmarks.export_format import bench_export_formats
from benchmarks.huge_pages import bench_huge_pages
from benchmarks.inference import bench_inference
from benchmarks.memory import measure_in_subprocess
from benchmarks.processes import bench_processes
from benchmarks.rounds import bench_rounds
from benchmarks.workload import build_workload, dataset_overrides, sparsify_gates
from mglightning.adaptation.steps import two_stage
from mglightning.export import RawImageInput, compile_package, load_package, task_network


@dataclass
class BenchConfig:
    """Sizes of one run; the defaults are the goals' workload (K = 20, batch 32, cnn4)."""

    clients_per_round: int = 20
    local_steps: int = 1
    repeats: int = 15
    inference_batches: tuple[int, ...] = (1, 64)
    gates_off: float = 0.6  # share of gated channels forced off (sparsify_gates)
    gates_varying: float = 0.15  # share left input-dependent
    threads: int = 1
    memory: bool = True
    processes: bool = True  # 1 vs 2 training processes (trainer.devices), four short runs
    compile_network: bool = True  # time torch.compile among the tried alternatives (slow)
    device_rounds: int = 20  # stand-in rounds per way and device (bench.device_rounds); 0: skip
    # after the CIFAR-10 stand-in's, in the device and huge-pages benches (tests shrink it)
    stand_in_overrides: tuple[str, ...] = ()
    huge_pages: bool = True  # stand-in round and evaluation with and without THP, 4 processes
    # the task module compiled as make deploy compiles it: goal 4's exported row and the saved
    # formats (two AOTInductor C++ compiles)
    export: bool = True
    data_overrides: tuple[str, ...] | None = None  # None: Fashion-MNIST if present, else stand-in


def run_suite(config: BenchConfig) -> dict:
    """All measurements, with the context a reader needs to judge them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run_suite(config)
    finally:
        torch.set_num_threads(threads)


def _run_suite(config: BenchConfig) -> dict:
    if config.data_overrides is None:
        data_overrides, data_name = dataset_overrides()
    else:
        data_overrides, data_name = list(config.data_overrides), " ".join(config.data_overrides)
    overrides = [*data_overrides, f"method.clients_per_round={config.clients_per_round}",
                 f"method.local.steps={config.local_steps}"]
    started, load_before = time.perf_counter(), os.getloadavg()
    workload = build_workload(overrides)
    cfg, datamodule, learner = workload.cfg, workload.datamodule, workload.learner
    results = {"rounds": bench_rounds(learner, datamodule.train_clients, config.repeats)}
    results["alternatives"] = bench_alternatives(learner, datamodule.train_clients,
                                                 config.repeats, config.compile_network)

    gated = learner.meta_network()
    sparsify_gates(gated, config.gates_off, config.gates_varying, cfg.seed)
    target = datamodule.target_clients[0]
    support_images, support_labels = target.support_set()
    keep_fraction = float(cfg.method.adaptation.get("keep_fraction", 1 - config.gates_off))
    results["adaptation"] = bench_adaptation(
        copy.deepcopy(gated), gated.without_gates(), support_images, support_labels,
        cfg.method.adaptation.lr, keep_fraction, config.repeats)

    two_stage(gated, support_images, support_labels, cfg.method.adaptation.lr)  # adapted
    query_images, _ = target.query_set()
    task = task_network(gated, torch.cat([support_images, query_images]))
    # as make deploy compiles it
    exported = load_package(compile_package(task, query_images)) if config.export else None
    results["inference"] = bench_inference(gated, gated.without_gates(),
                                           query_images, config.inference_batches,
                                           config.repeats, exported)
    if config.export:
        deployed = RawImageInput(task, target.data.mean, target.data.std)  # what deploy saves
        results["export_format"] = bench_export_formats(
            deployed, target.data.images[target.query_idx], config.inference_batches,
            config.repeats)
    if config.device_rounds:
        results["devices"] = bench_devices(config.device_rounds, 2, config.stand_in_overrides)
    if config.huge_pages:
        results["huge_pages"] = bench_huge_pages(config.stand_in_overrides)
    if config.memory:
        results["memory"] = measure_in_subprocess(data_overrides)
    if config.processes:
        results["processes"] = bench_processes(overrides)
    results["context"] = {
        "data": data_name,
        "model": cfg.model.name,
        "gated_layers": list(cfg.model.gated_layers),
        "clients_per_round": config.clients_per_round,
        "local_steps": config.local_steps,
        "batch_size": cfg.dataset.batch_size,
        "repeats": config.repeats,
        "torch_threads": config.threads,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "gates": {"forced_off": config.gates_off, "input_dependent": config.gates_varying},
        "bench_seconds": time.perf_counter() - started,
    }
    return results
