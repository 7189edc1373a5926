"""Checkpoints written whole or not at all, and never over a good one with a broken state;
read back as data only; a run asked to stop (SIGTERM, SIGINT) checkpoints its last whole round
and ends non-zero."""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mglightning.errors import ConfigError, one_line

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that must not be written: its state holds NaN or infinite values."""


class UnsafeCheckpointError(ConfigError):
    """A checkpoint that is not data alone: unpickling it could run code, so it is not read
    (bad input: the entry points end with exit 2)."""


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint someone may have handed over (``method.meta_checkpoint=``, ``make deploy
    RUN=``), read with ``weights_only=True``: tensors and plain containers only, as this
    package's checkpoints hold (Lightning's, with the callbacks' state, included). A file
    carrying any other pickled object is refused in one line, before anything of it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error: (.+?)(?:\. Please|\n|$)", str(error))
        reason = found.group(1) if found else one_line(error)
        raise UnsafeCheckpointError(
            f"{path} is refused: it holds more than tensors and plain values ({reason}); "
            "a checkpoint made by mglightning never does, so ask for one made by it"
        ) from error


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


class RunInterrupted(Exception):
    """The run was asked to stop by a signal; its last whole round is checkpointed."""

    def __init__(self, signum: int, rounds_done: int, checkpoint: Path) -> None:
        self.signum, self.rounds_done, self.checkpoint = signum, rounds_done, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after round {rounds_done}; "
                         f"checkpoint {checkpoint}; run the same command to resume")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal: 143 for SIGTERM, 130 SIGINT."""
        return 128 + self.signum


class StopRequest(Callback):
    """While entered, SIGTERM and SIGINT only note that a stop was asked for: the round under
    way (and its evaluation) finishes, then :class:`RoundCheckpoint` saves it and stops the run;
    during the final adaptation the run ends without results. A second signal of the same kind
    acts at once, as it would without this.

    As a callback it takes the signals back when training or testing starts: Lightning then
    installs its own SIGTERM handler, which would end the round mid-way, before any checkpoint.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # else signals cannot be set
            self._previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            self.install()
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def install(self) -> None:
        for signum in self._previous:
            if self.signum != signum:
                signal.signal(signum, self._note)

    def on_train_start(self, trainer, pl_module) -> None:
        self.install()

    def on_test_start(self, trainer, pl_module) -> None:
        self.install()

    def _note(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])  # the next one is not deferred
        log.warning("%s received: stopping after this round (send it again to stop at once)",
                    signal.Signals(signum).name)

    def raise_if_requested(self, rounds_done: int, checkpoint: Path) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum, rounds_done, checkpoint)


class RoundCheckpoint(Checkpoint):
    """Saves ``path`` after every ``every_n_rounds``-th round (training epoch),
    and after the round in which a stop was requested, then raises :class:`RunInterrupted`.

    Lightning's ModelCheckpoint decides by the global step, which manual optimization without
    an optimizer never advances: it would save nothing until the run ends, and a killed run would
    lose every round. Being a ``Checkpoint``, this runs after the other callbacks' epoch-end
    hooks, so their state for the round (e.g. the evaluation curve) is in the file.
    """

    def __init__(self, path: str | Path, every_n_rounds: int,
                 stop_request: StopRequest | None = None) -> None:
        self.last_path = Path(path)
        self.every_n_rounds = every_n_rounds
        self.stop_request = stop_request

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        signum = (self.stop_request.signum if self.stop_request is not None else None) or 0
        if trainer.world_size > 1:  # every process stops at the same round, for any one's signal
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device),
                                                reduce_op="max"))
        if signum or (trainer.current_epoch + 1) % self.every_n_rounds == 0:
            trainer.save_checkpoint(self.last_path, weights_only=False)  # callbacks too
        if signum:
            raise RunInterrupted(signum, int(pl_module.rounds_done), self.last_path)


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [
        name
        for name, tensor in state_dict.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not tensor.isfinite().all()
    ]
