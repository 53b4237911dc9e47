"""Checkpoints that never lose work.

A checkpoint is a self-contained folder::

    RUN/checkpoints/step_0000500/
        model.safetensors   # weights (tied copies stored once)
        state.pt            # optimizer, step, RNG states (loaded with weights_only=True)
        config.yaml         # the full run config
        tokenizer.json      # the tokenizer, so generate/eval need nothing else
        meta.json           # format version, step, size and sha256 of every file, its own checksum
    RUN/checkpoints/latest  # name of the newest complete checkpoint (a hint for people and tools)

Writing goes to a temporary folder that is renamed into place only when every file
is flushed to disk, and ``latest`` is replaced atomically afterwards: a run killed
at any moment leaves the previous checkpoint intact. Temporary folders left by a killed
save are ignored by readers and removed by the next save.

Reading a *run folder* takes the newest checkpoint that verifies (checksums, sizes,
format version) and reports every newer one it skips on one line each; a damaged
checkpoint is never deleted automatically (it stays for inspection, and rotation does
not count it). Reading an explicit *checkpoint folder* verifies it and fails loudly.
Write failures (disk full, read-only folder) raise :class:`CheckpointError` with one line
naming the folder and the fix, after removing the half-written temporary folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from attnlab.config import Config, from_dict
from attnlab.errors import CheckpointError

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "state.pt"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
META = "meta.json"
LATEST = "latest"
REQUIRED = (WEIGHTS, CONFIG)  # a checkpoint without these cannot be used for anything
_STEP = re.compile(r"step_(\d+)")
_STALE = re.compile(r"\.(tmp-step_\d+|old-step_\d+|latest\.tmp|write-test)-(\d+)")  # left by a killed save

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a rename after it never exposes a half-written file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: Union[bytes, Callable[[BinaryIO], None]]) -> None:
    """Write bytes (or let ``data(f)`` write) to ``path`` and fsync it.

    Everything goes through a Python file object so that a full disk surfaces as
    ``OSError(ENOSPC)`` (``torch.save`` to a path reports it as an opaque RuntimeError).
    """
    with open(path, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_file(tmp, text.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


# ---------------------------------------------------------------------------
# Write failures and the writability check.


def _io_error(e: OSError, doing: str, where: Path, after: str = "") -> CheckpointError:
    """One line for a failed write: what, where, why (by errno) and the fix."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "the disk is full", f"free space on the disk holding '{where}' (df -h) or set train.out_dir to another disk"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why, fix = "the folder is not writable", "set train.out_dir to a writable folder (or fix its permissions)"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        why, fix = f"a file is in the way of a folder ('{e.filename}')", "remove that file or set train.out_dir elsewhere"
    else:
        why, fix = "the write failed", "check the disk, then retry"
    return CheckpointError(f"{doing} '{where}': {why} ({e.strerror or e}){after}; {fix}")


def check_writable(run_dir: str | Path, need_bytes: int = 0) -> None:
    """Fail fast, before any training, when checkpoints could not be saved in ``run_dir``.

    Creates ``run_dir/checkpoints/`` and writes, fsyncs and removes a probe file there, so
    permissions, read-only mounts and files in the way of folders are all caught (a
    permission-bit check would pass for root on a read-only mount). Optionally checks that
    ``need_bytes`` are free on that disk.

    Raises:
        CheckpointError: one line naming the folder, the reason and the fix.
    """
    root = Path(run_dir) / "checkpoints"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        _write_file(probe, b"attnlab")
        probe.unlink()
        free = shutil.disk_usage(root).free
    except OSError as e:
        raise _io_error(e, "cannot save checkpoints in", root) from None
    if free < need_bytes:
        raise CheckpointError(
            f"only {free / 2**20:.0f} MiB free on the disk holding '{root}', a checkpoint needs about "
            f"{need_bytes / 2**20:.0f} MiB; free space or set train.out_dir to another disk"
        )


