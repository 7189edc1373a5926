"""Speed tricks tried for a round, against the round the learner runs.

Tried: ``torch.func.vmap`` over the clients and ``torch.compile``, to keep
what wins. Each candidate is a whole round from the same server state, gate noise off (vmap
cannot draw from each client's seeded generator): the learner's loop; the loop in NCHW layout
(vmap cannot batch channels-last tensors, so it runs in NCHW: this tells the layout's cost
from vmap's); the clients' local steps vmapped
(:class:`~benchmarks.batched.VmappedRound`); the loop through a
``torch.compile``'d network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from benchmarks.batched import VmappedRound
from benchmarks.rounds import RoundState
from benchmarks.timing import alternate, ratio
from mglightning.federated.learner import FederatedMetaLearner
from mglightning.federated.schedules import gate_noise_schedule


@contextmanager
def gate_noise_off(learner: FederatedMetaLearner) -> Iterator[None]:
    """The learner's rounds without gate noise while inside."""
    schedule, learner.gate_noise = learner.gate_noise, gate_noise_schedule("none", 1)
    try:
        yield
    finally:
        learner.gate_noise = schedule


@contextmanager
def nchw_layout(learner: FederatedMetaLearner) -> Iterator[None]:
    """The learner's network in NCHW layout while inside."""
    network = learner.network
    channels_last = network.channels_last
    network.set_layout(channels_last=False)
    try:
        yield
    finally:
        network.set_layout(channels_last)


@contextmanager
def compiled_network(learner: FederatedMetaLearner) -> Iterator[None]:
    """The local solves' passes through ``torch.compile`` of the network while inside."""
    module = learner.flat.module
    learner.flat.module = torch.compile(learner.network)
    try:
        yield
    finally:
        learner.flat.module = module


def first_line(error: Exception) -> str:
    """The error's type and the first line of its message: a compiler's report spans pages."""
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def bench_alternatives(learner: FederatedMetaLearner, clients, repeats: int,
                       compile_network: bool = True) -> dict:
    """Time ratios candidate ÷ loop (above 1: slower than the loop), side by side; a
    candidate that cannot run here is reported, not timed."""
    state = RoundState(learner)

    def from_the_state(run: Callable[[], object]) -> Callable[[], None]:
        def candidate() -> None:
            run()
            state.restore()
        return candidate

    def loop_in(context: Callable) -> Callable[[], None]:
        def run() -> None:
            with context(learner):
                learner.run_round(clients)
        return from_the_state(run)

    with gate_noise_off(learner):
        candidates = {"loop": from_the_state(lambda: learner.run_round(clients)),
                      "loop_nchw": loop_in(nchw_layout)}
        vmap_error = compile_error = compile_seconds = None
        try:
            vmapped = from_the_state(VmappedRound(learner, clients))
            vmapped()  # refuses what it cannot compute (short batches, Per-FedAvg's steps)
        except ValueError as error:
            vmap_error = first_line(error)
        else:
            candidates["vmap"] = vmapped
        if compile_network:
            started = time.perf_counter()
            compiled = loop_in(compiled_network)
            try:
                compiled()  # compiles forward and backward
            except Exception as error:  # e.g. no C++ compiler on this machine: report, go on
                state.restore()
                compile_error = first_line(error)
            else:
                candidates["compiled"] = compiled
                compile_seconds = time.perf_counter() - started
        seconds = alternate(candidates, repeats)
    solver = learner.local_solver
    return {
        "clients": learner.clients_per_round,
        "local_steps": solver.steps,
        "batch_size": solver.batch_size,
        **{f"{name}_over_loop": ratio(seconds, name, "loop").summary()
           for name in candidates if name != "loop"},
        **({"vmap_over_loop_nchw": ratio(seconds, "vmap", "loop_nchw").summary()}
           if "vmap" in candidates else {}),
        "vmap_error": vmap_error,
        "compile_seconds": compile_seconds,
        "compile_error": compile_error,
    }
