"""Bad input never hurts the machine or the record: each case ends in one line on stderr, exit 2,
no traceback, and no file written or changed anywhere under the test's folder (the run's output
root, its data root and its working directory all lie there).

Every entry point's refusals are here: the data's (an image tree, arrays, a data set's files),
the config's, and a run's (checkpoints, meta-models, run folders; reproduce and deploy). The
cases run in this process (the entry point's ``main`` with its argv, about a quarter of a second
a case); :func:`test_the_real_entry_point_says_the_same` runs two of them as the real command.
A new case is one :class:`BadInput` in :data:`CASES`: its argv (``{tmp}`` stands for the test's
folder, ``{run}`` for the run folder its setup made there), what its ``setup`` writes there
first, the regex its line must match, and its ``entry`` when the command is not ``python -m
mglightning.train``: any ``main(argv)`` that prints ``error: ...`` and exits 2, e.g.
``BadInput("unknown experiment", ("no_such_table",), "no_such_table", entry=reproduce_main)``.
Each case may take 1 GiB of address space more than the test process holds
(:data:`EXTRA_ADDRESS_SPACE`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import resource
import shutil
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FINISHED_RUN, TINY, compose_config, train_cli, write_tree
from omegaconf import OmegaConf

from mglightning import build
from mglightning.config import CONF_DIR
from mglightning.data.datasets import DEBIAN_FMNIST_ENV
from mglightning.deploy import main as deploy_main
from mglightning.reproduce import main as reproduce_main
from mglightning.train import run

# Every training case writes under the test's folder, on the CPU, without a logger.
TRAIN = ("logger=none", "progress_bar=false", "trainer.accelerator=cpu", "output_root={tmp}/out")
FOLDER = (*TRAIN, "dataset=folder", "dataset.source.path={tmp}/images")
ARRAYS = (*TRAIN, "dataset=arrays", "dataset.source.path={tmp}/data.npz")
SMALL_FEDERATION = ("dataset.partition.num_nodes=6", "dataset.num_target_nodes=1",
                    "method.clients_per_round=4")
NATURAL = ("~dataset.partition",
           "+dataset.partition={_target_:mglightning.data.partition.NaturalPartitioner}",
           "dataset.num_target_nodes=1", "method.clients_per_round=2")
SYNTHETIC = (*TRAIN, "dataset=synthetic")
FMNIST = (*TRAIN, "dataset=fmnist", "dataset.source.download=false")
# A run's input: the tests' tiny run, its folder under {tmp}/runs.
RUN = (*TINY, "output_root={tmp}/runs")
METASNIP = (*RUN, "method=metasnip", "rounds=1", "method.meta_checkpoint={tmp}/meta.ckpt")


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``entry(argv)`` after ``setup(tmp, *fixtures)`` (the values of the pytest
    fixtures named in ``fixtures``) must exit 2 with one stderr line, ``error: ...``, matching
    ``message`` (a regex searched in it; ``{tmp}`` and ``{run}`` stand for those paths) and
    holding none of the words in ``absent``. ``env`` is set while it runs; ``marks`` are
    pytest's, for a case some machines cannot make."""

    id: str
    argv: tuple[str, ...]
    message: str
    setup: Callable[..., None] = lambda tmp: None
    entry: Callable[[list[str]], None] = train_cli
    fixtures: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    marks: tuple = ()


def exactly(line: str) -> str:
    """The regex of this whole line and nothing else."""
    return f"^{re.escape(line)}$"


# --- setups: what a case writes under the test's folder before it runs -----------------------


def two_classes(tmp: Path, count: int = 2, **options) -> None:
    write_tree(tmp / "images", {"a": count, "b": count}, **options)


def corrupt_png(tmp: Path) -> None:
    two_classes(tmp)
    (tmp / "images" / "b" / "001.png").write_bytes(b"not a png")


def empty_png_file(tmp: Path) -> None:
    two_classes(tmp)
    (tmp / "images" / "b" / "001.png").write_bytes(b"")


