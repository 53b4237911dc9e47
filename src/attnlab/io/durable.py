"""Durable files and folders: what attnlab keeps on disk is complete and verified, or not there at all.

Every folder attnlab keeps (training checkpoints, fine-tuned models, LoRA adapters, the
tokenized-data cache) is written the same way:

1. :func:`stage` makes a temporary folder beside the final one (``.tmp-NAME-PID``): readers
   ignore it, and the next writer removes those left by processes that are gone;
2. files are written through :func:`write_file` (fsynced; a full disk surfaces as ``OSError(ENOSPC)``);
3. :func:`digests` flushes every file and records its sha256 and size for the folder's manifest;
4. :func:`replace_folder` renames it into place (an existing folder is moved aside first and
   removed only afterwards) and flushes the parent folder's entries, so the rename survives a crash.

:func:`write_folder` runs the four steps with a ``checksums.json`` manifest (or one the caller
writes, as checkpoints and adapters do), :func:`verify` / :func:`check_files` check a folder
against its manifest, and :func:`atomic_write_text` replaces one small file.

Why hand-written rather than a library: it is a few calls on :mod:`os`, the on-disk formats
must stay readable by earlier attnlab versions, and each failure has to become one line that
names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from attnlab.errors import CheckpointError

MANIFEST = "checksums.json"
"""The default manifest: ``{relative file name: sha256}`` of every other file in the folder."""

Log = Callable[[str], None]
WriteManifest = Callable[[Path, dict[str, str], dict[str, int]], None]
"""``(folder, sha256 by name, bytes by name)``: writes a folder's own manifest format."""

__all__ = [
    "MANIFEST", "Log", "WriteManifest", "atomic_write_text", "check_files", "digests", "discard_on_error",
    "fsync_file", "pid_alive", "read_json", "remove_stale", "replace_folder", "sha256_file", "stage", "temp_path",
    "verify", "write_file", "write_folder",
]


# ---------------------------------------------------------------------------
# Files.


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


