"""Checkpoints written whole or not at all, and never over a good one with a broken state."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

LAST_NAME = "last.ckpt"


class CheckpointError(RuntimeError):
    """A checkpoint that must not be written: its state holds NaN or infinite values."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file, flushes it to disk, then renames it over the target, so that a
    crash or kill mid-write leaves the previous checkpoint readable. Refuses a state with
    non-finite values, so that a diverged run never replaces the last good checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        bad_keys = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad_keys:
            raise CheckpointError(f"not writing {path}: non-finite values in {bad_keys}; "
                                  "the previous checkpoint is kept")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class RoundCheckpoint(Checkpoint):
    """Saves ``<dirpath>/last.ckpt`` after every ``every_n_rounds``-th round (training epoch).

    Lightning's ModelCheckpoint decides by the global step, which manual optimization without
    an optimizer never advances: it would save nothing until the run ends, and a killed run would
    lose every round. Being a ``Checkpoint``, this runs after the other callbacks' epoch-end
    hooks, so their state for the round (e.g. the evaluation curve) is in the file.
    """

    def __init__(self, dirpath: str | Path, every_n_rounds: int) -> None:
        self.last_path = Path(dirpath) / LAST_NAME
        self.every_n_rounds = every_n_rounds

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (trainer.current_epoch + 1) % self.every_n_rounds == 0:
            trainer.save_checkpoint(self.last_path, weights_only=False)  # callbacks too


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [
        name
        for name, tensor in state_dict.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not tensor.isfinite().all()
    ]
