import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks import timing
from benchmarks.__main__ import FLOWER_SECTION, parse_args, with_flower_section
from benchmarks.alternatives import bench_alternatives
from benchmarks.device_rounds import CIFAR10_STAND_IN, bench_devices, projected_run_seconds
from benchmarks.device_rounds import render as render_devices
from benchmarks.export_format import (
    SAME_SPEED,
    bench_export_formats,
    holds_up,
    saved_and_loaded_export,
)
from benchmarks.huge_pages import bench_huge_pages
from benchmarks.inference import (
    bench_inference,
    pair_macs,
    pair_stop,
    pruned_pair,
    run_pair,
)
from benchmarks.memory import measure
from benchmarks.processes import bench_processes
from benchmarks.report import (
    _alternatives_summary,
    _export_format_summary,
    _floor_summary,
    _huge_pages_summary,
    _processes_summary,
    render,
)
from benchmarks.rounds import ReferenceRound, RoundState, max_update_difference, step_macs
from benchmarks.suite import BenchConfig, run_suite
from benchmarks.timing import alternate, ratio
from benchmarks.workload import compose_config, sparsify_gates
from mglightning.build import build_datamodule, build_learner
from mglightning.config import validate
from mglightning.export import RawImageInput, task_network
from mglightning.models import build_network, forward_cost


@pytest.fixture
def tiny_learner(tiny_config):
    cfg = tiny_config("method.clients_per_round=2", "method.local.steps=2",
                      "method.gate_noise=logistic")  # the noise path too
    datamodule = build_datamodule(cfg)
    return build_learner(cfg, datamodule), datamodule.train_clients


def test_reference_round_computes_our_update(tiny_learner):
    learner, clients = tiny_learner
    assert learner.gate_noise(1) > 0 and learner.local_solver.prox_lambda > 0  # both paths
    learner.run_round(clients)  # a round away from x_0: x ≠ x_ag, the prox term non-zero
    assert max_update_difference(learner, clients) < 1e-5


@pytest.mark.parametrize(("override", "key"), [
    ("method.local.gate_lr=0.3", "method.local.gate_lr"),
    ("method.local.sparsity_off=0.5", "method.local.sparsity_off"),
    ("+method/local/gate_loss=target_rate", "method.local.gate_loss"),
])
def test_reference_refuses_a_step_it_does_not_compute(tiny_config, override, key):
    cfg = tiny_config(override)
    datamodule = build_datamodule(cfg)
    with pytest.raises(ValueError, match=key):
        ReferenceRound(build_learner(cfg, datamodule), datamodule.train_clients)


def test_reference_differs_when_its_draws_differ(tiny_learner):
    learner, clients = tiny_learner
    state = RoundState(learner)
    learner.run_round(clients)
    ours = learner.x_ag.clone()
    state.restore()
    learner.seed += 1  # other batches and gate noise: the comparison must notice
    ReferenceRound(learner, clients)()
    assert (learner.x_ag - ours).abs().max() > 1e-4