def write_file(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
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
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half
    (a temp file beside it, fsynced, renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Folders: stage, fill, record, rename into place.


def temp_path(final: Path, kind: str = "tmp") -> Path:
    """The hidden sibling ``.KIND-NAME-PID`` of ``final`` this process uses (``kind``: ``tmp`` or ``old``)."""
    return final.with_name(f".{kind}-{final.name}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def remove_stale(final: Path) -> None:
    """Clean up after writers of ``final`` that were killed (their process is gone).

    Their ``.tmp-NAME-PID`` folders are removed; an ``.old-NAME-PID`` copy (killed between moving
    the old folder aside and renaming the new one in) is put back when ``final`` is missing.
    """
    pattern = re.compile(rf"\.(tmp|old)-{re.escape(final.name)}-(\d+)")
    if not final.parent.is_dir():
        return
    for p in final.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m is None or int(m.group(2)) == os.getpid() or pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not final.exists():
            os.replace(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)


def stage(final: str | Path) -> Path:
    """Create the empty temporary folder that :func:`replace_folder` later renames to ``final``.

    Creates ``final``'s parent as needed and cleans up after killed writers (:func:`remove_stale`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


@contextmanager
def discard_on_error(tmp: Path) -> Iterator[None]:
    """Remove the staged folder ``tmp`` when the block fails, then re-raise."""
    try:
        yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def digests(folder: Path, *, hash_files: bool = True) -> tuple[dict[str, str], dict[str, int]]:
    """Flush every file under ``folder`` to disk; their sha256 and sizes by relative POSIX name.

    Args:
        folder: the (staged) folder; files in subfolders are named ``sub/file``.
        hash_files: compute the sha256 (otherwise the first dict is empty: flush only).
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    sums: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for p in files:
        fsync_file(p)
        name = p.relative_to(folder).as_posix()
        if hash_files:
            sums[name] = sha256_file(p)
        sizes[name] = p.stat().st_size
    return sums, sizes


def replace_folder(tmp: Path, final: Path) -> None:
    """Rename the staged ``tmp`` to ``final`` and make the rename durable.

    An existing ``final`` is moved aside (``.old-NAME-PID``) first and removed after: a crash in
    between leaves the old copy, which the next :func:`stage` restores.
    """
    if final.exists():
        old = temp_path(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_file(final.parent)


def write_folder(
    final: str | Path, fill: Callable[[Path], None], *, manifest: str | WriteManifest | None = MANIFEST
) -> Path:
    """Write the folder ``final`` atomically: staged, filled, fsynced, recorded, renamed into place.

    Args:
        final: the folder to (re)place.
        fill: writes the files into the staged folder it is given.
        manifest: a file name for a ``{name: sha256}`` JSON manifest, a function that writes the
            folder's own manifest from the digests, or None (files are only flushed).

    Returns:
        The folder. On any failure the staged folder is removed and an existing ``final`` is intact.
    """
    final = Path(final)
    tmp = stage(final)
    with discard_on_error(tmp):
        fill(tmp)
        sums, sizes = digests(tmp, hash_files=manifest is not None)
        if callable(manifest):
            manifest(tmp, sums, sizes)
        elif manifest is not None:
            write_file(tmp / manifest, json.dumps(sums, indent=1).encode())
        replace_folder(tmp, final)
    return final


# ---------------------------------------------------------------------------
# Verification.


def read_json(path: Path) -> Any:
    """The JSON value in ``path``, or None when it is not UTF-8 JSON (a damaged manifest)."""
    try:
        return json.loads(path.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def check_files(
    folder: Path,
    sha256: Mapping[str, str],
    sizes: Mapping[str, int] | None = None,
    *,
    required: tuple[str, ...] = (),
    checksums: bool = True,
    kind: str = "the folder",
    fix: str = "",
) -> None:
    """Check that every file a manifest lists (and every ``required`` one) is there, of its size and sha256.

    Args:
        folder: the folder the names are relative to.
        sha256: sha256 by relative name.
        sizes: bytes by relative name (checked before hashing: fast).
        required: names that must exist even when the manifest does not list them.
        checksums: also hash every file (otherwise only presence and sizes).
        kind: how the messages name the folder (``"the checkpoint"``).
        fix: appended to every message (``"; save the adapter again"``).

    Raises:
        CheckpointError: one line naming the first problem found.
    """
    sizes = sizes or {}
    for name in [*[r for r in required if r not in sha256], *sha256]:
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"'{f}' is missing from {kind}; it is incomplete{fix}")
        size = f.stat().st_size
        if name in sizes and size != sizes[name]:
            what = "truncated" if size < sizes[name] else "too long"
            raise CheckpointError(f"'{f}' is corrupt ({what}: {size} bytes instead of {sizes[name]}){fix}")
        if checksums and name in sha256 and sha256_file(f) != sha256[name]:
            raise CheckpointError(f"'{f}' is corrupt (checksum mismatch){fix}")


def verify(folder: str | Path, manifest: str = MANIFEST, *, fix: str = "") -> dict[str, str]:
    """Check a folder written by :func:`write_folder` against its ``{name: sha256}`` manifest.

    A folder without the manifest (written before attnlab kept one) passes unchecked.

    Args:
        folder: the folder.
        manifest: the manifest's file name.
        fix: appended to the message (``"; re-run the fine-tuning"``).

    Returns:
        The manifest (empty when there is none).

    Raises:
        CheckpointError: an unreadable manifest, or a listed file missing or changed.
    """
    folder = Path(folder)
    path = folder / manifest
    if not path.is_file():
        return {}
    sums = read_json(path)
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise CheckpointError(f"'{path}' is corrupt (not a JSON map of file name to sha256){fix}")
    for name, digest in sums.items():
        if not (folder / name).is_file() or sha256_file(folder / name) != digest:
            raise CheckpointError(f"'{folder / name}' is missing or corrupt (checksum mismatch){fix}")
    return sums
