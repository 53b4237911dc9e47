"""Token shards: how a tokenized split lies on disk, written append-only and resumable.

A prepared split is a list of raw token files (``train-00000.bin``, ``train-00001.bin``, ...;
``uint16`` or ``uint32``) and an index, the file name and token count of each in order, kept in
the folder's ``meta.json`` under ``"shards"``. Concatenated, the shards are the split's token
stream: documents joined by ``<|endoftext|>``.

:class:`ShardWriter` appends token arrays to the open shard of each split and *commits* once
``shard_tokens`` tokens have come in since the last commit, at a document boundary: the open
shards are flushed and closed, then ``progress.json`` records the shards so far, how many
documents they hold and the split counters (written atomically, the folder's entries flushed:
:mod:`attnlab.io.durable`). A preparation killed at any moment restarts from its last commit
(:meth:`ShardWriter.open` reads ``progress.json``), and since commit points depend only on the
token stream, a resumed preparation ends with the same files, byte for byte, as one that never
stopped.

:class:`TokenShards` reads a split back as one 1-D array-like sequence over a memmap per shard;
a window that crosses a shard boundary is stitched, so batches do not depend on the shard layout.

Hand-written rather than an Arrow/``datasets`` cache: a token stream is a flat integer array,
which raw files memory-map with no copy and no per-row overhead, and resuming needs commit
points tied to document boundaries, which those caches do not offer.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from attnlab.io import durable

PROGRESS = "progress.json"
SPLITS = ("train", "val")


def shard_name(split: str, k: int) -> str:
    """File name of the ``k``-th shard of ``split``."""
    return f"{split}-{k:05d}.bin"


@dataclass
class SplitProgress:
    """What one split holds so far: its committed shards and counters."""

    shards: list[dict[str, Any]] = field(default_factory=list)  # [{"file": str, "n_tokens": int}]
    n_tokens: int = 0
    n_bytes: int = 0  # UTF-8 bytes of the text behind the tokens
    n_documents: int = 0


class ShardWriter:
    """Appends the tokens of each split to shard files, committing every ``shard_tokens`` tokens.

    Args:
        folder: the (work) folder the shards and ``progress.json`` go to.
        dtype: token dtype of the files.
        shard_tokens: tokens (both splits together) after which the open shards are committed.
        key: identifies the inputs (the cache fingerprint); a ``progress.json`` with another
            key is not resumed.
    """

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int, key: str) -> None:
        self.folder, self.dtype, self.shard_tokens, self.key = Path(folder), np.dtype(dtype), shard_tokens, key
        self.splits = {s: SplitProgress() for s in SPLITS}
        self.docs_done = 0  # documents wholly in committed shards
        self.bytes_done = 0  # text bytes of those documents
        self.last_name = ""  # name of the last of them
        self._open: dict[str, BinaryIO] = {}
        self._pending = {s: 0 for s in SPLITS}  # tokens in the open shard of each split
        self._pending_counts = {s: [0, 0] for s in SPLITS}  # bytes, documents not yet committed
        self._boundary: tuple[int, int, str] = (0, 0, "")  # the last document boundary seen

    # ------------------------------------------------------------------ resume

    @classmethod
    def open(cls, folder: Path, dtype: np.dtype, shard_tokens: int, key: str) -> ShardWriter:
        """A writer that continues the committed work in ``folder``, or starts afresh.

        Resumes when ``progress.json`` names the same ``key`` and dtype and every shard it lists
        is there at its size (the shard size recorded there wins over ``shard_tokens``, so the
        layout stays that of the first attempt); otherwise removes any shard files and starts over.
        """
        w = cls(folder, dtype, shard_tokens, key)
        state = durable.read_json(w.folder / PROGRESS) if (w.folder / PROGRESS).is_file() else None
        if isinstance(state, dict) and w._restore(state):
            w._remove_strays()
            return w
        w = cls(folder, dtype, shard_tokens, key)
        w._remove_strays()
        (w.folder / PROGRESS).unlink(missing_ok=True)
        return w

    def _restore(self, state: dict[str, Any]) -> bool:
        try:
            if state["key"] != self.key or state["dtype"] != self.dtype.name:
                return False
            splits = {s: SplitProgress(**state["splits"][s]) for s in SPLITS}
            for sp in splits.values():
                for sh in sp.shards:
                    if (self.folder / sh["file"]).stat().st_size != sh["n_tokens"] * self.dtype.itemsize:
                        return False
            self.splits, self.shard_tokens = splits, int(state["shard_tokens"])
            self.docs_done, self.bytes_done = int(state["docs_done"]), int(state["bytes_done"])
            self.last_name = str(state["last_name"])
            self._boundary = (self.docs_done, self.bytes_done, self.last_name)
            return True
        except (OSError, KeyError, TypeError, ValueError):
            return False

    def _remove_strays(self) -> None:
        """Delete shard files the committed state does not list (written after the last commit)."""
        keep = {sh["file"] for sp in self.splits.values() for sh in sp.shards}
        for split in SPLITS:
            for p in self.folder.glob(f"{split}-*.bin"):
                if p.name not in keep:
                    p.unlink()

    # ------------------------------------------------------------------ writing

    def append(self, split: str, tokens: np.ndarray, n_bytes: int, n_documents: int) -> None:
        """Append ``tokens`` (1-D) to ``split``'s open shard; ``n_bytes`` / ``n_documents`` of text behind them."""
        f = self._open.get(split)
        if f is None:
            f = self._open[split] = open(self.folder / shard_name(split, len(self.splits[split].shards)), "wb")
        tokens.astype(self.dtype, copy=False).tofile(f)
        self._pending[split] += len(tokens)
        self._pending_counts[split][0] += n_bytes
        self._pending_counts[split][1] += n_documents

    def documents_done(self, docs_done: int, bytes_done: int, last_name: str) -> None:
        """Mark a document boundary (``docs_done`` documents written); commit if a shard is full."""
        self._boundary = (docs_done, bytes_done, last_name)
        if sum(self._pending.values()) >= self.shard_tokens:
            self.commit()

    def commit(self) -> None:
        """Close the open shards and durably record everything written up to the last document boundary."""
        for split, f in self._open.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            sp = self.splits[split]
            if self._pending[split]:
                sp.shards.append({"file": shard_name(split, len(sp.shards)), "n_tokens": self._pending[split]})
            else:
                (self.folder / shard_name(split, len(sp.shards))).unlink()
            sp.n_tokens += self._pending[split]
            sp.n_bytes += self._pending_counts[split][0]
            sp.n_documents += self._pending_counts[split][1]
        self._open.clear()
        self._pending = {s: 0 for s in SPLITS}
        self._pending_counts = {s: [0, 0] for s in SPLITS}
        self.docs_done, self.bytes_done, self.last_name = self._boundary
        state = {
            "key": self.key, "dtype": self.dtype.name, "shard_tokens": self.shard_tokens,
            "docs_done": self.docs_done, "bytes_done": self.bytes_done, "last_name": self.last_name,
            "splits": {s: asdict(sp) for s, sp in self.splits.items()},
        }
        durable.fsync_file(self.folder)  # the new shard files' entries before the record naming them
        durable.atomic_write_text(self.folder / PROGRESS, json.dumps(state, indent=1) + "\n")
        durable.fsync_file(self.folder)

    def close(self) -> None:
        """Close open files without committing (on an error: the next run redoes that work)."""
        for f in self._open.values():
            f.close()
        self._open.clear()

    def index(self) -> dict[str, list[dict[str, Any]]]:
        """The committed shards of each split: ``{"train": [{"file", "n_tokens"}, ...], "val": [...]}``."""
        return {s: list(sp.shards) for s, sp in self.splits.items()}


