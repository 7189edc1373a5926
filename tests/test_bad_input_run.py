"""Bad input to a run's entry points (train, reproduce, deploy): refused in one line on stderr,
with exit 2, no traceback, and nothing written or changed, whatever the input."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FINISHED_RUN, TINY, compose_config, train_cli
from omegaconf import OmegaConf

from mglightning.deploy import main as deploy_main
from mglightning.reproduce import main as reproduce_main
from mglightning.train import run


@dataclass
class Refusal:
    """An entry point called with ``argv``, and how it must refuse: its exit code, the start
    of its one line after ``error: ``, words the line must hold and words it must not."""

    command: Callable[[list[str]], None]
    argv: list[str]
    message: str
    exit_code: int = 2
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()


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


def metasnip_run(tmp_path: Path, nogate_checkpoint: Path) -> tuple[list[str], Path]:
    """A finished MetaSNIP run under ``tmp_path`` adapting a copy of ``nogate_checkpoint``
    at ``tmp_path/meta.ckpt``: its command line and that copy."""
    meta = tmp_path / "meta.ckpt"
    shutil.copy(nogate_checkpoint, meta)
    argv = [*TINY, f"output_root={tmp_path / 'runs'}", "method=metasnip", "rounds=1",
            f"method.meta_checkpoint={meta}"]
    run(compose_config(argv[len(TINY):], tmp_path / "runs"))
    return argv, meta


def another_meta_model(path: Path) -> None:
    """Replace the meta-model at ``path`` by another (its x_ag moved), saved as tensors alone."""
    state = torch.load(path, weights_only=True)["state_dict"]
    state["x_ag"] = state["x_ag"] + 1e-3
    torch.save({"state_dict": state}, path)


def unfinished_run(finished_run, tmp_path: Path) -> Path:
    """A copy of the shared finished run under ``tmp_path/runs`` with its results removed:
    a run to resume. Returns its folder."""
    folder = tmp_path / "runs" / Path(finished_run.output_dir).relative_to(
        finished_run.output_root)
    shutil.copytree(finished_run.output_dir, folder)
    (folder / "summary.json").unlink()
    return folder


CASES: dict[str, Callable[[Path, pytest.FixtureRequest], Refusal]] = {}


def case(make: Callable[[Path, pytest.FixtureRequest], Refusal]):
    CASES[make.__name__] = make
    return make


@case
def meta_checkpoint_carrying_a_pickled_object(tmp_path, request) -> Refusal:
    checkpoint = crafted_checkpoint(tmp_path / "shared" / "last.ckpt")
    return Refusal(train_cli, [*TINY, f"output_root={tmp_path / 'runs'}", "method=metasnip",
                               f"method.meta_checkpoint={checkpoint}"],
                   f"method.meta_checkpoint={checkpoint} is refused for safety: it carries "
                   "pickled objects (Unsupported global: GLOBAL io.open",
                   absent=("weights_only",))


@case
def meta_checkpoint_missing(tmp_path, request) -> Refusal:
    return Refusal(train_cli, [*TINY, f"output_root={tmp_path / 'runs'}", "method=metasnip",
                               f"method.meta_checkpoint={tmp_path / 'none.ckpt'}"],
                   f"method.meta_checkpoint={tmp_path / 'none.ckpt'} does not exist")


@case
def meta_checkpoint_that_is_no_checkpoint(tmp_path, request) -> Refusal:
    not_one = tmp_path / "notes.ckpt"
    not_one.write_text("not a checkpoint")
    return Refusal(train_cli, [*TINY, f"output_root={tmp_path / 'runs'}", "method=metasnip",
                               f"method.meta_checkpoint={not_one}"],
                   f"method.meta_checkpoint={not_one} is not a checkpoint torch can read (")


@case
def meta_checkpoint_replaced_since_the_run(tmp_path, request) -> Refusal:
    argv, meta = metasnip_run(tmp_path, request.getfixturevalue("nogate_checkpoint"))
    another_meta_model(meta)
    return Refusal(train_cli, argv, f"{tmp_path / 'runs'}/default/synthetic-cnn4-metasnip-",
                   present=("holds this config's run adapting another meta-model "
                            "(meta_checkpoint_fingerprint: ", "delete that folder"))


@case
def meta_checkpoint_replaced_since_the_run_deployed(tmp_path, request) -> Refusal:
    argv, meta = metasnip_run(tmp_path, request.getfixturevalue("nogate_checkpoint"))
    another_meta_model(meta)
    (run_dir,) = (tmp_path / "runs").rglob("summary.json")
    return Refusal(deploy_main, [str(run_dir.parent)],
                   f"{meta} holds another meta-model than {run_dir.parent} adapted "
                   "(meta_checkpoint_fingerprint: ")


@case
def checkpoint_to_resume_carrying_a_pickled_object(tmp_path, request) -> Refusal:
    folder = unfinished_run(request.getfixturevalue("finished_run"), tmp_path)
    checkpoint = crafted_checkpoint(folder / "checkpoints" / "last.ckpt")
    return Refusal(train_cli, [*TINY, f"output_root={tmp_path / 'runs'}", *FINISHED_RUN],
                   f"{checkpoint} is refused for safety: it carries pickled objects",
                   absent=("weights_only",))


@case
def deploy_of_a_run_whose_checkpoint_carries_a_pickled_object(tmp_path, request) -> Refusal:
    run_dir = tmp_path / "handed-over"
    checkpoint = crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    cfg = compose_config([], tmp_path)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return Refusal(deploy_main, [str(run_dir)], f"{checkpoint} is refused for safety: ",
                   absent=("weights_only",))


@case
def checkpoint_to_resume_cut_short(tmp_path, request) -> Refusal:
    folder = unfinished_run(request.getfixturevalue("finished_run"), tmp_path)
    checkpoint = folder / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    return Refusal(train_cli, [*TINY, f"output_root={tmp_path / 'runs'}", *FINISHED_RUN],
                   f"{checkpoint} is not a checkpoint torch can read (",
                   present=("delete it to run this config from the start",))


@case
def key_of_a_part_this_method_has_not(tmp_path, request) -> Refusal:
    return Refusal(train_cli, [*TINY, f"output_root={tmp_path}", "method=fedavg",
                               "method.regularizer.gamma=0.01"],
                   "unknown key method.regularizer.gamma=0.01: method=fedavg has no regularizer "
                   "(use method=metagater)")


@case
def experiment_misspelt(tmp_path, request) -> Refusal:
    return Refusal(reproduce_main, ["table1_fmnst", "--results-root", str(tmp_path)],
                   "no experiment table1_fmnst (did you mean table1_fmnist?): the experiments "
                   "are appendix_cifar100_small, ", absent=("default",))


@case
def override_hydra_cannot_parse(tmp_path, request) -> Refusal:
    return Refusal(reproduce_main, ["table1_fmnist", "model.gated_layers=[1=2]",
                                    "--results-root", str(tmp_path)],
                   "model.gated_layers=[1=2]: ")


@case
def deploy_of_a_folder_that_does_not_exist(tmp_path, request) -> Refusal:
    return Refusal(deploy_main, [str(tmp_path / "no-run")],
                   f"{tmp_path / 'no-run'} does not exist: pass a run's folder")


@case
def deploy_without_a_run_before_make_train(tmp_path, request) -> Refusal:
    return Refusal(deploy_main, [], "outputs/default/fmnist-cnn4-metagater-seed0-",
                   present=("does not exist: it is the folder of the run `make train` makes",),
                   absent=("config.yaml",))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_ends_in_one_line_and_changes_nothing(name, tmp_path, request, capsys,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)  # `make deploy` without RUN looks in ./outputs
    refusal = CASES[name](tmp_path, request)
    monkeypatch.setattr(sys, "argv", ["python -m mglightning", *refusal.argv])
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        refusal.command(refusal.argv)
    error = capsys.readouterr().err
    assert exited.value.code == refusal.exit_code, error
    assert error.count("\n") == 1 and error.startswith(f"error: {refusal.message}"), error
    assert all(words in error for words in refusal.present), error
    assert not any(words in error for words in ("Traceback", *refusal.absent)), error
    assert snapshot(tmp_path) == before
