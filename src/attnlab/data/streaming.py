"""The streaming pass of a preparation: documents in, token arrays out, in bounded memory.

:func:`work_items` cuts the document stream (:func:`attnlab.data.corpus.iter_documents`) into
work items of about ``BATCH_CHARS`` characters: each document's training and validation parts
(the cut is the caller's), tagged with their split and whether an ``<|endoftext|>`` goes before
them. :func:`encode_items` encodes the items with :class:`Encoder` (the tokenizers batch
encoder), in this process (``num_proc`` 1) or in ``num_proc`` worker processes, and yields the
results in order with at most ``2 * num_proc`` items in flight: memory stays a few batches
whatever the corpus size.

:func:`source_signature` fingerprints a source cheaply (path, size and modification time of
each file, as ``make`` and ``rsync`` decide what changed), and :func:`text_bytes_estimate`
sizes the progress bar.

Hand-written rather than ``datasets.Dataset.map``: that copies the corpus into an Arrow cache
first and cannot resume mid-way; a process pool over batches of text is all that is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.data.corpus import BUILTIN_PREFIX, iter_documents, source_files
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError

BATCH_CHARS = 1 << 18  # characters per work item (one encode_batch call)
CHUNK_CHARS = 1 << 14  # characters per piece inside an item (pieces encode independently)

Segment = tuple[int, bool, str]  # (split index 0/1, an end-of-text token before it, text)
Encoded = tuple[list[np.ndarray], list[int]]  # tokens and UTF-8 bytes of each split


# ---------------------------------------------------------------------------
# Sources: a cheap fingerprint and the progress bar's total


def source_signature(source: str, glob: str, text_field: str) -> list[list[Any]]:
    """What identifies a source's contents without reading it: ``[path, size, mtime_ns]`` per file.

    A builtin corpus is small and hashed by content instead. Any write to a file changes its
    size or modification time, so a changed file gives another signature (the quick check of
    ``make``, ``rsync`` and git); a file rewritten to the same size within the same clock tick
    would not, which is the price of not reading gigabytes to find a cache hit.

    Raises:
        AttnlabError: as :func:`attnlab.data.corpus.source_files` (missing path, unknown extension).
    """
    if source.startswith(BUILTIN_PREFIX):
        h = hashlib.sha256()
        for name, text in iter_documents(source, glob, text_field):
            h.update(f"{len(name)}:{name}{len(text)}:".encode())
            h.update(text.encode("utf-8", errors="surrogatepass"))
        return [[source, h.hexdigest()]]
    out = []
    for path, _name, _fmt in source_files(source, glob):
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:  # a datasets folder: all its files
            if f.is_file():
                st = f.stat()
                out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def text_bytes_estimate(source: str, glob: str, text_field: str) -> int | None:
    """About how many UTF-8 bytes of text a source holds (None for a builtin corpus).

    The file sizes, with ``.gz`` files at their recorded uncompressed size, ``.zst`` at their
    frame's content size and Parquet at the uncompressed size of the text column.
    """
    if source.startswith(BUILTIN_PREFIX):
        return None
    total = 0
    for path, _name, fmt in source_files(source, glob):
        try:
            total += _file_text_bytes(path, fmt, text_field)
        except Exception:  # noqa: BLE001 - an estimate only: fall back to the size on disk
            files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
            total += sum(f.stat().st_size for f in files)
    return total


def _file_text_bytes(path: Path, fmt: str, text_field: str) -> int:
    if fmt == "datasets":
        return sum(f.stat().st_size for f in path.rglob("*.arrow"))
    name = path.name.lower()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        md = pq.ParquetFile(path).metadata
        cols = [j for j in range(md.num_columns) if md.schema.column(j).path.split(".")[0] == text_field]
        return sum(md.row_group(i).column(j).total_uncompressed_size for i in range(md.num_row_groups) for j in cols)
    if name.endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")  # uncompressed size mod 2**32
        size = path.stat().st_size
        while size >= 1 << 31 and isize < size:  # a large file whose size wrapped around
            isize += 1 << 32
        return isize
    if name.endswith(".zst"):
        import zstandard

        with open(path, "rb") as f:
            n = zstandard.get_frame_parameters(f.read(18)).content_size
        return n if n > 0 else path.stat().st_size
    return path.stat().st_size


# ---------------------------------------------------------------------------
# Work items


@dataclass
class WorkItem:
    """A batch of text to encode, and where the document stream stands after it.

    Attributes:
        segments: ``(split, eos_before, text)`` parts in stream order (split 0: train, 1: val).
        n_documents: documents starting in each split within this item.
        boundary: ``(documents done, their text bytes, last name)`` when the item ends at a
            document boundary, else None (a long document continues in the next item).
    """

    segments: list[Segment]
    n_documents: list[int]
    boundary: tuple[int, int, str] | None


def work_items(
    docs: Iterable[tuple[int, str, str]],
    cut: Callable[[str], int],
    started: list[bool],
    chunk: Callable[[str, int], list[str]],
    bytes_done: int = 0,
    batch_chars: int = BATCH_CHARS,
) -> Iterator[WorkItem]:
    """Group ``(index, name, text)`` documents into work items of about ``batch_chars`` characters.

    Args:
        docs: the documents still to encode, with their index in the whole stream.
        cut: where a document's validation part starts.
        started: whether each split already holds a document (then the next one starts with
            an end-of-text token); updated as documents go by.
        chunk: cuts a long part into pieces that encode independently (``Tokenizer.chunk_text``).
        bytes_done: text bytes of the documents before ``docs`` (for the boundaries).
        batch_chars: characters per item.
    """
    segs: list[Segment] = []
    counts, size, last = [0, 0], 0, (0, bytes_done, "")
    for d, name, text in docs:
        k = cut(text)
        long = len(text) > batch_chars  # spans items: its end closes one, so that commits can follow it
        for s, part in ((0, text[:k]), (1, text[k:])):
            if not part:
                continue
            eos, started[s] = started[s], True
            counts[s] += 1
            pieces = chunk(part, batch_chars) if len(part) > batch_chars else [part]
            for i, piece in enumerate(pieces):
                segs.append((s, eos and i == 0, piece))
                size += len(piece)
                if size >= batch_chars and i < len(pieces) - 1:
                    yield WorkItem(segs, counts, None)
                    segs, counts, size = [], [0, 0], 0
        bytes_done += len(text.encode("utf-8", errors="surrogatepass"))
        last = (d + 1, bytes_done, name)
        if size >= batch_chars or long:
            yield WorkItem(segs, counts, last)
            segs, counts, size = [], [0, 0], 0
    if segs:
        yield WorkItem(segs, counts, last)


# ---------------------------------------------------------------------------
# Encoding


class Encoder:
    """Encodes work items into one token array per split (documents joined by end-of-text).

    Args:
        tokenizer: the tokenizer.
        dtype: token dtype of the arrays.
    """

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype) -> None:
        self.tok, self.dtype = tokenizer, np.dtype(dtype)
        self.eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []

    def __call__(self, segments: list[Segment]) -> Encoded:
        pieces, owner = [], []
        for i, (_, _, text) in enumerate(segments):
            for p in self.tok.chunk_text(text, CHUNK_CHARS):
                pieces.append(p)
                owner.append(i)
        ids = self.tok.encode_batch(pieces) if pieces else []
        parts: tuple[list[list[int]], list[list[int]]] = ([], [])
        prev = -1
        for o, p_ids in zip(owner, ids, strict=True):
            s, eos, _ = segments[o]
            if o != prev and eos:
                parts[s].append(self.eos)
            prev = o
            parts[s].append(p_ids)
        arrays = [np.fromiter(itertools.chain.from_iterable(p), dtype=self.dtype, count=sum(map(len, p)))
                  for p in parts]
        n_bytes = [0, 0]
        for s, _, text in segments:
            n_bytes[s] += len(text.encode("utf-8", errors="surrogatepass"))
        return arrays, n_bytes


_worker: dict[str, Encoder] = {}  # this worker process's encoder (set by _init_worker)


def _exit_with(parent: int) -> None:
    while True:  # a worker whose parent was killed has nothing left to do
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def _init_worker(tokenizer_json: str, dtype: str, parent: int) -> None:
    _worker["encoder"] = Encoder(Tokenizer.from_json(tokenizer_json), np.dtype(dtype))
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _encode_in_worker(segments: list[Segment]) -> Encoded:
    return _worker["encoder"](segments)


@contextlib.contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    """Workers forked now encode on one thread each (``num_proc`` sets the parallelism)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def encode_items(
    items: Iterable[WorkItem], tokenizer: Tokenizer, dtype: np.dtype, num_proc: int
) -> Iterator[tuple[WorkItem, Encoded]]:
    """Encode work items in order: here (``num_proc`` 1) or in ``num_proc`` worker processes.

    At most ``2 * num_proc`` items are in flight, so memory does not grow with the corpus.

    Raises:
        AttnlabError: a worker process died (killed, out of memory).
    """
    if num_proc <= 1:
        enc = Encoder(tokenizer, dtype)
        for item in items:
            yield item, enc(item.segments)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pending: deque = deque()
    with _single_threaded_tokenizers():
        pool = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker,
                                   initargs=(tokenizer.to_json(), np.dtype(dtype).str, os.getpid()))
    try:
        for item in items:
            with _single_threaded_tokenizers():  # workers start at the first submit
                pending.append((item, pool.submit(_encode_in_worker, item.segments)))
            if len(pending) >= 2 * num_proc:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()
    except BrokenProcessPool:
        raise AttnlabError(
            f"a tokenizer worker process died (out of memory?); lower data.num_proc (now {num_proc}) "
            "and rerun: the preparation resumes where it stopped"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