class FakeClock:
    """``perf_counter`` for :mod:`benchmarks.timing`: time moves only when a candidate says so,
    so the timing logic is checked exactly, whatever else the machine runs."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def candidate(self, name: str, seconds: float):
        def run() -> None:
            self.calls.append(name)
            self.now += seconds
        return run


def test_alternate_times_each_candidate_in_turn_and_ratio_divides_them(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    slow, fast = 2.0**-5, 2.0**-6  # binary fractions: the clock's sums are exact
    seconds = alternate({"slow": clock.candidate("slow", slow),
                         "fast": clock.candidate("fast", fast)}, repeats=3, calls=2, warmup=1)
    assert seconds == {"slow": [slow] * 3, "fast": [fast] * 3}  # seconds per call
    # one warm-up call each, then each repeat's calls in turn, the order reversed every other
    assert clock.calls == ["slow", "fast", *["slow"] * 2, *["fast"] * 4, *["slow"] * 4,
                           *["fast"] * 2]
    summary = ratio(seconds, "slow", "fast").summary()
    assert summary == {"ratio_median": 2.0, "ratio_min": 2.0, "ratio_max": 2.0, "repeats": 3,
                       "numerator_seconds": slow, "denominator_seconds": fast}


def test_ratio_takes_each_repeats_own_pair():
    seconds = {"a": [1.0, 4.0, 9.0], "b": [1.0, 2.0, 3.0]}
    summary = ratio(seconds, "a", "b").summary()
    assert (summary["ratio_median"], summary["ratio_min"], summary["ratio_max"]) == (2.0, 1.0,
                                                                                    3.0)
    assert (summary["numerator_seconds"], summary["denominator_seconds"]) == (4.0, 2.0)


def test_pair_macs_match_hand_count():
    network = build_network("cnn4", (1, 28, 28), 10, gated_layers=[3])
    active = torch.tensor([32.0, 128.0])
    dense, executed = pair_macs(network, 2, {2: active})
    assert dense == 128 * 64 * 9 * 7 * 7 + 10 * 128 * 3 * 3
    per_channel = 64 * 9 * 7 * 7 + 10 * 3 * 3
    gate = 16 * (64 + 128)
    assert executed == pytest.approx(gate + per_channel * active.mean().item())


def test_pair_macs_of_mlp2_are_its_whole_forward_cost():
    """mlp2 is one gated linear layer and the head: its pair is the whole network, so the
    pair's MACs must be forward_cost's (a linear layer reads the flattened 1×16×16 image)."""
    network = build_network("mlp2", (1, 16, 16), 5, gated_layers=[1])
    mask = (torch.arange(100) % 4 == 0).float()[None]  # 25 of 100 channels on
    cost = forward_cost(network, [mask])
    dense, executed = pair_macs(network, 0, {0: mask.sum(dim=1)})
    assert dense == cost.dense_macs == 100 * 256 + 5 * 100
    assert executed == pytest.approx(float(cost.executed_macs[0]))


def test_step_macs_match_hand_count():
    """Forward, weight gradients, input gradients of all but the first layer."""
    network = build_network("cnn4", (1, 28, 28), 10, gated_layers=[3])
    conv1, conv2, conv3 = 32 * 9 * 28 * 28, 64 * 32 * 9 * 14 * 14, 128 * 64 * 9 * 7 * 7
    forward = conv1 + conv2 + conv3 + 10 * 128 * 3 * 3
    assert step_macs(network, batch_size=2) == 2 * (3 * forward - conv1)


def test_sliced_inference_bench_reports_ideal_from_macs():
    torch.manual_seed(0)
    gated = build_network("cnn4", (1, 16, 16), 5, gated_layers=[3])
    sparsify_gates(gated, off_fraction=0.5, varying_fraction=0.0, seed=0)
    dense = build_network("cnn4", (1, 16, 16), 5)
    result = bench_inference(gated, dense, torch.randn(4, 1, 16, 16), (1, 4), repeats=1,
                             calls_per_timing={1: 2, 4: 1})
    pair = result["batch1"]["layer3_and_next"]
    assert result["batch1"]["channels_off"] == pytest.approx(0.5)
    dense_macs, executed = pair_macs(gated, 2, {2: torch.tensor([64.0])})
    assert pair["ideal_speedup"] == pytest.approx(dense_macs / executed)


TINY_RESNET = {"stage_widths": [4, 8], "blocks_per_stage": 1}  # blocks 0 (4 ch) and 1 (8 ch)


def test_pair_macs_of_a_residual_block_are_the_block():
    """A residual block's gate point is read inside the block: the pair is that block, its
    shortcut conv included (timed alike either way), the gate's MLP executed on top."""
    network = build_network("cifar_resnet", (1, 16, 16), 5, gated_layers=[1, 2], **TINY_RESNET)
    assert [pair_stop(network, index) for index in (0, 1)] == [1, 2]
    active = torch.tensor([2.0, 6.0])  # block 1: 4 → 8 channels at stride 2, on an 8×8 map
    dense, executed = pair_macs(network, 1, {0: torch.tensor([1.0, 1.0]), 1: active})
    conv1, conv2, shortcut = 4 * 8 * 9 * 64, 8 * 8 * 9 * 64, 4 * 8 * 64
    assert dense == conv1 + conv2 + shortcut
    per_channel = 4 * 9 * 64 + 8 * 9 * 64
    gate = 4 * 16 + 16 * 8  # reads the block input pooled: its 4 channels, all computed
    assert executed == pytest.approx(per_channel * active.mean().item() + shortcut + gate)