# ---------------------------------------------------------------------------
# Verification.


def _step_of(path: Path) -> Optional[int]:
    m = _STEP.fullmatch(path.name)
    return int(m.group(1)) if m else None


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
    try:
        meta = json.loads(meta_path.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
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
    step = _step_of(ckpt)
    if step is not None and meta.get("step") != step:
        raise CheckpointError(f"'{meta_path}' is corrupt (it says step {meta.get('step')!r}, the folder is step {step})")
    sizes = meta.get("bytes", {})
    for fname in [*[r for r in REQUIRED if r not in meta["sha256"]], *meta["sha256"]]:
        f = ckpt / fname
        if not f.is_file():
            raise CheckpointError(f"'{f}' is missing from the checkpoint; it is incomplete")
        size = f.stat().st_size
        if fname in sizes and size != sizes[fname]:
            what = "truncated" if size < sizes[fname] else "too long"
            raise CheckpointError(f"'{f}' is corrupt ({what}: {size} bytes instead of {sizes[fname]})")
        if checksums and sha256_file(f) != meta["sha256"][fname]:
            raise CheckpointError(f"'{f}' is corrupt (checksum mismatch)")
    return meta


# ---------------------------------------------------------------------------
# Finding checkpoints.


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """The ``step_N`` folders of a run (or of its ``checkpoints/`` folder), oldest first.

    Temporary folders of unfinished saves and quarantined ``corrupt-*`` folders are not listed;
    damaged ``step_N`` folders are (use :func:`verify_checkpoint` to tell).
    """
    root = _ckpt_root(Path(run_dir))
    found = [p for p in root.iterdir() if _step_of(p) is not None and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: _step_of(p) or 0)


def _ckpt_root(p: Path) -> Path:
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def _is_checkpoint_folder(p: Path) -> bool:
    return (p / META).exists() or (p / WEIGHTS).exists() or (_step_of(p) is not None and p.is_dir())


def _latest_problem(root: Path) -> Optional[str]:
    """Why ``root/latest`` cannot be trusted, or None when it names an existing checkpoint (or is absent)."""
    latest = root / LATEST
    if not latest.exists():
        return None
    try:
        name = latest.read_bytes().decode().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _STEP.fullmatch(name) is None:
        return f"'{latest}' is corrupt (it does not name a checkpoint folder)"
    if not (root / name).is_dir():
        return f"'{latest}' names '{name}', which is missing"
    return None


def latest_good_checkpoint(
    run_dir: str | Path, log: Optional[Log] = None, *, checksums: bool = True
) -> tuple[Path, list[tuple[Path, str]]]:
    """The newest checkpoint of a run that verifies, and the newer ones that did not.

    Checkpoints are tried newest step first; each rejected one is reported on one line
    (``log``, default stderr) and left on disk for inspection. A damaged ``latest`` file is
    reported and ignored.

    Args:
        run_dir: the run folder (``train.out_dir``) or its ``checkpoints/`` folder.
        log: where the one-line warnings go (default: stderr).
        checksums: hash every file (otherwise only structure and sizes are checked).

    Returns:
        ``(checkpoint_folder, [(rejected_path, reason), ...])``.

    Raises:
        CheckpointError: when the folder is missing or no checkpoint in it verifies.
    """
    log = _stderr if log is None else log
    p = Path(run_dir)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' not found; pass a run folder (train.out_dir) or a checkpoint folder")
    root = _ckpt_root(p)
    rejected: list[tuple[Path, str]] = []
    problem = _latest_problem(root)
    if problem:
        rejected.append((root / LATEST, problem))
        log(f"warning: ignoring {problem}; picking the newest checkpoint that verifies")
    folders = checkpoint_folders(root)
    for ckpt in reversed(folders):
        try:
            verify_checkpoint(ckpt, checksums=checksums)
        except CheckpointError as e:
            rejected.append((ckpt, str(e)))
            log(f"warning: skipping checkpoint '{ckpt}': {e} (left in place for inspection)")
            continue
        return ckpt, rejected
    if not folders:
        raise CheckpointError(f"no checkpoint in '{p}'; train first (attnlab train ...) or pass a checkpoint folder")
    raise CheckpointError(
        f"no usable checkpoint in '{root}': all {len(folders)} are damaged (newest: {rejected[-len(folders)][1]}); "
        "they are left in place: restore one from a backup, or start again with a new train.out_dir"
    )


def find_checkpoint(path: str | Path) -> Path:
    """Resolve a run folder, its ``checkpoints/`` folder or a checkpoint folder to a checkpoint folder.

    A run folder resolves to its newest checkpoint that looks complete (meta.json, files and sizes;
    checksums are left to :func:`load_checkpoint`); unfinished temporary folders are ignored.

    Raises:
        CheckpointError: when nothing usable is there.
    """
    p = Path(path)
    if p.exists() and _is_checkpoint_folder(p):
        return p
    return latest_good_checkpoint(p, log=lambda s: None, checksums=False)[0]


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds checkpoints (complete or damaged), i.e. a run that should not be overwritten."""
    root = Path(run_dir) / "checkpoints"
    return (root / LATEST).exists() or bool(checkpoint_folders(root))


# ---------------------------------------------------------------------------
# Saving.


def _remove_stale(root: Path, log: Log) -> None:
    """Remove what a killed save left behind (temporary folders and files of processes that are gone)."""
    for p in root.iterdir():
        m = _STALE.fullmatch(p.name)
        if m is None or (int(m.group(2)) != os.getpid() and _pid_alive(int(m.group(2)))):
            continue
        kind, name = m.group(1)[:4], m.group(1)[4:]
        if kind == "old-" and not (root / name).exists():
            os.replace(p, root / name)  # killed between moving the old copy aside and renaming the new one in
            log(f"restored checkpoint '{root / name}' left aside by an interrupted save")
        elif p.is_dir():
            shutil.rmtree(p)
            if kind == "tmp-":
                log(f"removed '{p}', an unfinished checkpoint left by an interrupted save")
        else:
            p.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def _quarantine(path: Path, log: Log, reason: str) -> None:
    """Move a damaged checkpoint out of the way (never delete it)."""
    dest, n = path.with_name(f"corrupt-{path.name}"), 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"corrupt-{path.name}-{n}")
    os.replace(path, dest)
    log(f"warning: moved damaged checkpoint '{path}' to '{dest}' ({reason})")


def _fsync_dir(path: Path) -> None:
    """Make renames inside the folder ``path`` durable."""
    fsync_file(path)


def _rotate(root: Path, final: Path, keep_last: int) -> None:
    """Keep ``final`` and the ``keep_last - 1`` newest older checkpoints that look complete.

    Damaged checkpoints are neither counted nor deleted, and checkpoints newer than ``final``
    (left from before a fallback) are not touched.
    """
    step = _step_of(final) or 0
    good = []
    for p in checkpoint_folders(root):
        if (_step_of(p) or 0) < step:
            try:
                verify_checkpoint(p, checksums=False)
                good.append(p)
            except CheckpointError:
                pass
    for old in good[: max(len(good) - (keep_last - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    config: Config,
    *,
    state: dict[str, Any],
    tokenizer_file: Optional[Path] = None,
    keep_last: int = 3,
    log: Optional[Log] = None,
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
    log = _stderr if log is None else log
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step_{step:07d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    doing = f"could not save checkpoint {name} in"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _remove_stale(ckpt_root, log)
        tmp.mkdir()
        _write_file(tmp / WEIGHTS, safetensors_bytes(weights_state_dict(model), metadata={"format": "pt"}))
        _write_file(tmp / STATE, lambda f: torch.save({**state, "step": step}, f))
        config.save(tmp / CONFIG)
        fsync_file(tmp / CONFIG)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER)
            fsync_file(tmp / TOKENIZER)
        files = sorted(tmp.iterdir())
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": step,
                                "sha256": {p.name: sha256_file(p) for p in files},
                                "bytes": {p.name: p.stat().st_size for p in files}}
        meta["meta_sha256"] = _meta_digest(meta)
        _write_file(tmp / META, json.dumps(meta, indent=1).encode())
        _replace_folder(tmp, final, log)
        _fsync_dir(ckpt_root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _io_error(e, doing, ckpt_root, _intact(ckpt_root)) from e
        raise
    try:
        atomic_write_text(ckpt_root / LATEST, name + "\n")
    except OSError as e:
        raise _io_error(e, f"saved {name} but could not update 'latest' in", ckpt_root,
                        " (resume still finds the checkpoint)") from e
    if keep_last > 0:
        _rotate(ckpt_root, final, keep_last)
    return final


def _intact(root: Path) -> str:
    """``"; the previous checkpoint step_N is intact"`` for the one a resume would use, or ``""``."""
    try:
        previous = latest_good_checkpoint(root, log=lambda s: None, checksums=False)[0]
    except (CheckpointError, OSError):
        return ""
    return f"; the previous checkpoint {previous.name} is intact"


def _replace_folder(tmp: Path, final: Path, log: Log) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is replaced when sound, set aside when damaged."""
    if final.exists():  # re-saving a step (Ctrl-C right after a periodic save, or after a fallback)
        try:
            verify_checkpoint(final)
        except CheckpointError as e:
            _quarantine(final, log, str(e))
        else:
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(tmp, final)


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
    def tokenizer_file(self) -> Optional[Path]:
        p = self.path / TOKENIZER
        return p if p.exists() else None

    def training_state(self) -> dict[str, Any]:
        """Optimizer/RNG state saved for resuming (safe load: ``weights_only=True``)."""
        try:
            return torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise CheckpointError(f"'{self.path / STATE}' cannot be read ({type(e).__name__}); the file is corrupt") from None


def load_checkpoint(path: str | Path, verify: bool = True, log: Optional[Log] = None) -> Checkpoint:
    """Load a checkpoint's config and weights, verifying checksums.

    A run folder (or its ``checkpoints/`` folder) loads the newest checkpoint that verifies:
    newer damaged ones are skipped with one warning line each on ``log`` (default stderr) and
    left on disk. This is what both ``--resume`` and inference (generate, eval, serve) get.
    An explicit checkpoint folder is loaded as named, or fails: no silent substitution.

    Args:
        path: run folder, ``checkpoints/`` folder or checkpoint folder.
        verify: check every file against the sha256 recorded at save time.
        log: where warnings about skipped checkpoints go.

    Raises:
        CheckpointError: missing files, checksum mismatch, unreadable weights or config, or no
            checkpoint of a run folder verifies.
    """
    p = Path(path)
    if p.exists() and _is_checkpoint_folder(p):
        try:
            verify_checkpoint(p, checksums=verify)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; load an earlier checkpoint, or pass the run folder to use the newest good one") from None
        ckpt = p
    else:
        ckpt = latest_good_checkpoint(p, log, checksums=verify)[0]
    meta = json.loads((ckpt / META).read_text())
    try:
        weights = load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{ckpt / WEIGHTS}' cannot be read ({str(e).splitlines()[0]}); the file is corrupt") from None
    try:
        config = from_dict(Config, yaml.safe_load((ckpt / CONFIG).read_text()))
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"'{ckpt / CONFIG}' cannot be read ({type(e).__name__})") from None
    return Checkpoint(path=ckpt, config=config, weights=weights, step=int(meta.get("step", 0)))


def load_model(
    path: str | Path, device: str | torch.device = "cpu", log: Optional[Log] = None
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
