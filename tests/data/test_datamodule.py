"""Client and federated DataModules on synthetic data (METHOD.md §2)."""

from __future__ import annotations

import copy

import lightning
import pytest
import torch
from omegaconf import OmegaConf

from mglightning.data import ClientDataModule, FederatedDataModule, PartitionError
from mglightning.data.datamodule import node_split
from mglightning.data.datasets import make_synthetic

NUM_NODES, NUM_TARGET_NODES = 10, 3


@pytest.fixture
def dataset_cfg() -> dict:
    return {
        "name": "synthetic",
        "support_fraction": 0.75,
        "num_target_nodes": NUM_TARGET_NODES,
        "source": {"_target_": "mglightning.data.datasets.make_synthetic", "num_classes": 6,
                   "shape": [1, 12, 12], "samples_per_class": 200, "seed": 1},
        "partition": {"_target_": "mglightning.data.partition.PathologicalPartitioner",
                      "num_nodes": NUM_NODES, "classes_per_node": 2, "size_range": [40, 90]},
    }


@pytest.fixture
def federation(dataset_cfg) -> FederatedDataModule:
    datamodule = FederatedDataModule(dataset_cfg, seed=0, batch_size=16)
    datamodule.setup()
    return datamodule


def all_clients(datamodule: FederatedDataModule) -> list[ClientDataModule]:
    return datamodule.train_clients + datamodule.target_clients


def test_clients_hold_index_views_not_images(federation):
    clients = all_clients(federation)
    assert all(client.data is federation.data for client in clients)
    for client in clients:
        tensors = [value for value in vars(client).values() if isinstance(value, torch.Tensor)]
        assert all(tensor.dtype == torch.int64 and tensor.dim() == 1 for tensor in tensors)
        assert sum(tensor.numel() for tensor in tensors) == client.num_samples
    images, labels = clients[0].support_set()
    expected_images, expected_labels = federation.data.batch(clients[0].support_idx)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_nodes_are_disjoint_and_split_into_training_and_target(federation):
    assert len(federation.train_clients) == NUM_NODES - NUM_TARGET_NODES
    assert len(federation.target_clients) == NUM_TARGET_NODES
    clients = all_clients(federation)
    assert sorted(client.node_id for client in clients) == list(range(NUM_NODES))
    everything = torch.cat([torch.cat([c.support_idx, c.query_idx]) for c in clients])
    assert len(torch.unique(everything)) == len(everything)
    for client in clients:
        assert len(client.classes) == 2 and 40 <= client.num_samples <= 90
        assert abs(len(client.support_idx) - 0.75 * client.num_samples) <= 1


def test_module_exposes_shape_classes_and_sizes(federation):
    assert federation.num_classes == 6 and federation.input_shape == (1, 12, 12)
    expected_sizes = [client.num_samples for client in federation.train_clients]
    assert federation.node_sizes.tolist() == expected_sizes
    summary = federation.describe()
    assert "synthetic" in summary and f"{NUM_NODES} nodes" in summary and "\n" not in summary


def test_setup_is_idempotent(federation):
    clients = list(federation.train_clients)
    federation.setup("test")
    assert federation.train_clients == clients


def test_federation_is_seeded(dataset_cfg, federation):
    def node_views(datamodule: FederatedDataModule) -> list[torch.Tensor]:
        return [client.support_idx for client in all_clients(datamodule)]

    same = FederatedDataModule(copy.deepcopy(dataset_cfg), seed=0, batch_size=16)
    other = FederatedDataModule(copy.deepcopy(dataset_cfg), seed=1, batch_size=16)
    same.setup()
    other.setup()
    assert all(torch.equal(a, b) for a, b in zip(node_views(federation), node_views(same),
                                                 strict=True))
    assert node_views(federation)[0].tolist() != node_views(other)[0].tolist()


def test_sample_support_batch_is_deterministic_without_replacement(federation):
    client = federation.train_clients[0]
    first = client.sample_support_batch(8, torch.Generator().manual_seed(5))
    again = client.sample_support_batch(8, torch.Generator().manual_seed(5))
    assert first[0].shape == (8, 1, 12, 12)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    everything, labels = client.sample_support_batch(10_000, torch.Generator().manual_seed(5))
    support_images, support_labels = client.support_set()
    assert len(everything) == len(support_images)
    row_sums = everything.flatten(1).sum(dim=1).sort().values
    torch.testing.assert_close(row_sums, support_images.flatten(1).sum(dim=1).sort().values)
    assert torch.equal(labels.sort().values, support_labels.sort().values)


