"""Checkpoints that never lose work: save, load, and the weights they hold.

A checkpoint is a self-contained folder (``RUN/checkpoints/step_0000500/``: weights, training
state, config, tokenizer and a ``meta.json`` of checksums; the format is
:mod:`attnlab.train.checkpoint.files`). A save is staged in a temporary folder and committed
atomically, and a run folder loads its newest checkpoint that verifies, skipping damaged ones
with one line each (:mod:`attnlab.train.checkpoint.store`). A run killed at any moment keeps
its previous checkpoint; a full disk or read-only folder is one clear error.

This package's ``__init__`` is the public face: every name of the two modules above that other
code uses is importable from here, with the strict weight loader of :mod:`attnlab.io.weights`.
Distributed (sharded) checkpoints are :mod:`attnlab.train.checkpoint.dist`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from attnlab.config import Config, from_dict
from attnlab.errors import CheckpointError
from attnlab.io.weights import load_weights, read_weights_file, weights_state_dict
from attnlab.train.checkpoint.files import (
    CONFIG,
    FORMAT_VERSION,
    LATEST,
    META,
    REQUIRED,
    STATE,
    TOKENIZER,
    WEIGHTS,
    Log,
    atomic_write_text,
    fsync_file,
    sha256_file,
    verify_checkpoint,
    write_contents,
)
from attnlab.train.checkpoint.store import (
    check_writable,
    checkpoint_folders,
    commit_checkpoint,
    find_checkpoint,
    has_checkpoint,
    is_checkpoint_folder,
    latest_good_checkpoint,
    stage_checkpoint,
)

__all__ = [
    "CONFIG", "FORMAT_VERSION", "LATEST", "META", "REQUIRED", "STATE", "TOKENIZER", "WEIGHTS", "Log",
    "Checkpoint", "atomic_write_text", "check_writable", "checkpoint_folders", "find_checkpoint", "fsync_file",
    "has_checkpoint", "latest_good_checkpoint", "load_checkpoint", "load_model", "load_weights", "save_checkpoint",
    "sha256_file", "verify_checkpoint", "weights_state_dict",
]


# ---------------------------------------------------------------------------
# Saving.


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    config: Config,
    *,
    state: dict[str, Any],
    tokenizer_file: Path | None = None,
    keep_last: int = 3,
    log: Log | None = None,
) -> Path:
    """Write a checkpoint atomically and point ``latest`` at it.

    Args:
        run_dir: the run folder (``train.out_dir``).
        step: optimizer steps completed.
        model: the model (unwrapped from ``torch.compile``).
        config: the run config.
        state: tensors and plain values to resume from (optimizer, RNG, counters).
        tokenizer_file: a ``tokenizer.json`` to copy in.
        keep_last: how many complete checkpoints to keep (0 keeps all); damaged ones are not
            counted and never deleted.
        log: where one-line notes go (cleanup of an interrupted save, quarantine); default stderr.

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: the write failed (disk full, read-only folder, ...); the temporary folder
            is removed and earlier checkpoints are intact.
    """
    def write(folder: Path) -> None:
        write_contents(folder, weights=weights_state_dict(model), state={**state, "step": step}, config=config,
                       tokenizer_file=tokenizer_file)

    tmp = stage_checkpoint(run_dir, step, log)
    return commit_checkpoint(tmp, step, write=write, keep_last=keep_last, log=log)


# ---------------------------------------------------------------------------
# Loading.


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, config, weights and (optionally) training state."""

    path: Path
    config: Config
    weights: dict[str, torch.Tensor]
    step: int

    @property
    def tokenizer_file(self) -> Path | None:
        p = self.path / TOKENIZER
        return p if p.exists() else None

    def training_state(self) -> dict[str, Any]:
        """Optimizer/RNG state saved for resuming (safe load: ``weights_only=True``)."""
        try:
            return torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise CheckpointError(
                f"'{self.path / STATE}' cannot be read ({type(e).__name__}); the file is corrupt"
            ) from None


def _read_run_config(path: Path) -> Config:
    return from_dict(Config, yaml.safe_load(path.read_text()))


def load_checkpoint(path: str | Path, verify: bool = True, log: Log | None = None,
                    read_config: Callable[[Path], Any] = _read_run_config) -> Checkpoint:
    """Load a checkpoint's config and weights, verifying checksums.

    A run folder (or its ``checkpoints/`` folder) loads the newest checkpoint that verifies:
    newer damaged ones are skipped with one warning line each on ``log`` (default stderr) and
    left on disk. This is what both ``--resume`` and inference (generate, eval, serve) get.
    An explicit checkpoint folder is loaded as named, or fails: no silent substitution.

    Args:
        path: run folder, ``checkpoints/`` folder or checkpoint folder.
        verify: check every file against the sha256 recorded at save time.
        log: where warnings about skipped checkpoints go.
        read_config: reads the saved ``config.yaml`` (default: a pretraining :class:`Config`;
            fine-tuning passes its recipe reader).

    Raises:
        CheckpointError: missing files, checksum mismatch, unreadable weights or config, or no
            checkpoint of a run folder verifies.
    """
    p = Path(path)
    if p.exists() and is_checkpoint_folder(p):
        try:
            verify_checkpoint(p, checksums=verify)
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}; load an earlier checkpoint, or pass the run folder to use the newest good one"
            ) from None
        ckpt = p
    else:
        ckpt = latest_good_checkpoint(p, log, checksums=verify)[0]
    meta = json.loads((ckpt / META).read_text())
    weights = read_weights_file(ckpt / WEIGHTS)
    try:
        config = read_config(ckpt / CONFIG)
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"'{ckpt / CONFIG}' cannot be read ({type(e).__name__})") from None
    return Checkpoint(path=ckpt, config=config, weights=weights, step=int(meta.get("step", 0)))


def load_model(
    path: str | Path, device: str | torch.device = "cpu", log: Log | None = None
) -> tuple[nn.Module, Checkpoint]:
    """Build the model a checkpoint describes and load its weights (eval mode).

    ``path`` is resolved as in :func:`load_checkpoint` (a run folder falls back to its newest
    good checkpoint with a warning on ``log``).

    Returns:
        ``(model, checkpoint)``.
    """
    from attnlab.models import build  # local import: models do not depend on training code

    ckpt = load_checkpoint(path, log=log)
    model = build(ckpt.config)
    load_weights(model, ckpt.weights, source=f"checkpoint '{ckpt.path}'")
    return model.to(device).eval(), ckpt
