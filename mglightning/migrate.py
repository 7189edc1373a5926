"""``python -m mglightning.migrate RUNS_DIR [--apply]``: run folders made before a run's
identity left out what its method does not read and took in its data, made findable again.

Two changes of :mod:`mglightning.run.identity` leave older folders unfound or refused:

- an ungated method's fingerprint no longer holds the gates' keys, nor a regularizer's γ when
  it is ``none``: such a run's name now ends in another fingerprint;
- a run folder records the fingerprint of the pooled data it loaded (``data_fingerprint`` in
  ``config.yaml``); a folder without it is refused.

For every run folder under RUNS_DIR (a folder whose ``config.yaml`` is a run's, at any depth,
RUNS_DIR itself included) this renames a folder named by its run name to the name its config
gets today (updating ``run_name`` and ``output_dir`` in its ``config.yaml``) and records the
fingerprint of the data present now: run it with the data the runs were made with. Without
``--apply`` it only says what it would do; with it, running it again finds nothing to do.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mglightning.config import RUN_CONFIG
from mglightning.data.datasets import DataError
from mglightning.data.partition import PartitionError
from mglightning.run.folder import RunFolder, pooled_data_fingerprint
from mglightning.run.identity import DATA_KEY, FINGERPRINT_LENGTH, fingerprint

FINGERPRINT_SUFFIX = re.compile(rf"-[0-9a-f]{{{FINGERPRINT_LENGTH}}}$")
NOT_RUN_FOLDERS = {"wandb", ".hydra"}  # their config.yaml files are not a run's


@dataclass(frozen=True)
class Migration:
    """What one run folder needs: a new path (None: it keeps its own) and its config as it
    should read (None: it reads so already)."""

    path: Path
    new_path: Path | None
    config: dict | None

    def describe(self) -> list[str]:
        lines = [f"rename {self.path} -> {self.new_path.name}"] if self.new_path else []
        if self.config is not None:
            lines.append(f"record {DATA_KEY}={self.config[DATA_KEY]} and run_name="
                         f"{self.config['run_name']} in {self.path / RUN_CONFIG}")
        return lines

    def apply(self) -> None:
        path = self.path
        if self.new_path is not None:
            path = self.path.rename(self.new_path)
        if self.config is not None:
            RunFolder(path).record_config(self.config, self.config[DATA_KEY])


def run_configs(root: Path) -> list[Path]:
    """Every run's ``config.yaml`` under ``root`` (W&B's and Hydra's own are not)."""
    return sorted(path for path in root.rglob(RUN_CONFIG)
                  if not NOT_RUN_FOLDERS & set(path.relative_to(root).parts[:-1]))


def plan(folder: Path, stored: DictConfig) -> Migration:
    """What ``folder``, holding the run config ``stored``, needs (raises DataError when the
    run's data cannot be loaded)."""
    config = OmegaConf.to_container(stored)
    run_name = str(config["run_name"])
    if FINGERPRINT_SUFFIX.search(run_name):
        config["run_name"] = FINGERPRINT_SUFFIX.sub(f"-{fingerprint(stored)}", run_name)
    new_path = None
    if folder.name == run_name and config["run_name"] != run_name:
        new_path = folder.with_name(config["run_name"])
        if Path(str(config["output_dir"])).name == run_name:
            config["output_dir"] = str(Path(str(config["output_dir"])).with_name(new_path.name))
    if DATA_KEY not in config:
        config[DATA_KEY] = pooled_data_fingerprint(stored)
    changed = config != OmegaConf.to_container(stored)
    return Migration(folder, new_path, config if changed else None)


def migrate(root: Path, apply: bool) -> list[str]:
    """The lines saying what was (or, without ``apply``, would be) done under ``root``."""
    lines = []
    for config_path in run_configs(root):
        stored = OmegaConf.load(config_path)
        if not {"run_name", "dataset", "method"} <= set(stored):
            continue
        try:
            migration = plan(config_path.parent, stored)
        except (DataError, PartitionError) as error:
            lines.append(f"skip {config_path.parent}: its data cannot be loaded ({error})")
            continue
        if migration.new_path is not None and migration.new_path.exists():
            lines.append(f"skip {config_path.parent}: {migration.new_path} exists already")
            continue
        lines += migration.describe()
        if apply:
            migration.apply()
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mglightning.migrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="a folder of run folders, e.g. outputs")
    parser.add_argument("--apply", action="store_true", help="do it (default: only say what)")
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: {args.runs_dir} is not a folder: pass the folder your runs are in "
              "(outputs, results)", file=sys.stderr)
        sys.exit(2)
    lines = migrate(args.runs_dir, args.apply)
    print("\n".join(lines) if lines else f"nothing to do under {args.runs_dir}")
    if lines and not args.apply:
        print("(dry run: pass --apply to do it)")


if __name__ == "__main__":
    main()
