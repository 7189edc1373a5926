"""Seconds per communication round on each device there is: the GPU section of the bench.

The workload is the paper's main job on a CIFAR-10-shaped synthetic stand-in (3×32×32, 10
classes, 6,000 images a class, so no download): the partition of
``conf/experiment/table1_cifar10.yaml``, cnn4 gated at conv3, K = 20, m = 1. Each device gets
its own learners, built at x_0 on that device, and the whole federation moved there; the same
rounds (same clients, same batches) then run on each, four ways in alternation:

- ``loop``: the learner's loop over the clients, as training runs it (``round_seconds``, read
  from clocks that wait for the device, see :mod:`mglightning.devices`);
- ``concatenated``: the round for m = 1 as one pass for the K clients
  (:class:`~benchmarks.batched.ConcatenatedRound`): whether the learner should run
  it on a GPU is decided by these figures;
- ``vmapped``: the K clients' local steps taken together, one ``vmap`` call a step
  (:class:`~benchmarks.batched.VmappedRound`), the candidate for m ≥ 2, timed here at
  the job's m = 1: its cost per local step against the loop's;
- ``deterministic``: the loop with deterministic kernels only and cuDNN autotuning off, as
  ``deterministic=true`` (``make reproduce``) trains: the cost of that key.

Each way's meta-model after the rounds is compared with the loop's: float summation order
alone moves them apart, and more as the rounds go on.

    python -m benchmarks.device_rounds [--rounds 20] [--output-dir DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from benchmarks.batched import ConcatenatedRound, VmappedRound
from benchmarks.workload import compose_config
from mglightning.build import build_adapter, build_datamodule, build_learner
from mglightning.devices import device_clock
from mglightning.run.io import atomic_write_text, write_json

CIFAR10_STAND_IN = [  # the table1_cifar10 job, synthetic images of CIFAR-10's shape and size
    "experiment=table1_cifar10",
    "dataset.name=synthetic",
    "dataset.source._target_=mglightning.data.datasets.make_synthetic",
    "dataset.source.download=null",  # make_synthetic reads no files
    "+dataset.source.num_classes=10",
    "+dataset.source.shape=[3,32,32]",
    "+dataset.source.samples_per_class=6000",
    "+dataset.source.seed=0",
    "method.clients_per_round=20",
    "method.local.steps=1",
]


def available_devices() -> list[torch.device]:
    """The CPU, and the current GPU when there is one."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    return devices


@contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Deterministic kernels only, cuDNN autotuning off, as the Trainer sets them for
    ``deterministic=true``; the previous settings back on leaving."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[2])
        torch.backends.cudnn.benchmark = previous[1]


WAYS = ("loop", "concatenated", "vmapped", "deterministic")


def round_seconds(cfg, datamodule, device: torch.device, rounds: int, warmup: int) -> dict:
    """Seconds a round on ``device``, each of :data:`WAYS` on its own learner from x_0, the
    ways alternating round by round, ``warmup`` rounds (cuDNN autotuning, allocator growth)
    left out; per way the median (and range) of its rounds' ratios to the loop's round of
    the same turn, and the largest |difference| of its meta-model x_ag from the loop's after
    the last round."""
    datamodule.to_device(device)
    clients = datamodule.train_clients
    learners = {way: build_learner(cfg, datamodule, device)
                for way in WAYS}
    rounds_of = {"loop": lambda: learners["loop"].run_round(clients),
                 "concatenated": ConcatenatedRound(learners["concatenated"], clients),
                 "vmapped": VmappedRound(learners["vmapped"], clients),
                 "deterministic": lambda: learners["deterministic"].run_round(clients)}

    def seconds_of(way: str) -> float:
        """One round of ``way``: its own ``round_seconds``, as training reads them."""
        with deterministic_kernels() if way == "deterministic" else nullcontext():
            return rounds_of[way]()["round_seconds"]

    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    started = device_clock(device)
    for _ in range(warmup + rounds):
        for way in WAYS:
            seconds[way].append(seconds_of(way))
    per_way = {}
    for way in WAYS:
        timed = seconds[way][warmup:]
        # each round's time over the loop's round next to it: load falls on both alike
        over_loop = [a / b for a, b in zip(timed, seconds["loop"][warmup:], strict=True)]
        per_way[way] = {
            "median": statistics.median(timed), "min": min(timed), "max": max(timed),
            "over_loop": statistics.median(over_loop),
            "over_loop_range": [min(over_loop), max(over_loop)],
            "max_meta_model_difference": float(
                (learners[way].x_ag - learners["loop"].x_ag).abs().max()),
        }
    return {"ways": per_way, "rounds": rounds, "warmup_rounds": warmup,
            "evaluation": evaluation_seconds(cfg, datamodule, learners["loop"], device),
            "wall_seconds": device_clock(device) - started}


def evaluation_seconds(cfg, datamodule, learner, device: torch.device) -> dict:
    """Seconds of one evaluation of every target node from the learner's meta-model, as the
    accuracy curve takes it (no gating measures) and as the last round's does (with them),
    and the whole run projected from them and the loop's median round (see
    :func:`projected_run_seconds`)."""
    adapter = build_adapter(cfg)
    adapter.set_meta_network(learner.meta_network())
    seconds = {}
    for name, measure_gating in (("curve_seconds", False), ("final_seconds", True)):
        start = device_clock(device)
        adapter.evaluate_targets(datamodule.target_clients, measure_gating=measure_gating)
        seconds[name] = device_clock(device) - start
    return {**seconds, "targets": len(datamodule.target_clients)}