def empty_class_folder(tmp: Path) -> None:
    two_classes(tmp)
    (tmp / "images" / "c").mkdir()


def one_class(tmp: Path) -> None:
    write_tree(tmp / "images", {"a": 3})


def mixed_layout(tmp: Path) -> None:
    two_classes(tmp)
    write_tree(tmp / "images" / "node0", {"x": 1})


def png_too_large_to_decode(tmp: Path) -> None:
    """A PNG whose header says 20000x20000 pixels (the pixels themselves are not there)."""
    two_classes(tmp)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = (20000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grayscale
    (tmp / "images" / "b" / "001.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def two_sizes(tmp: Path) -> None:
    write_tree(tmp / "images", {"a": 2}, size=(10, 12))
    write_tree(tmp / "images", {"b": 2}, size=(20, 16))


def few_images(tmp: Path) -> None:
    two_classes(tmp, count=30)  # 60 images: fewer than 24 nodes of 3


def tiny_images(tmp: Path) -> None:
    two_classes(tmp, count=20, size=(7, 7))  # cnn4 pools 7x7 three times: nothing left


def natural_tree(tmp: Path, tiny_size: int = 4) -> None:
    """images/<node>/<class>/<image>: alice, bob and tiny, two classes each."""
    for seed, (node, size) in enumerate({"alice": 4, "bob": 4, "tiny": tiny_size}.items()):
        write_tree(tmp / "images" / node, {"x": size, "y": size}, seed=seed)


def a_file(tmp: Path) -> None:
    (tmp / "images").write_bytes(b"\x89PNG")


def a_folder(tmp: Path) -> None:
    (tmp / "data.npz").mkdir()


def npz(**arrays) -> Callable[[Path], None]:
    return lambda tmp: np.savez(tmp / "data.npz", **arrays)


def raw_file(content: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "data.npz").write_bytes(content)


def npy_named_npz(tmp: Path) -> None:
    with open(tmp / "data.npz", "wb") as handle:
        np.save(handle, np.zeros((4, 3, 3), np.uint8))


def npz_declaring_huge_images(tmp: Path) -> None:
    """An npz whose images header declares a terabyte; the bytes behind it are a few."""
    images, labels = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(images, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (1000000, 1000, 1000)})
    np.save(labels, np.arange(4))
    with zipfile.ZipFile(tmp / "data.npz", "w") as archive:
        archive.writestr("images.npy", images.getvalue() + bytes(36))
        archive.writestr("labels.npy", labels.getvalue())


def missing_fmnist(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def cut_off_fmnist(tmp: Path) -> None:
    """Fashion-MNIST's four files under data_root, each cut off after its magic number."""
    raw = tmp / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03 cut off")


# --- setups of a run's input: checkpoints, meta-models, run folders ---------------------------


class RunsCodeWhenUnpickled:
    """What a crafted checkpoint carries: unpickling it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def crafted_checkpoint(path: Path) -> Path:
    """A checkpoint that would create a file beside it if it were unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "payload": RunsCodeWhenUnpickled(path.with_suffix(".ran"))},
               path)
    return path


@pytest.fixture(scope="module")
def nogate_checkpoint(tmp_path_factory) -> Path:
    """The checkpoint of a one-round run without gates: a meta-model MetaSNIP can adapt."""
    cfg = compose_config(["method=metagater_nogate", "rounds=1", "eval_every=0"],
                         tmp_path_factory.mktemp("nogate"))
    run(cfg)
    return Path(cfg.output_dir) / "checkpoints" / "last.ckpt"