def test_client_loaders_cover_support_and_query(federation):
    client = federation.train_clients[0]
    train_batches = list(client.train_dataloader())
    assert all(len(labels) <= client.batch_size for _, labels in train_batches)
    train_labels = torch.cat([labels for _, labels in train_batches])
    assert torch.equal(train_labels.sort().values, client.support_set()[1].sort().values)
    query_images = torch.cat([images for images, _ in client.test_dataloader()])
    assert torch.equal(query_images, client.query_set()[0])


def test_test_dataloader_yields_each_target_index_once(federation):
    indices = list(federation.test_dataloader())
    assert indices == list(range(NUM_TARGET_NODES))
    assert all(type(index) is int for index in indices)


def test_impossible_partition_fails_before_loading_data(dataset_cfg, tmp_path):
    """A bad node count is reported even though the (absent) data set was never loaded."""
    dataset_cfg.update(name="fmnist", num_target_nodes=NUM_NODES,
                       source={"_target_": "mglightning.data.datasets.fmnist", "download": False})
    datamodule = FederatedDataModule(dataset_cfg, seed=0, data_root=str(tmp_path))
    with pytest.raises(PartitionError, match="dataset.num_target_nodes"):
        datamodule.setup()


def test_partition_larger_than_the_data_fails_at_setup(dataset_cfg):
    dataset_cfg["partition"]["size_range"] = [500, 600]
    with pytest.raises(PartitionError, match="dataset.partition.size_range"):
        FederatedDataModule(dataset_cfg, seed=0).setup()


def test_omegaconf_config_is_accepted(dataset_cfg):
    datamodule = FederatedDataModule(OmegaConf.create(dataset_cfg), seed=0)
    datamodule.setup()
    assert datamodule.input_shape == (1, 12, 12)


class TinyClassifier(lightning.LightningModule):
    def __init__(self, num_inputs: int, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(num_inputs, num_classes)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.steps += 1
        return torch.nn.functional.cross_entropy(self.linear(images.flatten(1)), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_client_datamodule_drives_a_lightning_trainer(federation):
    client = federation.train_clients[0]
    model = TinyClassifier(12 * 12, federation.num_classes)
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(model, datamodule=client)
    assert model.steps == len(client.train_dataloader())


@pytest.mark.parametrize("seed", [0, 5])
def test_the_config_alone_gives_the_loaded_federations_node_split(dataset_cfg, seed):
    """config.py checks K and the fault-injected nodes against ``node_split`` before any data
    is loaded: the split the data module makes after loading must be that one."""
    datamodule = FederatedDataModule(dataset_cfg, seed=seed)
    datamodule.setup()
    train_ids, target_ids = node_split(NUM_NODES, NUM_TARGET_NODES, seed)
    assert [client.node_id for client in datamodule.train_clients] == train_ids
    assert [client.node_id for client in datamodule.target_clients] == target_ids


def test_too_few_training_nodes_for_k_fail_at_setup(dataset_cfg):
    datamodule = FederatedDataModule(dataset_cfg, seed=0,
                                     clients_per_round=NUM_NODES - NUM_TARGET_NODES + 1)
    with pytest.raises(PartitionError, match="method.clients_per_round=8: must be at most the 7"):
        datamodule.setup()


def test_a_partition_node_without_a_required_field_is_named_before_loading(dataset_cfg,
                                                                         monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded")

    monkeypatch.setattr("mglightning.data.datasets.make_synthetic", no_data)
    del dataset_cfg["partition"]["classes_per_node"]
    with pytest.raises(PartitionError, match="dataset.partition: .*classes_per_node"):
        FederatedDataModule(dataset_cfg, seed=0).setup()


def test_the_source_node_is_called_with_the_data_root_and_its_options(dataset_cfg, tmp_path,
                                                                      monkeypatch):
    """``dataset.source``: its target, called with the run's data root (not a config key) and
    the node's options."""
    calls = []

    def loader(data_root, /, **options):
        calls.append((data_root, options))
        return make_synthetic(num_classes=6, shape=(1, 12, 12), samples_per_class=200)

    monkeypatch.setattr("mglightning.data.datasets.make_synthetic", loader)
    FederatedDataModule(dataset_cfg, seed=0, data_root=str(tmp_path)).setup()
    assert calls == [(str(tmp_path), {"num_classes": 6, "shape": [1, 12, 12],
                                      "samples_per_class": 200, "seed": 1})]