def test_a_pair_counts_the_gates_it_runs():
    """cnn7's conv5 is read by the gated conv6: both gates run in the pair, and conv6 computes
    only its own active channels from conv5's."""
    network = build_network("cnn7", (1, 16, 16), 5, gated_layers=[5, 6])
    assert pair_stop(network, 4) == 6 and pair_stop(network, 5) == 7  # 7: with the head
    dense, executed = pair_macs(network, 4, {4: torch.tensor([10.0]), 5: torch.tensor([20.0])})
    conv5, conv6 = 128 * 64 * 9 * 4 * 4, 128 * 128 * 9 * 4 * 4  # the 4×4 map after two pools
    assert dense == conv5 + conv6
    gates = (64 * 16 + 16 * 128) + (10 * 16 + 16 * 128)  # gate 6 reads conv5's 10 channels
    assert executed == pytest.approx(10 * 64 * 9 * 16 + 20 * 10 * 9 * 16 + gates)


@pytest.mark.parametrize(("backbone", "gated_layers", "index", "options"), [
    ("cnn4", [3], 2, {}), ("cnn4", [2], 1, {}), ("mlp2", [1], 0, {}),
    ("cnn7", [5, 6], 4, {}),  # two gated points in one pair
    ("cifar_resnet", [1, 2], 1, TINY_RESNET),
])
def test_pruning_at_rest_computes_the_sliced_pair(backbone, gated_layers, index, options):
    """The floor of goal 4 is the same computation as the gated pair, done with less work."""
    torch.manual_seed(0)
    gated = build_network(backbone, (1, 16, 16), 5, gated_layers=gated_layers, **options)
    sparsify_gates(gated, off_fraction=0.5, varying_fraction=0.2, seed=0)
    dense = gated.without_gates()
    images = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        masks = dict(zip(gated.gated_layers, gated.forward_with_masks(images).masks,
                         strict=True))
        pruned, stop = pruned_pair(dense, gated, index, masks), pair_stop(gated, index)
        pruned_points = pruned.describe().points
        for point, mask in masks.items():  # cut to the image's channels, in the pair only
            channels = int(mask.sum()) if index <= point < stop else mask.shape[1]
            assert pruned_points[point].channels == channels
        assert int(masks[index].sum()) < masks[index].shape[1]
        layer_input = dense.features(images, index)
        torch.testing.assert_close(run_pair(pruned, index, stop, layer_input, False),
                                   run_pair(gated, index, stop, layer_input, True))


def test_inference_bench_runs_on_a_residual_network():
    torch.manual_seed(0)
    gated = build_network("cifar_resnet", (1, 16, 16), 5, gated_layers=[1, 2], **TINY_RESNET)
    sparsify_gates(gated, off_fraction=0.5, varying_fraction=0.0, seed=0)
    result = bench_inference(gated, gated.without_gates(), torch.randn(2, 1, 16, 16), (1,),
                             repeats=1, calls_per_timing={1: 1})
    assert result["batch1"]["channels_off"] == pytest.approx(0.5)
    assert {"layer1_and_next", "layer2_and_next_pruned_beforehand"} <= set(result["batch1"])
    dense_macs, executed = pair_macs(gated, 1, {1: torch.tensor([4.0])})
    assert result["batch1"]["layer2_and_next"]["ideal_speedup"] == pytest.approx(
        dense_macs / executed)


