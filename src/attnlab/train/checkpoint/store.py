"""A run's ``checkpoints/`` folder: committing checkpoints so that no fault loses work, and finding them again.

A save writes into a temporary folder (:func:`stage_checkpoint`) that :func:`commit_checkpoint`
renames into place only when every file is flushed to disk; ``latest`` is replaced atomically
afterwards: a run killed at any moment leaves the previous checkpoint intact. Temporary folders
left by a killed save are ignored by readers and removed by the next save.

Reading a *run folder* takes the newest checkpoint that verifies (checksums, sizes, format
version) and reports every newer one it skips on one line each; a damaged checkpoint is never
deleted automatically (it stays for inspection, and rotation does not count it). Write failures
(disk full, read-only folder) raise :class:`CheckpointError` with one line naming the folder and
the fix, after removing the half-written temporary folder.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from attnlab.errors import CheckpointError
from attnlab.io import durable
from attnlab.train.checkpoint.files import (
    LATEST,
    META,
    STEP_NAME,
    WEIGHTS,
    Log,
    atomic_write_text,
    checkpoint_name,
    seal_checkpoint,
    step_of,
    verify_checkpoint,
    write_file,
)

_STALE = re.compile(r"\.(tmp-step_\d+|old-step_\d+|latest\.tmp|write-test)-(\d+)")  # left by a killed save


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------
# Write failures and the writability check.


def _io_error(e: OSError, doing: str, where: Path, after: str = "") -> CheckpointError:
    """One line for a failed write: what, where, why (by errno) and the fix."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full"
        fix = f"free space on the disk holding '{where}' (df -h) or set train.out_dir to another disk"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why, fix = "the folder is not writable", "set train.out_dir to a writable folder (or fix its permissions)"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        why = f"a file is in the way of a folder ('{e.filename}')"
        fix = "remove that file or set train.out_dir elsewhere"
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
        write_file(probe, b"attnlab")
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
# Finding checkpoints.


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """The ``step_N`` folders of a run (or of its ``checkpoints/`` folder), oldest first.

    Temporary folders of unfinished saves and quarantined ``corrupt-*`` folders are not listed;
    damaged ``step_N`` folders are (use :func:`verify_checkpoint` to tell).
    """
    root = _ckpt_root(Path(run_dir))
    found = [p for p in root.iterdir() if step_of(p) is not None and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: step_of(p) or 0)


def _ckpt_root(p: Path) -> Path:
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def is_checkpoint_folder(p: Path) -> bool:
    """Whether ``p`` is one checkpoint folder (complete or not), rather than a run or ``checkpoints/`` folder."""
    return (p / META).exists() or (p / WEIGHTS).exists() or (step_of(p) is not None and p.is_dir())


def _latest_problem(root: Path) -> str | None:
    """Why ``root/latest`` cannot be trusted, or None when it names an existing checkpoint (or is absent)."""
    latest = root / LATEST
    if not latest.exists():
        return None
    try:
        name = latest.read_bytes().decode().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if STEP_NAME.fullmatch(name) is None:
        return f"'{latest}' is corrupt (it does not name a checkpoint folder)"
    if not (root / name).is_dir():
        return f"'{latest}' names '{name}', which is missing"
    return None


def latest_good_checkpoint(
    run_dir: str | Path, log: Log | None = None, *, checksums: bool = True
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
    checksums are left to ``load_checkpoint``); unfinished temporary folders are ignored.

    Raises:
        CheckpointError: when nothing usable is there.
    """
    p = Path(path)
    if p.exists() and is_checkpoint_folder(p):
        return p
    return latest_good_checkpoint(p, log=lambda s: None, checksums=False)[0]


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds checkpoints (complete or damaged), i.e. a run that should not be overwritten."""
    root = Path(run_dir) / "checkpoints"
    return (root / LATEST).exists() or bool(checkpoint_folders(root))


# ---------------------------------------------------------------------------
# Saving: stage, write, commit.


def stage_checkpoint(run_dir: str | Path, step: int, log: Log | None = None) -> Path:
    """Create the temporary folder a checkpoint of ``step`` is written into, after cleaning up killed saves.

    The folder (``RUN/checkpoints/.tmp-step_N-PID``) is ignored by readers; fill it, then
    call :func:`commit_checkpoint`.

    Raises:
        CheckpointError: the folder cannot be created (read-only, disk full, ...).
    """
    log = _stderr if log is None else log
    root = Path(run_dir) / "checkpoints"
    tmp = durable.temp_path(root / checkpoint_name(step))
    with _discard_on_error(tmp, step):
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root, log)
        tmp.mkdir()
    return tmp


