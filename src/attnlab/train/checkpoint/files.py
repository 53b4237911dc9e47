"""The checkpoint folder format: file names, durable writes, ``meta.json`` and verification.

A checkpoint is a self-contained folder::

    RUN/checkpoints/step_0000500/
        model.safetensors   # weights (tied copies stored once)
        state.pt            # optimizer, step, RNG states (loaded with weights_only=True)
        config.yaml         # the full run config
        tokenizer.json      # the tokenizer, so generate/eval need nothing else
        meta.json           # format version, step, size and sha256 of every file, its own checksum
    RUN/checkpoints/latest  # name of the newest complete checkpoint (a hint for people and tools)

Every file is written through :func:`attnlab.io.durable.write_file` (fsynced, and a full disk
surfaces as ``OSError(ENOSPC)``); :func:`seal_checkpoint` records every file's size and sha256
in ``meta.json`` last, and :func:`verify_checkpoint` checks them. How folders are committed,
rotated and found again is :mod:`attnlab.train.checkpoint.store`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from attnlab.config import Config
from attnlab.errors import CheckpointError
from attnlab.io import durable
from attnlab.io.durable import Log, atomic_write_text, fsync_file, sha256_file, write_file

__all__ = [
    "CONFIG", "FORMAT_VERSION", "LATEST", "META", "REQUIRED", "STATE", "STEP_NAME", "TOKENIZER", "WEIGHTS", "Log",
    "atomic_write_text", "checkpoint_name", "fsync_file", "seal_checkpoint", "sha256_file", "step_of",
    "verify_checkpoint", "write_contents", "write_file",
]

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "state.pt"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
META = "meta.json"
LATEST = "latest"
REQUIRED = (WEIGHTS, CONFIG)  # a checkpoint without these cannot be used for anything
STEP_NAME = re.compile(r"step_(\d+)")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of ``step`` (``step_0000500``)."""
    return f"step_{step:07d}"


def step_of(path: Path) -> int | None:
    """The step a ``step_N`` folder holds, or None for any other name."""
    m = STEP_NAME.fullmatch(path.name)
    return int(m.group(1)) if m else None


def write_contents(
    folder: Path,
    *,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    config: Config,
    tokenizer_file: Path | None = None,
) -> None:
    """Write a checkpoint's files (all but ``meta.json``) into ``folder``.

    Args:
        folder: the (temporary) checkpoint folder.
        weights: contiguous CPU tensors, tied copies kept once (``model.safetensors``).
        state: what resuming needs (``state.pt``; saved as given).
        config: the run config (``config.yaml``).
        tokenizer_file: a ``tokenizer.json`` to copy in.
    """
    durable.write_file(folder / WEIGHTS, safetensors_bytes(weights, metadata={"format": "pt"}))
    durable.write_file(folder / STATE, lambda f: torch.save(state, f))
    config.save(folder / CONFIG)
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, folder / TOKENIZER)


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def seal_checkpoint(folder: Path, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flush every file under ``folder`` to disk and record its size and sha256 in ``meta.json``.

    Files in subfolders (a distributed checkpoint's ``dcp/``) are recorded by their relative
    path. ``meta.json`` carries its own checksum, so an edited one is caught.

    Args:
        folder: the complete (temporary) checkpoint folder.
        step: optimizer steps completed.
        extra: more top-level entries (e.g. ``{"world_size": 2}``).

    Returns:
        The written metadata.
    """
    sums, sizes = durable.digests(folder)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": step, **(extra or {}),
                            "sha256": sums, "bytes": sizes}
    meta["meta_sha256"] = _meta_digest(meta)
    durable.write_file(folder / META, json.dumps(meta, indent=1).encode())
    return meta


def verify_checkpoint(path: str | Path, checksums: bool = True) -> dict[str, Any]:
    """Check a checkpoint folder: meta.json intact, format known, every file present with its size and sha256.

    Args:
        path: a checkpoint folder (``.../checkpoints/step_0000500``).
        checksums: also hash every file (otherwise only presence and sizes: fast).

    Returns:
        The parsed ``meta.json``.

    Raises:
        CheckpointError: one line naming the first problem found.
    """
    ckpt = Path(path)
    meta_path = ckpt / META
    if not meta_path.is_file():
        raise CheckpointError(f"'{ckpt}' has no {META}: its save did not finish or it is not an attnlab checkpoint")
    meta = durable.read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
        raise CheckpointError(f"'{meta_path}' is corrupt (not valid checkpoint JSON)")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{ckpt}' has checkpoint format {version!r}, newer than this attnlab understands ({FORMAT_VERSION}); "
            "upgrade attnlab"
        )
    if "meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta):
        raise CheckpointError(f"'{meta_path}' is corrupt (checksum mismatch)")
    step = step_of(ckpt)
    if step is not None and meta.get("step") != step:
        raise CheckpointError(f"'{meta_path}' is corrupt "
                              f"(it says step {meta.get('step')!r}, the folder is step {step})")
    durable.check_files(ckpt, meta["sha256"], meta.get("bytes", {}), required=REQUIRED, checksums=checksums,
                        kind="the checkpoint")
    return meta