def test_memory_measure_counts_the_pooled_images():
    result = measure(["dataset=synthetic", "dataset.source.samples_per_class=11000"])
    assert result["nodes"] == 1000
    assert result["image_bytes"] == 6 * 11000 * 16 * 16  # synthetic.yaml: 6 classes, 16×16
    assert result["rss_ratio"] == pytest.approx(result["rss_increase_bytes"] / (6 * 11000 * 256))


@pytest.mark.parametrize("export", [False, pytest.param(True, marks=pytest.mark.integration)])
def test_suite_on_tiny_sizes_renders_every_goal(export):
    """Export on: the task module compiled twice (AOTInductor), as make bench does."""
    config = BenchConfig(clients_per_round=2, repeats=1, inference_batches=(1, 4),
                         memory=False, processes=False, compile_network=False,
                         huge_pages=False, data_overrides=("dataset=synthetic",), device_rounds=1,
                         stand_in_overrides=("dataset.source.samples_per_class=200",
                                             "dataset.partition.size_range=[20,60]",
                                             "dataset.batch_size=8",  # vmap: full batches
                                             "method.clients_per_round=2"),
                         export=export)
    threads = torch.get_num_threads()
    results = run_suite(config)
    assert torch.get_num_threads() == threads
    assert results["rounds"]["max_update_difference"] < 1e-5
    table = render(results, "make bench")
    for goal in ("| 1 |", "| 2 |", "| 3 |", "| 4 |"):
        assert goal in table
    assert "stand-in of `make gpu-check` on cpu" in table  # loop, concatenated, deterministic
    assert ("exported_whole_network" in results["inference"]["batch1"]) == export
    if export:
        assert results["export_format"]["predictions_equal"]
        assert "Saved format of a deployed task module, time of the loaded AOTInductor" in table
    else:
        assert "export_format" not in results
        assert "Saved format of a deployed task module: not measured" in table


def test_the_floor_summary_names_the_layers_on_each_side_of_the_goal():
    row = {}
    for layer, (gated, floor) in {1: (0.3, 0.8), 3: (0.1, 0.4)}.items():
        row[f"layer{layer}_and_next"] = {"share_of_ideal": gated}
        row[f"layer{layer}_and_next_pruned_beforehand"] = {"share_of_ideal": floor}
    text = _floor_summary({"batch1": row})
    assert "layer 1 and the layer reading it reach 80 % of the ideal, against 30 % gated" in text
    assert text.endswith("below the goal's 70 % at layer 3 and above it at layer 1.")
    del row["layer1_and_next"], row["layer1_and_next_pruned_beforehand"]
    assert _floor_summary({"batch1": row}).endswith("stay below the goal's 70 %.")


def test_the_bench_writes_to_the_repository_root():
    assert (parse_args([]).output_dir / "pyproject.toml").is_file()


@pytest.fixture
def deployable_module():
    """A deployed task module (uint8 in, logits out) and raw images of its task."""
    torch.manual_seed(0)
    gated = build_network("cnn4", (1, 16, 16), 5, gated_layers=[3])
    sparsify_gates(gated, off_fraction=0.5, varying_fraction=0.25, seed=0)
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    mean, std = (0.5,), (0.25,)
    normalized = (images / 255.0 - 0.5) / 0.25
    return RawImageInput(task_network(gated, normalized), mean, std), images


def test_the_exported_program_serves_every_batch_size(deployable_module):
    """Exported at batch 2 with a dynamic batch dimension; run at other sizes."""
    module, images = deployable_module
    loaded = saved_and_loaded_export(module, images[:2])
    with torch.no_grad():
        for batch_size in (1, 5):
            torch.testing.assert_close(loaded(images[:batch_size]), module(images[:batch_size]))


