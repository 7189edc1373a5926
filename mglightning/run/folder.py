"""A run folder: what it holds, whether a config may use it, and its files written once.

:class:`RunFolder` names every file of a run folder; the modules that read or write one take
the name (or the path) from it. A folder belongs to the config it was made with and to the
inputs it read (``config.yaml``, resolved, with the fingerprints of the pooled data under
``data_fingerprint`` and, for a run that adapts another run's meta-model, of that meta-model
under ``meta_checkpoint_fingerprint``; written once and never rewritten, except by
``python -m mglightning.migrate``): a config of another identity, or the same config on other
inputs, is refused before anything is written, a finished run (``summary.json``) is left alone
unless re-evaluation is asked for (and its checkpoint, its record, never rewritten), and an
unfinished one resumes from ``checkpoints/last.ckpt``.

What an input holds cannot be in the run name, which is composed before anything is read; so
the folder is found by the config's fingerprint and checked against the inputs' fingerprints,
which the caller passes (:func:`~mglightning.run.identity.input_fingerprints` of what the run
read once).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mglightning.errors import ConfigError
from mglightning.run.identity import DATA_KEY, INPUT_KEYS, META_MODEL_KEY, differing_keys
from mglightning.run.io import atomic_write_text, write_csv, write_json

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as Hydra's console
NOT_RECORDED = "<not recorded>"  # a folder made before run folders recorded that input
# Each recorded input: its name, and how a run folder of this config on another one reads.
INPUT_NAMES = {DATA_KEY: "data", META_MODEL_KEY: "meta-model"}
ON_ANOTHER_INPUT = {
    DATA_KEY: "on other data ({change}): delete that folder to redo it on this data",
    META_MODEL_KEY: "adapting another meta-model ({change}: the file at method.meta_checkpoint "
                    "was replaced): delete that folder to redo it with this meta-model",
}


class RunFolder:
    """``<output_dir>/`` and the names of its files."""

    CONFIG = "config.yaml"  # the resolved config and its inputs' fingerprints
    CHECKPOINT = "checkpoints/last.ckpt"  # the last whole round, to resume from
    CURVE = "curve.csv"  # target accuracy against rounds
    TASKS = "tasks.csv"  # one row per target task
    SUMMARY = "summary.json"  # across tasks; written last: its presence marks a finished run
    LOG = "train.log"
    DEPLOYED = "deployed"  # adapted target networks, exported (mglightning.deploy)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / self.CONFIG
        self.checkpoint_path = self.path / self.CHECKPOINT
        self.curve_path = self.path / self.CURVE
        self.tasks_path = self.path / self.TASKS
        self.summary_path = self.path / self.SUMMARY
        self.log_path = self.path / self.LOG
        self.deployed_path = self.path / self.DEPLOYED

    @property
    def finished(self) -> bool:
        return self.summary_path.exists()

    def differences(self, cfg: DictConfig, inputs: Mapping[str, str]) -> list[str]:
        """The identity keys in which ``cfg``, reading inputs of fingerprints ``inputs``
        (:data:`~mglightning.run.identity.INPUT_KEYS`), differs from the folder's config, the
        inputs' fingerprints last (none when the folder has no config yet)."""
        if not self.config_path.exists():
            return []
        stored = OmegaConf.load(self.config_path)
        found = differing_keys(stored, cfg)
        for key in INPUT_KEYS:
            recorded = stored.get(key)
            if recorded != inputs.get(key) and (recorded or key in inputs):
                found.append(f"{key}: {recorded or NOT_RECORDED} -> {inputs.get(key)}")
        return found

    def check_config(self, cfg: DictConfig, inputs: Mapping[str, str]) -> None:
        """Refuse a folder made with another config or on other inputs than of fingerprints
        ``inputs`` (ConfigError naming the differing keys), or holding results but no config
        to tell whose they are."""
        if self.config_path.exists():
            differences = self.differences(cfg, inputs)
            key, _, change = differences[0].partition(": ") if differences else ("", "", "")
            if key in INPUT_NAMES and change.startswith(NOT_RECORDED):
                raise ConfigError(
                    f"{self.path} holds a run made before run folders recorded its "
                    f"{INPUT_NAMES[key]}: `python -m mglightning.migrate {self.path} --apply` "
                    f"records it (run it with the {INPUT_NAMES[key]} the run was made with)")
            if key in INPUT_NAMES:
                raise ConfigError(
                    f"{self.path} holds this config's run "
                    f"{ON_ANOTHER_INPUT[key].format(change=differences[0])}, or choose another "
                    "output_root to keep both")
            if differences:
                raise ConfigError(
                    f"{self.path} holds a run of another config ({'; '.join(differences)}); "
                    "leave output_dir and run_name at their defaults to get a folder of its "
                    "own, or delete that folder to redo it"
                )
        elif self.checkpoint_path.exists() or self.finished:
            raise ConfigError(f"{self.path} holds a run without {self.CONFIG}: it cannot be told "
                              "apart from another config's; choose another output_dir")

    def write_config(self, cfg: DictConfig, inputs: Mapping[str, str]) -> None:
        """Record the config the folder is made with and its inputs' fingerprints ``inputs``;
        never rewritten afterwards."""
        if not self.config_path.exists():
            self.record_config(OmegaConf.to_container(cfg, resolve=True), inputs)

    def record_config(self, config: dict, inputs: Mapping[str, str]) -> None:
        """Write ``config.yaml``: a resolved config and the fingerprints of its inputs."""
        recorded = {key: value for key, value in config.items() if key not in INPUT_KEYS}
        atomic_write_text(self.config_path, OmegaConf.to_yaml({**recorded, **inputs}))

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def write_results(self, task_rows: list[dict], summary: dict) -> None:
        write_csv(self.tasks_path, task_rows)
        write_json(self.summary_path, summary)

    @contextmanager
    def logging_to_file(self, enabled: bool = True) -> Iterator[None]:
        """Append this process's log records to ``train.log`` while the run works."""
        if not enabled:
            yield
            return
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()