def projected_run_seconds(cfg, round_seconds: float, evaluation: dict) -> float:
    """The training job's rounds and target evaluations, as ``TargetEvaluation`` schedules
    them (every ``eval_every`` rounds; the last round's, with the gating measures, serves as
    the final results), from one round's and one evaluation's time. Lightning's own per-round
    work (callbacks, checkpoints, logging) is left out."""
    curve = cfg.rounds // cfg.eval_every if cfg.eval_every > 0 else 0
    if curve and cfg.rounds % cfg.eval_every == 0:
        curve -= 1  # the last round's evaluation is the final one
    return (cfg.rounds * round_seconds + curve * evaluation["curve_seconds"]
            + evaluation["final_seconds"])


def bench_devices(rounds: int, warmup: int, overrides: list[str] | tuple[str, ...] = (),
                  devices: list[torch.device] | None = None) -> dict:
    """Round times on every device (the CPU first), and the CPU ÷ GPU ratio when both ran;
    ``overrides`` come after the stand-in's (tests shrink it with them)."""
    # Deterministic cuBLAS needs this before its first call (Lightning sets it alike).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cfg = compose_config([*CIFAR10_STAND_IN, *overrides])
    synthetic = cfg.dataset.source
    datamodule = build_datamodule(cfg)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not cfg.deterministic  # as the Trainer sets it for training
    try:
        per_device = {str(device): round_seconds(cfg, datamodule, device, rounds, warmup)
                      for device in devices or available_devices()}
    finally:
        torch.backends.cudnn.benchmark = benchmark
    results = {"round_seconds": per_device, "context": {
        "workload": f"{cfg.experiment} partition ({cfg.dataset.partition.num_nodes} nodes), "
                    f"synthetic {'×'.join(map(str, synthetic.shape))} images, "
                    f"{synthetic.num_classes} classes, {synthetic.samples_per_class} a class; "
                    f"{cfg.model.name} gated at {list(cfg.model.gated_layers)}, K = "
                    f"{cfg.method.clients_per_round}, m = {cfg.method.local.steps}, batch "
                    f"{cfg.dataset.batch_size}",
        "overrides": list(overrides),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }}
    for times in per_device.values():
        times["projected_run_seconds"] = projected_run_seconds(
            cfg, times["ways"]["loop"]["median"], times["evaluation"])
    results["context"]["job"] = {"rounds": cfg.rounds, "eval_every": cfg.eval_every}
    gpu = [name for name in per_device if name != "cpu"]
    if gpu and "cpu" in per_device:
        results["cpu_over_gpu"] = (per_device["cpu"]["ways"]["loop"]["median"]
                                   / per_device[gpu[0]]["ways"]["loop"]["median"])
    return results


def render(results: dict) -> str:
    """A short Markdown table of the round times."""
    context = results["context"]
    lines = ["# Round time per device", "",
             f"{context['workload']}; torch {context['torch']}, {context['cpu_threads']} CPU "
             f"thread(s), {context['processor']}; GPU: {context['gpu'] or 'none'}.", "",
             "| device | round | median s | min | max | ÷ loop (median, range of the rounds) | "
             "max \\|Δ x_ag\\| from the loop's after the rounds |",
             "|---|---|---|---|---|---|---|"]
    for device, times in results["round_seconds"].items():
        for way, figures in times["ways"].items():
            lines.append(f"| {device} | {way} | {figures['median']:.4f} | {figures['min']:.4f} | "
                         f"{figures['max']:.4f} | {figures['over_loop']:.2f}× "
                         f"({figures['over_loop_range'][0]:.2f}–"
                         f"{figures['over_loop_range'][1]:.2f}) | "
                         f"{figures['max_meta_model_difference']:.1e} |")
    lines += ["", f"{next(iter(results['round_seconds'].values()))['rounds']} timed rounds "
              "per way and device, after warm-up rounds left out; the ways alternate."]
    job = context["job"]
    lines += ["", f"The whole job ({job['rounds']} rounds, targets evaluated every "
              f"{job['eval_every']}), projected from the loop's median round and one "
              "evaluation of every target (without / with the gating measures of the last "
              "one); the goal on one H100 is ≤ 60 s for the job and ≤ 20 ms a round:", "",
              "| device | evaluation s | last evaluation s | projected job s |",
              "|---|---|---|---|"]
    for device, times in results["round_seconds"].items():
        evaluation = times["evaluation"]
        lines.append(f"| {device} | {evaluation['curve_seconds']:.1f} | "
                     f"{evaluation['final_seconds']:.1f} | {times['projected_run_seconds']:.0f} |")
    if "cpu_over_gpu" in results:
        lines += ["", f"CPU ÷ GPU, median loop round time: {results['cpu_over_gpu']:.1f}×"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_rounds",
                                     description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/gpu-check"))
    parser.add_argument("--skip-without-gpu", action="store_true",
                        help="measure nothing (and say so) where there is no CUDA GPU")
    parser.add_argument("overrides", nargs="*", help="config overrides, after the stand-in's")
    args = parser.parse_args(argv)
    if args.skip_without_gpu and not torch.cuda.is_available():
        print("no CUDA GPU (torch.cuda.is_available() is false): round times not measured")
        return
    results = bench_devices(args.rounds, args.warmup, args.overrides)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "round_seconds.json", results)
    atomic_write_text(args.output_dir / "round_seconds.md", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