def snip_run_of_another_meta_model(tmp: Path, nogate_checkpoint: Path) -> None:
    """The finished MetaSNIP run of :data:`METASNIP` under ``tmp/runs``, whose meta-model at
    ``tmp/meta.ckpt`` was replaced since by another (its x_ag moved, saved as tensors alone)."""
    meta = tmp / "meta.ckpt"
    shutil.copy(nogate_checkpoint, meta)
    run(build.compose_config([filled_in(arg, tmp) for arg in METASNIP]))
    state = torch.load(meta, weights_only=True)["state_dict"]
    state["x_ag"] = state["x_ag"] + 1e-3
    torch.save({"state_dict": state}, meta)


def unfinished_run(tmp: Path, finished_run) -> Path:
    """A copy of the shared finished run under ``tmp/runs`` with its results removed: a run to
    resume. Returns its checkpoint."""
    folder = tmp / "runs" / Path(finished_run.output_dir).relative_to(finished_run.output_root)
    shutil.copytree(finished_run.output_dir, folder)
    (folder / "summary.json").unlink()
    return folder / "checkpoints" / "last.ckpt"


def resume_from_a_crafted_checkpoint(tmp: Path, finished_run) -> None:
    crafted_checkpoint(unfinished_run(tmp, finished_run))


def resume_from_a_cut_checkpoint(tmp: Path, finished_run) -> None:
    checkpoint = unfinished_run(tmp, finished_run)
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])


def handed_over_run_with_a_crafted_checkpoint(tmp: Path) -> None:
    """A run folder as someone might hand it over: a config and a checkpoint that would run
    code if it were unpickled."""
    crafted_checkpoint(tmp / "handed-over" / "checkpoints" / "last.ckpt")
    config = OmegaConf.to_yaml(compose_config([], tmp), resolve=True)
    (tmp / "handed-over" / "config.yaml").write_text(config)


