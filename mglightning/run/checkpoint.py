"""Checkpoints written whole or not at all, and never over a good one with a broken state;
read back as data only; a run asked to stop (SIGTERM, SIGINT) at any point keeps its finished
rounds checkpointed and ends non-zero, in one line."""

from __future__ import annotations

import copy
import logging
import os
import pickle
import re
import signal
import threading
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mglightning.errors import ConfigError, one_line

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How to make a checkpoint of data alone from one that carries more (its tensors re-saved).
SAFE_CHECKPOINT_ADVICE = (
    "use a run's checkpoints/last.ckpt made by mglightning, or re-save the tensors alone where "
    "you trust the file: torch.save({'state_dict': state_dict}, path)")

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that must not be written: its state holds NaN or infinite values."""


class UnreadableCheckpointError(ConfigError):
    """A checkpoint that is missing, not in torch's format, or not data alone (bad input: the
    entry points end with exit 2)."""


class UnsafeCheckpointError(UnreadableCheckpointError):
    """A checkpoint that is not data alone: unpickling it could run code, so it is not read."""


def read_checkpoint(path: str | Path, remedy: str = SAFE_CHECKPOINT_ADVICE) -> dict:
    """A checkpoint someone may have handed over (``method.meta_checkpoint=``, ``make deploy
    RUN=``, a run folder's ``last.ckpt``), read with ``weights_only=True``: tensors and plain
    containers only, as this package's checkpoints hold (Lightning's, with the callbacks' state,
    included). A file carrying any other pickled object is refused in one line, before anything
    of it runs; so is one that is missing or not a checkpoint at all (the message ends with
    ``remedy``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise UnreadableCheckpointError(f"{path} does not exist") from error
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error: (.+?)(?:\. Please|\n|$)", str(error))
        if found is None:
            raise UnreadableCheckpointError(
                f"{path} is not a checkpoint torch can read ({one_line(error)}); {remedy}"
            ) from error
        raise UnsafeCheckpointError(
            f"{path} is refused for safety: it carries pickled objects ({found.group(1)}), "
            f"which loading could run; {remedy}") from error
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as error:
        raise UnreadableCheckpointError(
            f"{path} is not a checkpoint torch can read ({one_line(error)}); {remedy}"
        ) from error


def read_state_dict(path: str | Path, remedy: str = SAFE_CHECKPOINT_ADVICE
                    ) -> dict[str, torch.Tensor]:
    """The model state of a checkpoint (:func:`read_checkpoint`), refused in one line ending
    with ``remedy`` if it holds no state dict of tensors."""
    loaded = read_checkpoint(path, remedy)
    state = loaded.get("state_dict") if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(value)
                                                 for value in state.values()):
        raise UnreadableCheckpointError(f"{path} holds no state_dict of tensors: {remedy}")
    return dict(state)


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


class StopNow(Exception):
    """A stop asked for by a signal, raised where the run can stop: at a safe point after a
    first signal, or wherever the run is at a second one. :class:`StopRequest` ends the run
    with :class:`RunInterrupted` once the finished rounds are checkpointed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class RunInterrupted(Exception):
    """The run was asked to stop by a signal; its finished rounds are checkpointed (``None``:
    none was)."""

    def __init__(self, signum: int, rounds_done: int | None = None,
                 checkpoint: Path | None = None) -> None:
        self.signum, self.rounds_done, self.checkpoint = signum, rounds_done, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after round {rounds_done}; checkpoint {checkpoint}; run the "
            "same command to resume" if checkpoint is not None else
            f"stopped by {name} before any round was checkpointed; run the same command to "
            "start again")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal: 143 for SIGTERM, 130 SIGINT."""
        return 128 + self.signum


class StopRequest(Callback):
    """While entered, SIGTERM and SIGINT stop the run, which then ends with
    :class:`RunInterrupted`. A first signal is noted: the run stops at the next safe point, at
    the end of the round under way (checkpointed by :class:`RoundCheckpoint`), or before the
    next target task of an evaluation (the round is checkpointed without it and evaluated when
    the run resumes) or of the final adaptation. A second one stops it at once (:class:`StopNow`
    from the handler): the round under way is dropped, the finished ones are checkpointed; a
    third acts as it would without this.

    As a callback it takes the signals back when training or testing starts: Lightning then
    installs its own SIGTERM handler, which would end the round mid-way, before any checkpoint.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.checkpoint: tuple[int, Path] | None = None  # (rounds, path) of the last one saved
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # else signals cannot be set
            self._previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            self.install()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.restore()
        self._previous = {}
        if isinstance(exc, StopNow):
            raise RunInterrupted(exc.signum, *(self.checkpoint or (None, None))) from None

    def install(self) -> None:
        for signum in self._previous:
            signal.signal(signum, self._stop)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def on_train_start(self, trainer, pl_module) -> None:
        self.install()

    def on_test_start(self, trainer, pl_module) -> None:
        self.install()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx,
                            dataloader_idx=0) -> None:
        self.raise_if_requested()  # a batch of the final adaptation is a target task

    def _stop(self, signum: int, frame) -> None:
        if self.signum is not None:
            self.restore()
            raise StopNow(self.signum)
        self.signum = signum
        log.warning("%s received: stopping after this round or target task (send it again to "
                    "stop at once)", signal.Signals(signum).name)

    def checkpointed(self, rounds_done: int, path: Path) -> None:
        """Note that ``path`` holds the run's first ``rounds_done`` rounds."""
        self.checkpoint = (rounds_done, Path(path))

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise StopNow(self.signum)


class RoundCheckpoint(Checkpoint):
    """Saves ``path`` after every ``every_n_rounds``-th round (training epoch), after the last
    one, and after the round in which a stop was requested, then stops the run
    (:class:`StopNow`). A stop at once mid-round (:class:`StopRequest`) saves the last finished
    round, which is kept in memory until it is on disk.

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
        self.unsaved: tuple[int, dict] | None = None  # (rounds, the checkpoint) not on disk yet

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        signum = (self.stop_request.signum if self.stop_request is not None else None) or 0
        if trainer.world_size > 1:  # every process stops at the same round, for any one's signal
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device),
                                                reduce_op="max"))
        rounds = int(pl_module.rounds_done)
        # What trainer.save_checkpoint writes (callbacks and loops too), taken once a round.
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        if signum or rounds >= trainer.max_epochs or rounds % self.every_n_rounds == 0:
            self.unsaved = (rounds, checkpoint)  # a stop mid-write writes it again
            self.write(trainer, rounds, checkpoint)
            trainer.strategy.barrier("RoundCheckpoint")
        else:  # the live state changes in the next round: a copy
            self.unsaved = (rounds, copy.deepcopy(checkpoint))
        if signum:
            raise StopNow(signum)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.unsaved is not None:  # training ended before its last round (trainer.max_time)
            self.write(trainer, *self.unsaved)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A stop mid-round: the last finished round saved, if it is not on disk yet."""
        if isinstance(exception, StopNow) and self.unsaved is not None:
            self.write(trainer, *self.unsaved)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.stop_request is not None:  # a resumed run: these rounds are on disk
            self.stop_request.checkpointed(int(checkpoint["state_dict"]["rounds_done"]),
                                           self.last_path)

    def write(self, trainer, rounds: int, checkpoint: dict) -> None:
        trainer.strategy.save_checkpoint(checkpoint, self.last_path)
        self.unsaved = None
        if self.stop_request is not None:
            self.stop_request.checkpointed(rounds, self.last_path)


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [
        name
        for name, tensor in state_dict.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not tensor.isfinite().all()
    ]
