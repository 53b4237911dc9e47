"""Checkpoints that never lose work.

A checkpoint is a self-contained folder::

    RUN/checkpoints/step_0000500/
        model.safetensors   # weights (tied copies stored once)
        state.pt            # optimizer, step, RNG states (loaded with weights_only=True)
        config.yaml         # the full run config
        tokenizer.json      # the tokenizer, so generate/eval need nothing else
        meta.json           # format version, step, sha256 of every file
    RUN/checkpoints/latest  # name of the newest complete checkpoint

Writing goes to a temporary folder that is renamed into place only when every file
is flushed to disk, and ``latest`` is replaced atomically afterwards: a run killed
at any moment leaves the previous checkpoint intact and ``latest`` pointing at a
complete one. Loading verifies the checksums, so a truncated or corrupted file is
reported instead of silently loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from attnlab.config import Config, from_dict
from attnlab.errors import CheckpointError

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "state.pt"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
META = "meta.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a file to disk (so a rename after it never exposes a half-written file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    fsync_file(tmp)
    os.replace(tmp, path)


def weights_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors with tied (aliased) parameters kept once, contiguous, on CPU."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel() > 0:
            continue
        seen.add(ptr)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``weights`` into ``model``, checking names and shapes first.

    Raises:
        CheckpointError: when the checkpoint was made for another architecture.
    """
    expected = model.state_dict()
    tied = set(expected) - set(weights_state_dict(model))
    missing = [k for k in expected if k not in weights and k not in tied]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(
            f"{source} does not match this model's architecture ({what}, {len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); use the config saved with the checkpoint"
        )
    for k, t in weights.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{source} does not match this model's architecture: '{k}' has shape {tuple(t.shape)}, "
                f"the model expects {tuple(expected[k].shape)}; use the config saved with the checkpoint"
            )
    model.load_state_dict(weights, strict=False)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    config: Config,
    *,
    state: dict[str, Any],
    tokenizer_file: Optional[Path] = None,
    keep_last: int = 3,
) -> Path:
    """Write a checkpoint atomically and point ``latest`` at it.

    Args:
        run_dir: the run folder (``train.out_dir``).
        step: optimizer steps completed.
        model: the model (unwrapped from ``torch.compile``).
        config: the run config.
        state: tensors and plain values to resume from (optimizer, RNG, counters).
        tokenizer_file: a ``tokenizer.json`` to copy in.
        keep_last: older checkpoints beyond this many are removed (0 keeps all).

    Returns:
        The checkpoint folder.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(weights_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        torch.save({**state, "step": step}, tmp / STATE)
        config.save(tmp / CONFIG)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER)
        files = [p for p in tmp.iterdir()]
        for p in files:
            fsync_file(p)
        meta = {"format_version": FORMAT_VERSION, "step": step, "sha256": {p.name: sha256_file(p) for p in files}}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        fsync_file(tmp / META)
        if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / "latest", name + "\n")
    if keep_last > 0:
        done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
        for old in done[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """Resolve a run folder, its ``checkpoints/`` folder or a checkpoint folder to a checkpoint folder.

    Raises:
        CheckpointError: when nothing usable is there.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' not found; pass a run folder (train.out_dir) or a checkpoint folder")
    if (p / META).exists() or (p / WEIGHTS).exists():
        return p
    for root in (p / "checkpoints", p):
        latest = root / "latest"
        if latest.exists():
            target = root / latest.read_text().strip()
            if target.exists():
                return target
            raise CheckpointError(f"'{latest}' points at missing '{target.name}'; pass a checkpoint folder explicitly")
    raise CheckpointError(f"no checkpoint in '{p}'; train first (attnlab train ...) or pass a checkpoint folder")


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a completed checkpoint."""
    return (Path(run_dir) / "checkpoints" / "latest").exists()


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, config, weights and (optionally) training state."""

    path: Path
    config: Config
    weights: dict[str, torch.Tensor]
    step: int

    @property
    def tokenizer_file(self) -> Optional[Path]:
        p = self.path / TOKENIZER
        return p if p.exists() else None

    def training_state(self) -> dict[str, Any]:
        """Optimizer/RNG state saved for resuming (safe load: ``weights_only=True``)."""
        try:
            return torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise CheckpointError(f"'{self.path / STATE}' cannot be read ({type(e).__name__}); the file is corrupt") from None


def load_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Load a checkpoint's config and weights, verifying checksums.

    Args:
        path: run folder, ``checkpoints/`` folder or checkpoint folder.
        verify: check every file against the sha256 recorded at save time.

    Raises:
        CheckpointError: missing files, checksum mismatch, unreadable weights or config.
    """
    ckpt = find_checkpoint(path)
    meta_path = ckpt / META
    if not meta_path.exists():
        raise CheckpointError(f"'{ckpt}' has no {META}: it is incomplete or not an attnlab checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"'{meta_path}' is corrupt (not JSON)") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"'{ckpt}' has checkpoint format {meta.get('format_version')}, newer than this attnlab "
            f"understands ({FORMAT_VERSION}); upgrade attnlab"
        )
    if verify:
        for fname, digest in meta.get("sha256", {}).items():
            f = ckpt / fname
            if not f.exists():
                raise CheckpointError(f"'{f}' is missing from the checkpoint; it is incomplete")
            if sha256_file(f) != digest:
                raise CheckpointError(f"'{f}' is corrupt (checksum mismatch); use an earlier checkpoint")
    try:
        weights = load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{ckpt / WEIGHTS}' cannot be read ({str(e).splitlines()[0]}); the file is corrupt") from None
    try:
        config = from_dict(Config, yaml.safe_load((ckpt / CONFIG).read_text()))
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"'{ckpt / CONFIG}' cannot be read ({type(e).__name__})") from None
    return Checkpoint(path=ckpt, config=config, weights=weights, step=int(meta.get("step", 0)))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Build the model a checkpoint describes and load its weights (eval mode).

    Returns:
        ``(model, checkpoint)``.
    """
    from attnlab.models import build  # local import: models do not depend on training code

    ckpt = load_checkpoint(path)
    model = build(ckpt.config)
    load_weights(model, ckpt.weights, source=f"checkpoint '{ckpt.path}'")
    return model.to(device).eval(), ckpt