IMAGES = np.zeros((4, 3, 3), np.uint8)
CASES = [
    # an image tree
    BadInput("corrupt png", FOLDER, r"images/b/001\.png is not a readable PNG or JPEG image "
             r"\(.*\): replace or delete it$", corrupt_png),
    BadInput("empty png file", FOLDER, r"001\.png is not a readable PNG or JPEG image",
             empty_png_file),
    BadInput("png too large to decode", FOLDER, r"001\.png is too large to decode safely "
             r"\(.*\): shrink it or delete it$", png_too_large_to_decode),
    BadInput("empty class folder", FOLDER, r"images/c holds no PNG or JPEG image: add images or "
             "remove the folder$", empty_class_folder),
    BadInput("one class", FOLDER, r"holds one class only \(a\): classification needs at least "
             "2; add a class$", one_class),
    BadInput("mixed layout", FOLDER, r"mixes class folders \(a\) and node folders \(node0\)",
             mixed_layout),
    BadInput("path not set", (*TRAIN, "dataset=folder"), "dataset.source.path is not set: give "
             "a folder of class folders"),
    BadInput("missing path", FOLDER, r"dataset.source.path=.*/images: no such folder "
             r"\(relative paths start at the working directory\)"),
    BadInput("file for folder", FOLDER, r"dataset.source.path=.*/images is a file, but "
             r"dataset=folder takes a folder of class folders \(dataset=arrays takes", a_file),
    BadInput("folder for file", ARRAYS, r"dataset.source.path=.*/data.npz is a folder, but "
             r"dataset=arrays takes an .npz file \(dataset=folder takes", a_folder),
    BadInput("negative image size", (*FOLDER, "dataset.source.image_size=[-5,10]"),
             r"dataset.source.image_size=\[-5, 10\]: must be \[height, width\] of integers "
             ">= 1", two_classes),
    BadInput("image size too large for memory", (*FOLDER,
             "dataset.source.image_size=[1000000,1000000]"),
             r"^4 images of 1x1000000x1000000 \(CxHxW\) pixels need [\d.]+ [TP]B of memory but "
             r"cpu has [\d.]+ .B available, and a run plans for at most 50% of it: set "
             r"dataset.source.image_size=\[H,W\] smaller", two_classes),
    BadInput("too few images for the default partition", FOLDER,
             r"dataset.partition.num_nodes=24 nodes of at least dataset.partition.min_size=3 "
             "samples need 72 samples but the data set has 60: lower "
             "dataset.partition.num_nodes or dataset.partition.min_size$", few_images),
    BadInput("images too small for the model", (*FOLDER, *SMALL_FEDERATION),
             r"model=cnn4 cannot take images of 1x7x7 \(CxHxW\) \(.*Output size is too small\): "
             r"use larger images \(dataset.source.image_size\) or another model$", tiny_images),
    BadInput("images of two sizes", FOLDER, r"images/b/000\.png is 20x16 \(HxW\) but "
             r".*images/a/000\.png is 10x12 \(HxW\): set dataset.source.image_size=\[H,W\] to "
             "resize every image to one size$", two_sizes),
    # a natural partition: the data's own nodes
    BadInput("node too small", (*FOLDER, *NATURAL), "dataset.support_fraction=0.75 leaves an "
             "empty support or query part of node 'tiny' of the data with 2 samples: give that "
             "node more samples", lambda tmp: natural_tree(tmp, tiny_size=1)),
    BadInput("too many target nodes", (*FOLDER, *NATURAL, "dataset.num_target_nodes=3"),
             "dataset.num_target_nodes=3: must be between 0 and the 3 nodes minus one",
             natural_tree),
    BadInput("K above the training nodes", (*FOLDER, *NATURAL, "method.clients_per_round=3"),
             "method.clients_per_round=3: must be at most the 2 training nodes", natural_tree),
    BadInput("no node folders", (*TRAIN, "dataset=folder", "dataset.source.path={tmp}/images/alice",
             *NATURAL), "the natural partition needs data that say each sample's node",
             natural_tree),
    # arrays
    BadInput("npz not a zip", ARRAYS, r"data.npz is not a zip archive \(it starts with "
             r"b'garbage '\), so no .npz made by np.savez: save it with np.savez\(FILE, images=",
             raw_file(b"garbage file")),
    BadInput("npz a pickle", ARRAYS, r"data.npz is a Python pickle, which is never read "
             r"\(unpickling can run code\): save it with np.savez", raw_file(b"\x80\x04K\x01.")),
    BadInput("npz an npy", ARRAYS, r"data.npz is a single array \(.npy, as np.save writes it\), "
             "not named arrays", npy_named_npz),
    BadInput("npz too large for memory", ARRAYS, r"the arrays of dataset.source.path=.*data.npz "
             r"\(images: uint8 \(1000000, 1000, 1000\)\) need [\d.]+ TB of memory .*: store "
             "fewer or smaller images", npz_declaring_huge_images),
    BadInput("object dtype npz", ARRAYS, r"data\.npz: array labels cannot be read \(Object "
             r"arrays cannot be loaded when allow_pickle=False\): save plain numeric arrays",
             npz(images=IMAGES, labels=np.array([1, "a", 2, 3], object))),
    BadInput("no labels array", ARRAYS, r"data\.npz has no labels array \(it has "
             r"\['images', 'label'\]\)", npz(images=IMAGES, label=np.arange(4))),
    BadInput("length mismatch", ARRAYS, r"data\.npz: images has 4 rows but labels has 3: arrays "
             "of one data set must have one entry per image$",
             npz(images=IMAGES, labels=np.arange(3))),
    BadInput("node ids length mismatch", ARRAYS, r"data\.npz: images has 4 rows but node_ids "
             "has 5", npz(images=IMAGES, labels=np.arange(4), node_ids=np.arange(5))),
    BadInput("float labels", ARRAYS, r"data\.npz: labels is float64 \(4,\), expected integers "
             r"of shape \(N,\)", npz(images=IMAGES, labels=np.arange(4.0))),
    BadInput("NaN pixels", ARRAYS, r"data\.npz: images is float32 \(4, 3, 3\), expected uint8 "
             "pixels 0..255", npz(images=np.full((4, 3, 3), np.nan, np.float32),
                                  labels=np.arange(4))),
    BadInput("channels first", ARRAYS, r"data\.npz: images has shape \(4, 3, 8, 8\), whose "
             r"last axis is not a channel axis .*np.moveaxis\(images, 1, -1\)",
             npz(images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.arange(4))),
    BadInput("one class in arrays", ARRAYS, r"data\.npz holds one class only \(0\)",
             npz(images=IMAGES, labels=np.zeros(4, np.int64))),
    # what the run derives from the config
    BadInput("synthetic images too large for memory", (*TRAIN, "dataset=synthetic",
             "dataset.source.shape=[3,100000,100000]"), r"^2400 synthetic images of "
             r"3x100000x100000 \(CxHxW\) pixels need [\d.]+ PB of memory .*: lower "
             "dataset.source.shape"),
    BadInput("node count too large for memory", (*TRAIN, "dataset=synthetic",
             "dataset.partition.num_nodes=1000000000000"), r"^the ids of 1000000000000 nodes "
             r"need [\d.]+ TB of memory .*: lower dataset.partition.num_nodes"),
    BadInput("network too wide for memory", (*TRAIN, "dataset=synthetic", "model.width=100000"),
             r"^model=cnn4 on 2400 images of 1x16x16 \(CxHxW\): activations [\d.]+ .B \(a "
             r"node's \d+ images at once\), parameters [\d.]+ PB \(\d+ in 30 copies\); together "
             r"they need [\d.]+ PB of memory .*: lower model.width or dataset.source.shape, or "
             "method.clients_per_round$"),
    # a data set's files
    BadInput("Fashion-MNIST missing", (*FMNIST, "data_root={tmp}/empty"),
             r"^fmnist not found in {tmp}/empty/FashionMNIST/raw .*train-images-idx3-ubyte.*"
             r"download=true.*apt-get install dataset-fashion-mnist", missing_fmnist,
             env={DEBIAN_FMNIST_ENV: "{tmp}/empty"}),
    BadInput("Fashion-MNIST cut off", (*FMNIST, "data_root={tmp}/data"),
             r"^{tmp}/data/FashionMNIST/raw/train-images-idx3-ubyte is truncated or corrupt",
             cut_off_fmnist, env={DEBIAN_FMNIST_ENV: "{tmp}/none"}),
    # the config
    BadInput("value out of range", (*SYNTHETIC, "method.local.steps=-1"),
             exactly("method.local.steps=-1: must be an integer >= 1")),
    BadInput("K above the default partition's training nodes",
             (*SYNTHETIC, "method.clients_per_round=21"),
             exactly("method.clients_per_round=21: must be at most the 20 training nodes (24 "
                     "nodes minus dataset.num_target_nodes=4)")),
    BadInput("a key valid once added", (*SYNTHETIC, "trainer.precision=32"),  # Hydra's advice
             exactly("Could not override 'trainer.precision'. To append to your config use "
                     "+trainer.precision=32")),
    BadInput("more classes a node than the data have",  # the partitioner's check, after loading
             (*SYNTHETIC, "dataset.partition.classes_per_node=7"),
             exactly("dataset.partition.classes_per_node=7: must be between 1 and the data "
                     "set's 6 classes")),
    # an unknown key: Hydra would advise `+method.server.betta=0.5`, moving the typo along
    BadInput("unknown key", (*SYNTHETIC, "method.server.betta=0.5"),
             r"^unknown key method\.server\.betta=0\.5 \(did you mean beta\?\): "),
    BadInput("unknown top-level key", (*SYNTHETIC, "roundz=3"),
             r"^unknown key roundz=3 \(did you mean rounds\?\): "),
    BadInput("key of a part this method has not", (*RUN, "method=fedavg",
             "method.regularizer.gamma=0.01"), exactly(
             "unknown key method.regularizer.gamma=0.01: method=fedavg has no regularizer (use "
             "method=metagater)")),
    BadInput("a device this machine has not", (*SYNTHETIC, "trainer.accelerator=gpu"),
             r"^trainer\.accelerator=gpu",
             marks=(pytest.mark.skipif(torch.cuda.is_available(),
                                       reason="needs a machine without a GPU"),)),
    # a meta-model to adapt (MetaSNIP)
    BadInput("meta checkpoint carrying a pickled object", (*RUN, "method=metasnip",
             "method.meta_checkpoint={tmp}/shared/last.ckpt"),
             r"^method\.meta_checkpoint={tmp}/shared/last\.ckpt is refused for safety: it "
             r"carries pickled objects \(Unsupported global: GLOBAL io\.open",
             lambda tmp: crafted_checkpoint(tmp / "shared" / "last.ckpt"),
             absent=("weights_only",)),
    BadInput("meta checkpoint missing", (*RUN, "method=metasnip",
             "method.meta_checkpoint={tmp}/none.ckpt"),
             r"^method\.meta_checkpoint={tmp}/none\.ckpt does not exist"),
    BadInput("meta checkpoint that is no checkpoint", (*RUN, "method=metasnip",
             "method.meta_checkpoint={tmp}/notes.ckpt"),
             r"^method\.meta_checkpoint={tmp}/notes\.ckpt is not a checkpoint torch can read \(",
             lambda tmp: (tmp / "notes.ckpt").write_text("not a checkpoint")),
    BadInput("meta checkpoint replaced since the run", METASNIP,
             r"^{run} holds this config's run adapting another meta-model "
             r"\(meta_checkpoint_fingerprint: .*delete that folder",
             snip_run_of_another_meta_model, fixtures=("nogate_checkpoint",)),
    BadInput("meta checkpoint replaced since the run, deployed", ("{run}",),
             r"^{tmp}/meta\.ckpt holds another meta-model than {run} adapted "
             r"\(meta_checkpoint_fingerprint: ", snip_run_of_another_meta_model,
             entry=deploy_main, fixtures=("nogate_checkpoint",)),
    # a run's own checkpoint
    BadInput("checkpoint to resume carrying a pickled object", (*RUN, *FINISHED_RUN),
             r"^{run}/checkpoints/last\.ckpt is refused for safety: it carries pickled objects",
             resume_from_a_crafted_checkpoint, fixtures=("finished_run",),
             absent=("weights_only",)),
    BadInput("checkpoint to resume cut short", (*RUN, *FINISHED_RUN),
             r"^{run}/checkpoints/last\.ckpt is not a checkpoint torch can read \(.*delete it "
             "to run this config from the start", resume_from_a_cut_checkpoint,
             fixtures=("finished_run",)),
    BadInput("deploy of a run whose checkpoint carries a pickled object",
             ("{tmp}/handed-over",),
             r"^{tmp}/handed-over/checkpoints/last\.ckpt is refused for safety: ",
             handed_over_run_with_a_crafted_checkpoint, entry=deploy_main,
             absent=("weights_only",)),
    # reproduce and deploy's own arguments
    BadInput("experiment misspelt", ("table1_fmnst", "--results-root", "{tmp}"),
             r"^no experiment table1_fmnst \(did you mean table1_fmnist\?\): the experiments "
             "are appendix_cifar100_small, ", entry=reproduce_main, absent=("default",)),
    BadInput("override Hydra cannot parse", ("table1_fmnist", "model.gated_layers=[1=2]",
             "--results-root", "{tmp}"), r"^model\.gated_layers=\[1=2\]: ",
             entry=reproduce_main),
    BadInput("deploy of a folder that does not exist", ("{tmp}/no-run",),
             r"^{tmp}/no-run does not exist: pass a run's folder", entry=deploy_main),
    BadInput("deploy without a run before make train", (),  # `make deploy` with RUN empty
             r"^outputs/default/fmnist-cnn4-metagater-seed0-\w+ does not exist: it is the "
             "folder of the run `make train` makes", entry=deploy_main,
             absent=("config.yaml",)),
]