@pytest.mark.integration  # an AOTInductor C++ compile
def test_export_format_bench_compares_every_loaded_format_with_torchscript(deployable_module):
    module, images = deployable_module
    results = bench_export_formats(module, images, (1, 8), repeats=1,
                                   calls_per_timing={1: 1, 8: 1})
    assert results["predictions_equal"] and results["max_logit_difference"] < 1e-4
    assert "TorchScript module (traced)" in _export_format_summary(json.loads(json.dumps(results)))
    assert set(results["make_seconds"]) == {"aoti_package", "torch_export", "torchscript"}
    for figures in (results, results["torch_export"]):
        assert figures["batch8"]["repeats"] == 1 and figures["batch8"]["ratio_median"] == (
            figures["batch8"]["numerator_seconds"] / figures["batch8"]["denominator_seconds"])
    assert results["batch8"]["denominator_seconds"] == (
        results["torch_export"]["batch8"]["denominator_seconds"])  # one TorchScript timing


def test_the_package_holds_up_only_if_as_fast_and_alike():
    def figures(equal: bool, *medians: float) -> dict:
        return {"predictions_equal": equal, "max_logit_difference": 0.0,
                **{f"batch{i}": {"ratio_median": median} for i, median in enumerate(medians)}}

    assert holds_up(figures(True, 0.5, SAME_SPEED))
    assert not holds_up(figures(True, 0.5, SAME_SPEED + 0.01))  # too slow at one batch size
    assert not holds_up(figures(False, 0.5, 0.5))  # faster, but predicts otherwise


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_tried_alternatives_time_whole_rounds_from_one_state(tiny_config, compiled):
    """Every candidate runs, and leaves the learner as it found it: state, gate noise, layout."""
    cfg = tiny_config("method.clients_per_round=2", "method.local.steps=2",
                      "method.gate_noise=logistic", "dataset.batch_size=8")
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    buffers = {name: value.clone() for name, value in learner.named_buffers()}
    schedule, module = learner.gate_noise, learner.flat.module
    tried = bench_alternatives(learner, datamodule.train_clients, repeats=1,
                               compile_network=compiled)
    assert {"loop_nchw_over_loop", "vmap_over_loop", "vmap_over_loop_nchw"} <= set(tried)
    assert ("compiled_over_loop" in tried) == compiled and tried["vmap_error"] is None
    assert tried["clients"] == 2 and tried["local_steps"] == 2 and tried["batch_size"] == 8
    for name, value in learner.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert learner.gate_noise is schedule and learner.flat.module is module
    assert learner.network.channels_last
    assert "VmappedRound" in _alternatives_summary(tried)


def test_an_alternative_that_cannot_run_is_reported(tiny_learner):
    learner, clients = tiny_learner  # support sets smaller than the batch: vmap refuses
    learner.local_solver.batch_size = 64
    tried = bench_alternatives(learner, clients, repeats=1, compile_network=False)
    assert "vmap_over_loop" not in tried and "batch full" in tried["vmap_error"]
    assert "could not run here" in _alternatives_summary(tried)


