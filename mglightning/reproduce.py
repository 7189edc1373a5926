"""Reproduce one of the paper's tables: every method of an experiment, over seeds.

    python -m mglightning.reproduce table1_fmnist [--choose | --seeds 0,1] [--fresh] [key=value ...]

The experiment file (``conf/experiment/<name>.yaml``) lists its runs under ``reproduce``:
a method and its number of local updates m, and for MetaSNIP the runs it builds on. Each
run is ``mglightning.train.run`` on the composed config, in this process, writing under
``results/<runs_group>/runs/<method>-m<m>-seed<s>/``. Experiments with the same setup
share ``runs_group``, so a run two tables need is made once. A finished run whose
``config.yaml`` has the current config's identity (:mod:`mglightning.run.identity`) is reused; an
unfinished one resumes from its checkpoint; one made with another config is stale and is
redone. Then the table, the convergence plot and the sparsity histogram go to
``results/<experiment>/`` (see :mod:`mglightning.analysis.report`).

Held-out seeds: choices (step sizes, γ, noise, a front's point) are made on
``reproduce.choose_seeds`` (``--choose``, results in ``results/<experiment>/choose/``); the
tables and verdicts are on ``reproduce.report_seeds``, the default, never used for a choice.
Each method of ``reproduce.compare_with`` gets a column: every row's accuracy minus that
method's, paired per seed (:func:`mglightning.analysis.report.paired_differences`).

A row at another run's MACs (``macs_from``, METHOD.md §7.4) is that run's partner at equal
cost, seed by seed: a dense network gets the ``model.width`` whose MACs come closest to the
run's mean executed MACs, structured SNIP the keep fraction that does. Both are counted on the
network's description, at the input shape and classes of the row's own data.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mglightning.adaptation.snip import keep_fraction_for_macs, snip_channels
from mglightning.analysis.report import MethodRuns, write_results
from mglightning.build import build_datamodule, build_network, compose_config
from mglightning.config import CONF_DIR, ConfigError, validate
from mglightning.data.datamodule import FederatedDataModule
from mglightning.models.backbones import width_for_macs
from mglightning.run.folder import RunFolder
from mglightning.run.identity import input_fingerprints
from mglightning.targets import bind, import_target
from mglightning.train import ending_in_one_line, read_meta_model, run

log = logging.getLogger(__name__)
# The caller's overrides come after (logger=wandb to log, deterministic=false for speed).
RUN_DEFAULTS = ["logger=none", "deterministic=true"]


@dataclass(frozen=True)
class RunSpec:
    """One row of a table. ``overrides`` set keys beyond the method's defaults (the points of
    the accuracy–sparsity front); such a row has a ``name`` of its own in its label.
    ``meta_from`` names the run (label) whose meta-model this one adapts instead of training;
    ``sparsity_from`` the run whose mean sparsity sets its keep fraction (MetaSNIP,
    METHOD.md §5); ``macs_from`` the run whose mean executed MACs set its width (a network
    without gates) or its keep fraction (structured SNIP), so that it executes as many
    (METHOD.md §7.4)."""

    method: str
    local_steps: int
    name: str | None = None
    overrides: tuple[str, ...] = ()
    meta_from: str | None = None
    sparsity_from: str | None = None
    macs_from: str | None = None

    @property
    def label(self) -> str:
        return f"{self.method}-m{self.local_steps}" + (f"-{self.name}" if self.name else "")


def check_experiment(name: str) -> None:
    """Refuse, naming the choices and the nearest, an experiment without a file (Hydra would
    compose the default config instead, and the error would name experiment 'default')."""
    choices = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
    if name not in choices:
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"no experiment {name}{hint}: the experiments are "
                          f"{', '.join(choices)} (conf/experiment/)")


def compose_run(experiment: str, overrides: list[str]) -> DictConfig:
    return compose_config([f"experiment={experiment}", *overrides])


def run_specs(cfg: DictConfig) -> list[RunSpec]:
    """The experiment's runs, checked: every run another builds on comes before it."""
    if "runs" not in cfg.get("reproduce", {}):
        raise SystemExit(f"experiment {cfg.experiment!r} has no `reproduce.runs:` section")
    specs = [RunSpec(**spec | {"overrides": tuple(spec.get("overrides", ()))})
             for spec in OmegaConf.to_container(cfg.reproduce.runs, resolve=True)]
    seen: set[str] = set()
    for spec in specs:
        if spec.overrides and not spec.name:
            raise SystemExit(f"run {spec.label} has overrides: give it a name for its label")
        if spec.label in seen:
            raise SystemExit(f"run {spec.label} is listed twice: give one a name of its own")
        for needed in (spec.meta_from, spec.sparsity_from, spec.macs_from):
            if needed is not None and needed not in seen:
                raise SystemExit(f"run {spec.label} needs {needed}, which must be listed before it")
        if spec.sparsity_from and spec.macs_from:
            raise SystemExit(f"run {spec.label} has sparsity_from and macs_from, which both set "
                             "its keep fraction: keep one")
        seen.add(spec.label)
    plain = sorted({spec.method for spec in specs if spec.name is None})
    for method in cfg.reproduce.get("compare_with", ()):
        if method not in plain:
            raise SystemExit(f"reproduce.compare_with names {method!r}, which has no unnamed "
                             f"run in {cfg.experiment!r}: use one of {', '.join(plain)}")
    for pair in cfg.reproduce.get("pairs", ()):
        for label in pair:
            if label not in seen:
                raise SystemExit(f"reproduce.pairs names {label!r}, which is no run of "
                                 f"{cfg.experiment!r}: use one of {', '.join(sorted(seen))}")
    return specs