def snapshot(folder: Path) -> dict[str, str | tuple[str, int]]:
    """Every path under ``folder``: a file's hash and modification time, a folder's "dir"."""
    return {str(path.relative_to(folder)): "dir" if path.is_dir()
            else (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def filled_in(text: str, tmp: Path, escape=lambda path: path) -> str:
    """``text`` with ``{tmp}`` the test's folder and ``{run}`` the one run folder (the folder
    holding a config.yaml) that the case's setup made there."""
    if "{run}" in text:
        (config,) = tmp.rglob("config.yaml")
        text = text.replace("{run}", escape(str(config.parent)))
    return text.replace("{tmp}", escape(str(tmp)))


def argv_of(case: BadInput, tmp: Path) -> list[str]:
    return [filled_in(arg, tmp) for arg in case.argv]


def check_line(case: BadInput, stderr: str, tmp: Path) -> None:
    """One line, ``error: `` and the case's message, none of its absent words."""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    line = stderr.removeprefix("error: ").rstrip("\n")
    assert re.search(filled_in(case.message, tmp, re.escape), line), stderr
    assert not [words for words in case.absent if words in line], stderr


# A case may take this much more address space; a guard that broke then fails its case with a
# MemoryError instead of growing until the kernel kills this machine's processes.
EXTRA_ADDRESS_SPACE = 2**30
REAL_ENTRY_ADDRESS_SPACE = 10 * 2**30  # a fresh interpreter with torch imported takes ~3.6 GiB


@contextmanager
def address_space_limit(limit: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def address_space() -> int:
    """This process's virtual memory size (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024


@pytest.fixture
def case_folder(tmp_path, monkeypatch) -> Path:
    """The test's folder, also the working directory and the data root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MG_DATA_DIR", str(tmp_path / "data_root"))
    return tmp_path


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=case.marks)
                                  for case in CASES])
