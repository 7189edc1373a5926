"""Own data by config alone: tiny PNG/JPEG trees and npz files made here (METHOD.md §2)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tree
from omegaconf import OmegaConf

from mglightning.build import compose_config
from mglightning.data import FederatedDataModule, PartitionError
from mglightning.data.own_data import load_arrays, load_image_folder
from mglightning.train import run

README = Path(__file__).resolve().parents[2] / "README.md"


LOADERS = {"folder": "mglightning.data.own_data.load_image_folder",
           "arrays": "mglightning.data.own_data.load_arrays"}
NATURAL = {"_target_": "mglightning.data.partition.NaturalPartitioner"}


def dataset_config(name: str, path: Path, partition: dict, num_target_nodes: int) -> dict:
    return {"name": name, "support_fraction": 0.75, "batch_size": 4,
            "num_target_nodes": num_target_nodes,
            "source": {"_target_": LOADERS[name], "path": str(path)}, "partition": partition}


def test_a_png_tree_is_pooled_pixel_for_pixel_with_sorted_class_labels(tmp_path):
    written = write_tree(tmp_path, {"dog": 3, "cat": 2, "emu": 4})
    data = load_image_folder(path=str(tmp_path), image_size=None)
    assert data.shape == (1, 8, 6) and data.num_classes == 3
    assert data.class_names == ("cat", "dog", "emu") and data.node_ids is None
    files = sorted(written)  # cat/..., dog/..., emu/...: the loader's order too
    assert torch.equal(data.images[:, 0], torch.from_numpy(np.stack([written[f] for f in files])))
    assert data.labels.tolist() == [0] * 2 + [1] * 3 + [2] * 4


def test_rgb_and_grayscale_images_pool_as_rgb(tmp_path):
    gray = write_tree(tmp_path, {"a": 2}, mode="L", seed=1)
    rgb = write_tree(tmp_path, {"b": 2}, mode="RGB", seed=2)
    data = load_image_folder(path=str(tmp_path))
    assert data.shape == (3, 8, 6)
    first_gray = torch.from_numpy(gray[sorted(gray)[0]])
    assert all(torch.equal(data.images[0, channel], first_gray) for channel in range(3))
    assert torch.equal(data.images[2].permute(1, 2, 0), torch.from_numpy(rgb[sorted(rgb)[0]]))


def test_jpeg_files_are_read_and_image_size_resizes_every_image(tmp_path):
    write_tree(tmp_path, {"a": 2}, size=(10, 12), mode="RGB", suffix=".jpg")
    write_tree(tmp_path, {"b": 2}, size=(20, 16), mode="RGB", suffix=".JPEG")
    data = load_image_folder(path=str(tmp_path), image_size=[7, 9])
    assert data.shape == (3, 7, 9) and len(data) == 4


def test_arrays_are_pooled_with_labels_made_dense(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)  # N, H, W, C
    labels = np.array([7, 3, 7, 9, 3, 3])
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    data = load_arrays(path=str(tmp_path / "data.npz"))
    assert data.shape == (3, 5, 4) and data.num_classes == 3
    assert data.class_names == ("3", "7", "9") and data.labels.tolist() == [1, 0, 1, 2, 0, 0]
    assert torch.equal(data.images.permute(0, 2, 3, 1), torch.from_numpy(images))
    np.savez(tmp_path / "gray.npz", images=images[..., 0], labels=labels)
    gray = load_arrays(path=str(tmp_path / "gray.npz"))
    assert gray.shape == (1, 5, 4) and torch.equal(gray.images[:, 0],
                                                   torch.from_numpy(images[..., 0]))


def natural_tree(root: Path, node_sizes: dict[str, int]) -> None:
    """root/<node>/<class>/<image>: every node two classes of its own size each."""
    for seed, (node, size) in enumerate(node_sizes.items()):
        write_tree(root / node, {"x": size, "y": size}, seed=seed)


def test_natural_partition_keeps_the_datas_nodes_and_draws_targets_by_seed(tmp_path):
    node_sizes = {f"writer{index}": 3 + index for index in range(6)}
    natural_tree(tmp_path, node_sizes)
    datamodules = {}
    for seed in (0, 0, 1, 2, 3):
        datamodules.setdefault(seed, []).append(FederatedDataModule(
            dataset_config("folder", tmp_path, NATURAL, 2), seed=seed, clients_per_round=4))
    for copies in datamodules.values():
        for datamodule in copies:
            datamodule.setup()
    first = datamodules[0][0]
    assert first.data.node_names == tuple(node_sizes)
    clients = sorted(first.train_clients + first.target_clients, key=lambda c: c.node_id)
    for client, (node, size) in zip(clients, node_sizes.items(), strict=True):
        rows = torch.cat([client.support_idx, client.query_idx])
        assert client.num_samples == 2 * size
        assert set(first.data.node_ids[rows].tolist()) == {list(node_sizes).index(node)}
    targets = {seed: [c.node_id for c in copies[0].target_clients]
               for seed, copies in datamodules.items()}
    assert targets[0] == [c.node_id for c in datamodules[0][1].target_clients]
    assert len(targets[0]) == 2 and len(set(map(tuple, targets.values()))) > 1


def test_natural_partition_from_npz_node_ids(tmp_path):
    rng = np.random.default_rng(0)
    node_ids = np.repeat([40, 10, 30], 8)  # three nodes, named by any integers
    np.savez(tmp_path / "data.npz", images=rng.integers(0, 256, (24, 4, 4), dtype=np.uint8),
             labels=np.tile([0, 1], 12), node_ids=node_ids)
    datamodule = FederatedDataModule(dataset_config("arrays", tmp_path / "data.npz", NATURAL, 1),
                                     seed=0)
    datamodule.setup()
    clients = sorted(datamodule.train_clients + datamodule.target_clients,
                     key=lambda c: c.node_id)
    assert datamodule.data.node_names == ("10", "30", "40")
    for client, node_value in zip(clients, (10, 30, 40), strict=True):
        rows = torch.cat([client.support_idx, client.query_idx]).sort().values
        assert torch.equal(rows, torch.from_numpy(np.flatnonzero(node_ids == node_value)))


def readme_own_data() -> str:
    return README.read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("dataset", ["folder", "arrays"])
def test_readme_own_data_minimum_holds(dataset):
    """The default partition of the own-data configs cuts the README's "N images of K classes"
    for seeds 0-4 (data made in memory, partitioned and split as a run does), and refuses
    fewer than the README's floor at once, naming the keys to change."""
    section = " ".join(readme_own_data().split())
    claims = [(int(images), int(classes))
              for images, classes in re.findall(r"(\d+) images of (\d+) classes", section)]
    [floor] = [int(count) for count in re.findall(r"fewer than (\d+) images are refused", section)]
    cfg = compose_config([f"dataset={dataset}"])
    dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    partition = dataset_cfg["partition"]
    assert len(claims) >= 3 and floor == partition["num_nodes"] * partition["min_size"]

    def federation(num_classes: int, samples_per_class: int, seed: int) -> FederatedDataModule:
        source = {"_target_": "mglightning.data.datasets.make_synthetic", "shape": [1, 2, 2],
                  "num_classes": num_classes, "samples_per_class": samples_per_class}
        datamodule = FederatedDataModule(dataset_cfg | {"source": source}, seed=seed,
                                         clients_per_round=cfg.method.clients_per_round)
        datamodule.setup()
        return datamodule

    for images, classes in claims:
        for seed in range(5):
            assert len(federation(classes, images // classes, seed).data) == images
    with pytest.raises(PartitionError, match=rf"need {floor} samples but the data set has "
                       rf"{floor - 1}: lower dataset.partition.num_nodes or "
                       "dataset.partition.min_size"):
        federation(floor - 1, 1, seed=0)


def readme_example() -> tuple[str, list[str]]:
    """The README's own-data example: the Python that makes the tree, the train overrides."""
    block = re.search(r"```bash\n(.*?)```", readme_own_data(), re.S).group(1)
    script = re.search(r'-c "\n(.*?)"', block, re.S).group(1)
    command = next(line for line in block.splitlines() if "-m mglightning.train" in line)
    return script, command.split("-m mglightning.train", 1)[1].split()


def test_readme_own_data_example_runs_as_written(tiny_config, tmp_path, monkeypatch):
    """The README's commands, in a fresh folder, with rounds=2 and no logger."""
    script, overrides = readme_example()
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "README.md", "exec"), {})  # the README's own snippet, as written
    assert len(list((tmp_path / "my_images").glob("*/*.png"))) > 0
    cfg = tiny_config(*overrides, "rounds=2", "logger=none", "eval_every=0",
                      "method.clients_per_round=20")
    assert cfg.dataset.name == "folder" and cfg.dataset.source.path == "my_images"
    summary = run(cfg)
    tasks = (Path(cfg.output_dir) / "tasks.csv").read_text().splitlines()
    assert summary["rounds"] == 2 and len(tasks) == 1 + cfg.dataset.num_target_nodes


def test_an_npz_with_node_ids_trains_on_its_natural_nodes(tiny_config, tmp_path):
    """The README's arrays + natural-partition shape, through the validated config and run."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.integers(0, 256, (120, 10, 10, 3), np.uint8),
             labels=rng.integers(0, 3, 120), node_ids=np.repeat(np.arange(6), 20))
    cfg = tiny_config("dataset=arrays", f"dataset.source.path={tmp_path / 'data.npz'}",
                      "~dataset.partition",
                      "+dataset.partition={_target_:mglightning.data.partition.NaturalPartitioner}",
                      "dataset.num_target_nodes=2",
                      "method.clients_per_round=3", "model=mlp2", "rounds=2", "eval_every=0")
    summary = run(cfg)
    tasks = (Path(cfg.output_dir) / "tasks.csv").read_text().splitlines()
    assert summary["rounds"] == 2 and len(tasks) == 1 + 2