class NoCompiler(torch.nn.Module):
    """What torch.compile gives on a machine without a C++ compiler: fails at the first call."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore lines")

    def set_gate_noise(self, *args) -> None:  # torch.compile's module forwards it, too
        self.network.set_gate_noise(*args)


def test_a_failing_compile_is_reported_not_fatal(tiny_learner, monkeypatch):
    learner, clients = tiny_learner
    monkeypatch.setattr(torch, "compile", NoCompiler)
    tried = bench_alternatives(learner, clients, repeats=1)
    assert "compiled_over_loop" not in tried
    assert tried["compile_error"] == ("RuntimeError: InvalidCxxCompiler: no working C++ "
                                      "compiler found")
    assert "`torch.compile` failed here (RuntimeError" in _alternatives_summary(tried)


@pytest.mark.slow
def test_process_bench_times_both_counts_and_renders():
    processes = bench_processes(["dataset=synthetic", "method.clients_per_round=4"], rounds=4)
    assert processes["rounds_timed"] == {"1": 4, "2": 4}  # 2 runs each, warm-up rounds dropped
    assert 0 < processes["gather_share_two"] < 1
    json_like = json.loads(json.dumps(processes))  # as BENCHMARKS.json stores it
    assert "2 processes" in "".join(_processes_summary(json_like))


def test_huge_pages_bench_runs_both_settings_to_the_same_results_and_renders():
    figures = bench_huge_pages(["dataset.source.samples_per_class=200",
                                "dataset.partition.size_range=[20,60]",
                                "method.clients_per_round=2"], rounds=1, targets=2,
                               order=("1", "0"))  # one process per setting
    assert figures["children_per_setting"] == 1
    assert figures["same_accuracies"]  # every child adapted the same targets to the same bits
    for setting in ("on", "off"):
        assert figures[setting]["evaluation_seconds"] > 0
        assert figures[setting]["evaluation_page_faults"] > 0
    line = "".join(_huge_pages_summary(json.loads(json.dumps(figures))))
    assert "evaluation of 2 targets" in line and "equal in every process" in line


def test_device_bench_workload_is_the_cifar10_job_on_cifar_shaped_data():
    cfg = compose_config(CIFAR10_STAND_IN)
    validate(cfg)
    paper = compose_config(["experiment=table1_cifar10"])
    assert cfg.dataset.name == "synthetic" and list(cfg.dataset.source.shape) == [3, 32, 32]
    assert cfg.dataset.source.num_classes * cfg.dataset.source.samples_per_class == 60000
    assert cfg.dataset.partition == paper.dataset.partition and cfg.model == paper.model
    assert cfg.method.clients_per_round == 20 and cfg.method.local.steps == 1


def test_device_bench_times_rounds_on_each_device_it_is_given():
    shrink = ["dataset.source.samples_per_class=200", "dataset.partition.size_range=[20,60]",
              "dataset.batch_size=8", "method.clients_per_round=2"]  # vmap: full batches
    results = bench_devices(rounds=2, warmup=1, overrides=shrink,
                            devices=[torch.device("cpu")])
    times = results["round_seconds"]["cpu"]
    assert times["rounds"] == 2 and set(times["ways"]) == {"loop", "concatenated", "vmapped",
                                                           "deterministic"}
    for figures in times["ways"].values():
        assert 0 < figures["min"] <= figures["median"] <= figures["max"]
    assert times["ways"]["loop"]["over_loop"] == 1
    assert times["ways"]["concatenated"]["max_meta_model_difference"] < 1e-6  # 3 rounds
    assert times["ways"]["vmapped"]["max_meta_model_difference"] < 1e-6
    assert times["ways"]["deterministic"]["max_meta_model_difference"] == 0  # CPU kernels
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is given back
    evaluation = times["evaluation"]
    assert 0 < evaluation["curve_seconds"] and 0 < evaluation["final_seconds"]
    assert times["projected_run_seconds"] > times["ways"]["loop"]["median"]
    assert "projected job s" in render_devices(results)
    assert "cpu_over_gpu" not in results  # one device: no ratio
    assert "| cpu |" in render_devices(results)


@pytest.mark.parametrize("rounds, every, curve_evaluations", [
    (500, 50, 9),   # make train-cifar10: rounds 50, ..., 450 for the curve; 500 is the final
    (500, 0, 0),    # no curve: the final evaluation alone
    (7, 3, 2),      # rounds 3 and 6, then the final one at 7
])
def test_projected_job_counts_the_evaluations_training_makes(rounds, every, curve_evaluations):
    cfg = SimpleNamespace(rounds=rounds, eval_every=every)
    evaluation = {"curve_seconds": 10.0, "final_seconds": 1000.0}
    assert projected_run_seconds(cfg, 0.5, evaluation) == (
        rounds * 0.5 + curve_evaluations * 10.0 + 1000.0)


def test_the_rewritten_benchmarks_keep_the_hand_written_flower_section():
    flower = f"{FLOWER_SECTION}\n\nBy hand.\n\n| a | b |\n"
    assert with_flower_section("# New\n", "# Old\n" + flower) == "# New\n" + flower
    assert with_flower_section("# New\n", "# Old\n") == "# New\n"
    assert with_flower_section("# New\n", "") == "# New\n"
