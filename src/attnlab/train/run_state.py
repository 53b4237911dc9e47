"""What a training run needs around its steps: device, precision, signals, RNG states, resume checks.

Shared by every recipe on :mod:`attnlab.train.engine` (pretraining, fine-tuning).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnlab.config import TrainConfig
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.precision import Precision, resolve_precision

RESUMABLE_CHANGES = ("batch_size", "lr", "seq_len")
"""``train.*`` settings a run may change when it resumes (said on one line of the log)."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AttnlabError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)


def run_precision(device: torch.device, dtype: str, log: Callable[[str], None]) -> Precision:
    """Resolve ``train.dtype`` (:func:`attnlab.precision.resolve_precision`) and log the one line saying which ran.

    The line reads e.g. ``precision: bfloat16 autocast (auto: this CPU multiplies bf16 natively)``.
    """
    precision = resolve_precision(dtype, device)
    log(f"precision: {precision.reason}")
    return precision


def autocast_for(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``dtype`` on ``device`` (:meth:`attnlab.precision.Precision.autocast`):
    bf16 autocast where :func:`attnlab.precision.resolve_precision` picks bf16, else nothing."""
    return resolve_precision(dtype, device).autocast(device)


class StopFlag:
    """First Ctrl-C / SIGTERM asks the loop to save and stop at the next step boundary;
    a second one interrupts at once (the last checkpoint on disk stays intact).

    Under torchrun a Ctrl-C reaches each process twice (from the terminal, then forwarded
    by the launcher), so there a second signal within a second counts as the same one.
    """

    def __init__(self) -> None:
        self.requested = False
        self._since = 0.0
        self._grace = 1.0 if "TORCHELASTIC_RUN_ID" in os.environ else 0.0
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and time.monotonic() - self._since >= self._grace:
            raise KeyboardInterrupt
        if not self.requested:
            self._since = time.monotonic()
        self.requested = True

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states a step consumes (dropout, augmentation), for checkpoints."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_changes(saved: TrainConfig, current: TrainConfig) -> str:
    """One line naming the :data:`RESUMABLE_CHANGES` between a checkpoint's settings and now ("" if none)."""
    changed = [f"train.{k}={getattr(current, k)} (was {getattr(saved, k)})" for k in RESUMABLE_CHANGES
               if getattr(saved, k, None) != getattr(current, k)]
    return "resuming with " + ", ".join(changed) if changed else ""


def check_same_optimizer(saved: TrainConfig, current: TrainConfig, run_dir: Path) -> None:
    """A run resumes with the optimizer it was trained with.

    Raises:
        CheckpointError: ``train.optimizer`` changed.
    """
    if saved.optimizer != current.optimizer:
        raise CheckpointError(
            f"the checkpoint in '{run_dir}' was trained with train.optimizer={saved.optimizer}; "
            "resume with the same optimizer or choose another train.out_dir"
        )
