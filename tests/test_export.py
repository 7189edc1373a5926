import pytest
import torch
from torch._inductor.exc import InvalidCxxCompiler

from benchmarks.workload import sparsify_gates
from mglightning import export
from mglightning.adaptation.steps import two_stage
from mglightning.build import build_datamodule
from mglightning.build import build_network as build_model
from mglightning.export import compile_package, load_package, task_network
from mglightning.models import build_network


def parameter_count(module) -> int:
    return sum(param.numel() for param in module.parameters())


@pytest.fixture
def adapted_task(tiny_config):
    """A target node's adapted gated cnn4 (gated at conv3), with its support and query sets."""
    cfg = tiny_config()
    datamodule = build_datamodule(cfg)
    network = build_model(cfg, datamodule)
    sparsify_gates(network, off_fraction=0.5, varying_fraction=0.25, seed=0)
    client = datamodule.target_clients[0]
    support, query = client.support_set(), client.query_set()
    two_stage(network, *support, lr=cfg.method.adaptation.lr)
    return network, support[0], query[0]


def test_export_predicts_like_the_gated_network_on_the_task_query(adapted_task):
    network, support_images, query_images = adapted_task
    exported = task_network(network, torch.cat([support_images, query_images]))
    with torch.no_grad():
        expected = network.forward_with_masks(query_images, sliced=False).logits
        torch.testing.assert_close(exported(query_images), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(exported(query_images).argmax(1), expected.argmax(1))


def test_always_off_channels_are_removed_from_the_layer_and_its_reader(adapted_task):
    network, support_images, query_images = adapted_task
    images = torch.cat([support_images, query_images])
    with torch.no_grad():
        mask = network.forward_with_masks(images).masks[0]  # conv3, (B, 128)
    kept = int((mask.amax(dim=0) > 0).sum())
    removed = 128 - kept
    assert removed >= 32  # sparsify_gates forced half of them off
    conv3_in = network.blocks[2].op.in_channels
    head_area = 2 * 2  # 16×16 input, three 2×2 max-pools
    per_channel = (conv3_in * 9 + 1) + network.head.out_features * head_area
    gate_row = network.blocks[2].gate.out.in_features + 1
    exported = task_network(network, images)
    assert parameter_count(exported) == parameter_count(network) - removed * (
        per_channel + gate_row
    )


def test_layer_without_varying_channels_loses_its_gate():
    torch.manual_seed(0)
    network = build_network("cnn4", (1, 16, 16), 5, gated_layers=[3])
    sparsify_gates(network, off_fraction=0.75, varying_fraction=0.0, seed=0)
    images = torch.randn(8, 1, 16, 16)
    exported = task_network(network, images)
    gate = network.blocks[2].gate
    conv3_in, head_area = network.blocks[2].op.in_channels, 2 * 2
    gate_parameters = parameter_count(gate)
    kept = 32
    expected = (parameter_count(network) - gate_parameters
                - (128 - kept) * (conv3_in * 9 + 1 + 5 * head_area))
    assert parameter_count(exported) == expected
    with torch.no_grad():
        torch.testing.assert_close(exported(images), network(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "shape", "gated"),
    [("cnn4", (3, 16, 16), [1, 2, 3]), ("cnn7", (3, 16, 16), [5, 6]), ("mlp2", (1, 8, 8), [1])],
)
def test_export_matches_for_every_backbone_and_gate_layout(name, shape, gated):
    torch.manual_seed(0)
    network = build_network(name, shape, 7, gated_layers=gated)
    sparsify_gates(network, off_fraction=0.4, varying_fraction=0.3, seed=1)
    images = torch.randn(16, *shape)
    exported = task_network(network, images)
    assert parameter_count(exported) < parameter_count(network)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), network(images), rtol=1e-5, atol=1e-5)


@pytest.mark.integration  # an AOTInductor compile
def test_the_compiled_package_loads_back_and_predicts_alike_at_every_batch_size(adapted_task):
    """The .pt2 package (exported at batch 2 with a dynamic batch dimension) from its bytes."""
    network, support_images, query_images = adapted_task
    exported = task_network(network, torch.cat([support_images, query_images]))
    loaded = load_package(compile_package(exported, query_images))
    with torch.no_grad():
        for batch_size in (1, 5, len(query_images)):
            torch.testing.assert_close(loaded(query_images[:batch_size]),
                                       exported(query_images[:batch_size]))


def test_without_a_cpp_compiler_the_export_says_what_to_install(monkeypatch):
    def no_compiler():
        raise InvalidCxxCompiler

    monkeypatch.setattr(export, "get_cpp_compiler", no_compiler)
    module = torch.nn.Linear(4, 2)
    with pytest.raises(export.NoCompilerError, match="found no compiler: install g\\+\\+"):
        export.compile_package(module, torch.zeros(3, 4))