def commit_checkpoint(
    tmp: Path,
    step: int,
    *,
    write: Callable[[Path], None] | None = None,
    meta: dict | None = None,
    keep_last: int = 3,
    log: Log | None = None,
) -> Path:
    """Finish a staged checkpoint and publish it: the one place a checkpoint becomes visible.

    In order: ``write(tmp)`` adds the remaining files; every file is flushed and recorded in
    ``meta.json``; ``tmp`` is renamed to ``step_N`` (an existing sound ``step_N`` is replaced, a
    damaged one is moved aside to ``corrupt-step_N``, never deleted); ``latest`` is pointed at it;
    older checkpoints beyond ``keep_last`` are removed.

    Args:
        tmp: the folder from :func:`stage_checkpoint` (on this or, for a collective save, rank 0's process).
        step: optimizer steps completed.
        write: fills ``tmp``; run here so that its failures are handled as the commit's.
        meta: extra top-level ``meta.json`` entries (e.g. ``{"world_size": 2}``).
        keep_last: how many complete checkpoints to keep (0 keeps all); damaged ones are not
            counted and never deleted, newer ones (left from before a fallback) not touched.
        log: where one-line notes go (quarantine of a damaged folder); default stderr.

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: a write failed (disk full, read-only folder, ...): ``tmp`` is removed and
            earlier checkpoints are intact; or the checkpoint was saved but ``latest`` not updated.
    """
    log = _stderr if log is None else log
    root, name = tmp.parent, checkpoint_name(step)
    final = root / name
    with _discard_on_error(tmp, step):
        if write is not None:
            write(tmp)
        seal_checkpoint(tmp, step, meta)
        _replace_folder(tmp, final, log)
    try:
        atomic_write_text(root / LATEST, name + "\n")
    except OSError as e:
        raise _io_error(e, f"saved {name} but could not update 'latest' in", root,
                        " (resume still finds the checkpoint)") from e
    if keep_last > 0:
        _rotate(root, final, keep_last)
    return final


@contextmanager
def _discard_on_error(tmp: Path, step: int) -> Iterator[None]:
    """On any failure remove ``tmp``; an OSError becomes one line naming the cause, the fix and the checkpoint
    still intact."""
    try:
        yield
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            root = tmp.parent
            raise _io_error(e, f"could not save checkpoint {checkpoint_name(step)} in", root, _intact(root)) from e
        raise


def _intact(root: Path) -> str:
    """``"; the previous checkpoint step_N is intact"`` for the one a resume would use, or ``""``."""
    try:
        previous = latest_good_checkpoint(root, log=lambda s: None, checksums=False)[0]
    except (CheckpointError, OSError):
        return ""
    return f"; the previous checkpoint {previous.name} is intact"


def _remove_stale(root: Path, log: Log) -> None:
    """Remove what a killed save left behind (temporary folders and files of processes that are gone)."""
    for p in root.iterdir():
        m = _STALE.fullmatch(p.name)
        if m is None or (int(m.group(2)) != os.getpid() and durable.pid_alive(int(m.group(2)))):
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


def _replace_folder(tmp: Path, final: Path, log: Log) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is replaced when sound, quarantined when damaged."""
    if final.exists():  # re-saving a step (Ctrl-C right after a periodic save, or after a fallback)
        try:
            verify_checkpoint(final)
        except CheckpointError as e:
            _quarantine(final, log, str(e))
    durable.replace_folder(tmp, final)  # a sound old copy is set aside, then removed; the rename is fsynced


def _quarantine(path: Path, log: Log, reason: str) -> None:
    """Move a damaged checkpoint out of the way (never delete it)."""
    dest, n = path.with_name(f"corrupt-{path.name}"), 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"corrupt-{path.name}-{n}")
    os.replace(path, dest)
    log(f"warning: moved damaged checkpoint '{path}' to '{dest}' ({reason})")


def _rotate(root: Path, final: Path, keep_last: int) -> None:
    """Keep ``final`` and the ``keep_last - 1`` newest older checkpoints that look complete.

    Damaged checkpoints are neither counted nor deleted, and checkpoints newer than ``final``
    (left from before a fallback) are not touched.
    """
    step = step_of(final) or 0
    good = []
    for p in checkpoint_folders(root):
        if (step_of(p) or 0) < step:
            try:
                verify_checkpoint(p, checksums=False)
                good.append(p)
            except CheckpointError:
                pass
    for old in good[: max(len(good) - (keep_last - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