def last_evaluations(cfg: DictConfig) -> int:
    """``reproduce.last_evaluations``, checked: how many of a run's last evaluations its
    table's mean accuracy covers."""
    last = cfg.reproduce.last_evaluations
    if not isinstance(last, int) or isinstance(last, bool) or last < 1:
        raise SystemExit(f"reproduce.last_evaluations={last!r}: set it to a whole number of "
                         "evaluations, at least 1")
    return last


def at_macs(cfg: DictConfig, target_macs: float, datamodule: FederatedDataModule) -> str:
    """The override that makes the run of ``cfg`` execute about ``target_macs`` MACs per input
    on ``datamodule``'s data: structured SNIP's keep fraction, or the width of a network
    without gates (METHOD.md §7.4)."""
    method = cfg.method
    if import_target(method.adaptation._target_) is snip_channels:
        keep = keep_fraction_for_macs(build_network(cfg, datamodule),
                                      list(method.adaptation.layers), target_macs)
        return f"method.adaptation.keep_fraction={keep}"
    if method.gating or "keep_fraction" in method.adaptation:
        raise SystemExit(f"method={method.name} takes no macs_from: it sets the width of a "
                         "network without gates or structured SNIP's keep fraction (use "
                         "method=metagater_nogate or metasnip_structured)")
    backbone = bind(OmegaConf.to_container(cfg.model, resolve=True))
    width = width_for_macs(backbone, datamodule.input_shape, datamodule.num_classes, target_macs)
    return f"model.width={width}"


