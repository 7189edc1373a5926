"""A run folder: what it holds, whether a config may use it, and its files written once.

A folder belongs to the config it was made with (``config.yaml``, resolved, written once and
never rewritten): a config of another identity is refused before anything is written, a
finished run (``summary.json``) is left alone unless re-evaluation is asked for, and an
unfinished one resumes from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mglightning.config import RUN_CONFIG, ConfigError
from mglightning.run.checkpoint import LAST_NAME
from mglightning.run.identity import differing_keys
from mglightning.run.io import atomic_write_text, write_csv, write_json

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as Hydra's console


class RunFolder:
    """``<output_dir>/``: config.yaml, checkpoints/last.ckpt, curve.csv, tasks.csv,
    summary.json (written last: its presence marks a finished run) and train.log."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / RUN_CONFIG
        self.checkpoint_path = self.path / "checkpoints" / LAST_NAME
        self.tasks_path = self.path / "tasks.csv"
        self.summary_path = self.path / "summary.json"
        self.log_path = self.path / "train.log"

    @property
    def finished(self) -> bool:
        return self.summary_path.exists()

    def differences(self, cfg: DictConfig) -> list[str]:
        """The identity keys in which ``cfg`` differs from the folder's config (none when the
        folder has no config yet)."""
        if not self.config_path.exists():
            return []
        return differing_keys(OmegaConf.load(self.config_path), cfg)

    def check_config(self, cfg: DictConfig) -> None:
        """Refuse a folder made with another config (ConfigError naming the differing keys),
        or holding results but no config to tell whose they are."""
        if self.config_path.exists():
            differences = self.differences(cfg)
            if differences:
                raise ConfigError(
                    f"{self.path} holds a run of another config ({'; '.join(differences)}); "
                    "leave output_dir and run_name at their defaults to get a folder of its "
                    "own, or delete that folder to redo it"
                )
        elif self.checkpoint_path.exists() or self.finished:
            raise ConfigError(f"{self.path} holds a run without {RUN_CONFIG}: it cannot be told "
                              "apart from another config's; choose another output_dir")

    def write_config(self, cfg: DictConfig) -> None:
        """Record the config the folder is made with; never rewritten afterwards."""
        if not self.config_path.exists():
            atomic_write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))

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