# ---------------------------------------------------------------------------
# Reading


class TokenShards:
    """A split's tokens as one read-only 1-D sequence over the memmaps of its shards.

    Indexing with an integer, a slice or an integer array (any shape) returns what indexing
    the concatenated array would; ``np.asarray`` concatenates (a copy: for small splits).

    Args:
        arrays: the shards' token arrays, in order (empty ones are dropped).
    """

    def __init__(self, arrays: list[np.ndarray], dtype: np.dtype) -> None:
        self.shards = [a for a in arrays if len(a)]
        self.dtype = np.dtype(dtype)
        self._starts = np.cumsum([0] + [len(a) for a in self.shards], dtype=np.int64)  # (S+1,)

    @classmethod
    def open(cls, folder: Path, index: list[dict[str, Any]], dtype: np.dtype) -> TokenShards:
        """Memory-map the shards an index lists (``[{"file", "n_tokens"}, ...]``) from ``folder``."""
        dtype = np.dtype(dtype)
        return cls([np.memmap(folder / sh["file"], dtype=dtype, mode="r", shape=(int(sh["n_tokens"]),))
                    for sh in index if int(sh["n_tokens"])], dtype)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    ndim = 1

    def __getitem__(self, key: Any) -> Any:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} tokens")
            s = int(np.searchsorted(self._starts, i, side="right")) - 1
            return self.shards[s][i - self._starts[s]]
        if isinstance(key, slice):
            return self[np.arange(n, dtype=np.int64)[key]] if key.step not in (None, 1) else self._range(key, n)
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"TokenShards takes integers, slices or integer arrays, not {idx.dtype}")
        if len(self.shards) == 1:
            return np.asarray(self.shards[0][idx])
        flat = idx.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"index out of range for {n} tokens")
        which = np.searchsorted(self._starts, flat, side="right") - 1  # shard of each index
        out = np.empty(flat.shape, dtype=self.dtype)
        for s in np.unique(which):
            m = which == s
            out[m] = self.shards[s][flat[m] - self._starts[s]]
        return out.reshape(idx.shape)

    def _range(self, key: slice, n: int) -> np.ndarray:
        a, b, _ = key.indices(n)
        if b <= a:
            return np.zeros(0, dtype=self.dtype)
        parts = []
        for s, arr in enumerate(self.shards):
            lo, hi = max(a - self._starts[s], 0), min(b - self._starts[s], len(arr))
            if lo < hi:
                parts.append(np.asarray(arr[lo:hi]))
        return np.concatenate(parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:] if len(self) else np.zeros(0, dtype=self.dtype)
        return out.astype(dtype) if dtype is not None else out

    def tolist(self) -> list[int]:
        """The tokens as a Python list (a copy)."""
        return np.asarray(self).tolist()

    def __iter__(self) -> Iterator[Any]:
        for arr in self.shards:
            yield from arr

    def __repr__(self) -> str:
        return f"TokenShards({len(self)} tokens in {len(self.shards)} shards, {self.dtype.name})"


# ---------------------------------------------------------------------------
# One writer per folder


@contextmanager
def exclusive(lock_path: Path, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the block.

    Two processes preparing the same folder take turns instead of writing the same shards; the
    lock is released when the block ends or the process dies (``flock``), killed or not.
    ``waiting`` is printed to stderr when another process holds it.
    """
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