class Reproduction:
    """Runs (or reuses) every run of one experiment and writes its results."""

    def __init__(
        self, experiment: str, overrides: list[str], results_root: Path, fresh: bool = False
    ) -> None:
        self.experiment, self.overrides, self.fresh = experiment, overrides, fresh
        self.base = compose_run(experiment, [*RUN_DEFAULTS, *overrides])
        self.specs = run_specs(self.base)
        self.last_evaluations = last_evaluations(self.base)
        group = self.base.reproduce.get("runs_group") or experiment
        self.runs_dir = results_root / group / "runs"
        self.output_dir = results_root / experiment

    def run_dir(self, label: str, seed: int) -> Path:
        return self.runs_dir / f"{label}-seed{seed}"

    def run_config(self, spec: RunSpec, seed: int,
                   datamodule: FederatedDataModule | None = None) -> DictConfig:
        """The row's config at ``seed``. A row at another run's MACs (``macs_from``) is set
        to that run's mean executed MACs of the same seed, counted on the input shape and
        classes of ``datamodule`` (its own data; loaded here when not given)."""
        cfg = self.row_config(spec, seed)
        if spec.macs_from is None:
            return cfg
        summary = RunFolder(self.run_dir(spec.macs_from, seed)).read_summary()
        if "executed_macs_mean" not in summary:
            raise SystemExit(f"run {spec.macs_from} of seed {seed} was made before summaries "
                             "held executed_macs_mean: redo it (--fresh)")
        setting = at_macs(cfg, summary["executed_macs_mean"],
                          datamodule or build_datamodule(cfg))
        return self.row_config(spec, seed, setting)

    def row_config(self, spec: RunSpec, seed: int, *more: str) -> DictConfig:
        """The row's config at ``seed`` with what it takes from the runs it builds on, its
        MACs aside, then ``more`` overrides."""
        overrides = [
            f"method={spec.method}",
            f"method.local.steps={spec.local_steps}",
            f"seed={seed}",
            f"output_dir={self.run_dir(spec.label, seed)}",
            *spec.overrides,
        ]
        if spec.meta_from:
            checkpoint = RunFolder(self.run_dir(spec.meta_from, seed)).checkpoint_path
            overrides.append(f"method.meta_checkpoint={checkpoint}")
        if spec.sparsity_from:
            sparsity = RunFolder(self.run_dir(spec.sparsity_from, seed)).read_summary()[
                "sparsity_mean"]
            overrides.append(f"method.adaptation.keep_fraction={1.0 - sparsity}")
        return compose_run(self.experiment, [*RUN_DEFAULTS, *self.overrides, *overrides, *more])

    def ensure_run(self, spec: RunSpec, seed: int) -> str:
        """Run, resume or reuse one run, loading its data once; returns what was done."""
        cfg = self.row_config(spec, seed)
        validate(cfg)  # before its data load
        datamodule = build_datamodule(cfg)
        if spec.macs_from:  # the data's shape sets its width or keep fraction
            cfg = self.run_config(spec, seed, datamodule)
            validate(cfg)
        inputs = input_fingerprints(datamodule.data.images, datamodule.data.labels,
                                    read_meta_model(cfg))
        folder = RunFolder(cfg.output_dir)
        stale = bool(folder.differences(cfg, inputs))
        if self.fresh or stale:
            shutil.rmtree(folder.path, ignore_errors=True)
        if folder.finished:
            return "reused"
        resumed = folder.checkpoint_path.exists()
        folder.write_config(cfg, inputs)  # before the work: a killed run is known as this config's
        run(cfg, datamodule)
        return "redone (stale)" if stale else "resumed" if resumed else "ran"

    def reproduce(self, seeds: list[int], output_dir: Path | None = None,
                  heading: str = "") -> dict[str, Path]:
        """Every run of every seed, then the results in ``output_dir`` (default: the
        experiment's folder), the table under ``heading``."""
        total, started = len(self.specs) * len(seeds), time.perf_counter()
        done = 0
        for seed in seeds:  # seed-major: an interrupted reproduction has whole seeds
            for spec in self.specs:
                action = self.ensure_run(spec, seed)
                done += 1
                log.info(
                    "[%d/%d] %s seed %d: %s (%.0f s elapsed)",
                    done,
                    total,
                    spec.label,
                    seed,
                    action,
                    time.perf_counter() - started,
                )
        rows = {
            s.label: MethodRuns(s.method, s.local_steps,
                                tuple(self.run_dir(s.label, x) for x in seeds), s.name, s.overrides)
            for s in self.specs
        }
        compare_with = tuple(self.base.reproduce.get("compare_with", ()))
        pairs = [(rows[row], rows[against])
                 for row, against in self.base.reproduce.get("pairs", ())]
        return write_results(list(rows.values()), output_dir or self.output_dir, compare_with,
                             heading, pairs, self.last_evaluations)

    def seeds_and_output(
        self, choose: bool, seeds: list[int] | None
    ) -> tuple[list[int], Path, str]:
        """The seeds to run, where the results go and the table's heading: the report seeds
        by default, the choose seeds with ``choose``, or the given ones."""
        split = self.base.reproduce
        if seeds is not None:
            chosen_on = set(seeds) & set(split.choose_seeds)
            note = f"; choices were made on {_listed(chosen_on)}" if chosen_on else ""
            return seeds, self.output_dir, f"Seeds {_listed(seeds)} (given{note})."
        if choose:
            return (list(split.choose_seeds), self.output_dir / "choose",
                    f"Seeds {_listed(split.choose_seeds)}: where choices are made, not a result.")
        overlap = set(split.report_seeds) & set(split.choose_seeds)
        if overlap:
            raise SystemExit(f"reproduce.report_seeds and choose_seeds share {_listed(overlap)}: "
                             "report on seeds no choice was made on")
        return (list(split.report_seeds), self.output_dir,
                f"Seeds {_listed(split.report_seeds)}: held out, no choice was made on them.")


def _listed(seeds) -> str:
    return ", ".join(str(seed) for seed in sorted(seeds))


def seed_list(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="a file of conf/experiment/, without .yaml")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=seed_list,
                       help="comma-separated, e.g. 0,1,2; default: reproduce.report_seeds")
    seeds.add_argument("--choose", action="store_true",
                       help="the seeds choices are made on (reproduce.choose_seeds), "
                            "results in results/EXP/choose/")
    parser.add_argument("--results-root", type=Path, default=Path("results"))
    parser.add_argument("--fresh", action="store_true", help="redo every run from scratch")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    with ending_in_one_line():
        check_experiment(args.experiment)
        reproduction = Reproduction(args.experiment, args.overrides, args.results_root,
                                    args.fresh)
        seeds, output_dir, heading = reproduction.seeds_and_output(args.choose, args.seeds)
        paths = reproduction.reproduce(seeds, output_dir, heading)
    print(paths["table_md"].read_text())
    print(f"seeds {seeds}; {time.perf_counter() - started:.0f} s wall")
    for name, path in paths.items():
        print(f"{name:20s} {path}")


if __name__ == "__main__":
    main()