def test_bad_input_ends_in_one_line_and_exit_2_and_writes_nothing(case, case_folder, request,
                                                                  capsys, monkeypatch):
    case.setup(case_folder, *(request.getfixturevalue(name) for name in case.fixtures))
    for name, value in case.env.items():
        monkeypatch.setenv(name, filled_in(value, case_folder))
    argv = argv_of(case, case_folder)
    before = snapshot(case_folder)
    capsys.readouterr()
    with (warnings.catch_warnings(record=True) as warned, pytest.raises(SystemExit) as ended,
          address_space_limit(address_space() + EXTRA_ADDRESS_SPACE)):
        case.entry(argv)
    stderr = capsys.readouterr().err
    assert ended.value.code == 2, stderr
    assert [str(warning.message) for warning in warned] == []  # each would print lines too
    check_line(case, stderr, case_folder)
    assert snapshot(case_folder) == before


REAL_ENTRY_CASES = ["image size too large for memory", "npz not a zip"]


@pytest.mark.parametrize("case", [case for case in CASES if case.id in REAL_ENTRY_CASES],
                         ids=REAL_ENTRY_CASES)
def test_the_real_entry_point_says_the_same(case, tmp_path):
    """``python -m mglightning.train``: the same line, exit 2, nothing written."""
    case.setup(tmp_path)
    before = snapshot(tmp_path)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS,
                           (REAL_ENTRY_ADDRESS_SPACE, resource.getrlimit(resource.RLIMIT_AS)[1]))

    result = subprocess.run([sys.executable, "-m", "mglightning.train", *argv_of(case, tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            preexec_fn=limited,
                            env={**os.environ, "PYTHONPATH": str(CONF_DIR.parent),
                                 "MG_DATA_DIR": str(tmp_path / "data_root")})
    assert result.returncode == 2, result.stderr
    check_line(case, result.stderr, tmp_path)
    assert snapshot(tmp_path) == before
