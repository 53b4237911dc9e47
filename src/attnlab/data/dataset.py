"""Tokenized text datasets: split, tokenize once in a streaming pass, cache as token shards, serve batches.

:func:`prepare` turns a :class:`~attnlab.config.DataConfig` into a :class:`TokenData`:

1. stream the documents (:func:`attnlab.data.corpus.iter_documents`), never the whole corpus
   in memory;
2. hold out the last ``val_fraction`` of every document for validation (:func:`split_documents`
   says how: the same cut, applied document by document as they stream);
3. train a BPE tokenizer on the stream of *training* text only (``tokenizer: bpe:N``, at most
   ``tokenizer_sample_mb`` of it) or load one;
4. encode the stream in batches, in ``num_proc`` worker processes
   (:mod:`attnlab.data.streaming`), appending each split (documents joined by ``<|endoftext|>``)
   to raw ``uint16`` (``uint32`` for vocabularies over 65536) token shards
   (:mod:`attnlab.data.shards`), with ``meta.json`` (the shard index and counts) and
   ``tokenizer.json`` beside them. A progress bar shows MB/s and the time left.

The folder is keyed by a sha256 fingerprint of the inputs: the source's files (path, size and
modification time of each: a cache hit costs no pass over gigabytes, and any write to a file
moves its size or time; see :func:`attnlab.data.streaming.source_signature`), ``glob``,
``text_field``, ``val_fraction`` and the tokenizer. It is built in a work folder
``.partial-NAME`` beside it, under a lock; progress is committed durably every ``shard_tokens``
tokens, so a killed preparation resumes from its last commit and ends with the same shards as
one that never stopped; the finished folder is flushed and renamed into place
(:func:`attnlab.io.durable.replace_folder`) and reused whenever the fingerprint matches.

Batches are stateless functions of ``(seed, split, step, micro)`` over the token stream
(:class:`~attnlab.data.token_data.TokenData`, re-exported here), so a resumed run sees exactly the
batches it would have seen without the interruption, whatever the shard layout.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from attnlab.config import DataConfig
from attnlab.data import streaming
from attnlab.data.corpus import iter_documents
from attnlab.data.shards import PROGRESS, ShardWriter, exclusive
from attnlab.data.token_data import TokenData, seeded_generator
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError
from attnlab.io import durable

__all__ = ["TokenData", "bits_per_byte", "cut_point", "fingerprint", "parse_bpe_spec", "prepare", "seeded_generator",
           "split_documents", "token_dtype"]

CACHE_FORMAT = 2  # 2: token shards + index (1: one train.bin / val.bin, still readable)
SPLITS = ("train", "val")
SHARD_TOKENS = 1 << 25  # tokens (both splits) between commits: about 64 MB of uint16 shards
_BPE_SPEC = re.compile(r"^bpe:(\d+)$")

Documents = list[tuple[str, str]]


# ---------------------------------------------------------------------------
# Splitting and small helpers


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id: ``uint16`` up to 65536 tokens, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cut_point(text: str, val_fraction: float) -> int:
    """Index where validation text starts: about ``val_fraction`` from the end, at a line start."""
    n = len(text)
    k = n - round(n * val_fraction)
    if k <= 0 or k >= n or text[k - 1] == "\n":
        return min(max(k, 0), n)
    j = text.find("\n", k, n - 1)  # next line start (not past the last character)
    if j == -1:
        j = text.rfind("\n", 0, k)  # else the previous one
    return j + 1 if j != -1 else k


def split_documents(docs: Documents, val_fraction: float) -> tuple[Documents, Documents]:
    """Hold out the end of every document for validation.

    Args:
        docs: ``(name, text)`` documents.
        val_fraction: share of each document's characters that goes to validation; the
            cut is moved to the nearest following line start (or preceding one).

    Returns:
        ``(train_docs, val_docs)``, each a list of ``(name, text)``; documents too short
        to contribute to a split are left out of it.
    """
    train, val = [], []
    for name, text in docs:
        k = cut_point(text, val_fraction)
        if text[:k]:
            train.append((name, text[:k]))
        if text[k:]:
            val.append((name, text[k:]))
    return train, val


def parse_bpe_spec(spec: str) -> int | None:
    """Vocab size of a ``"bpe:N"`` tokenizer spec, or ``None`` if ``spec`` is not one."""
    m = _BPE_SPEC.match(spec.strip())
    return int(m.group(1)) if m else None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def fingerprint(cfg: DataConfig, tokenizer_key: str) -> str:
    """sha256 of everything that determines the token files: the source's files, the split and the tokenizer.

    The source enters by :func:`attnlab.data.streaming.source_signature` (each file's path, size
    and modification time; a builtin corpus by content).
    """
    payload = {
        "format": CACHE_FORMAT,
        "source": streaming.source_signature(cfg.source, cfg.glob, cfg.text_field),
        "glob": cfg.glob,
        "text_field": cfg.text_field,
        "val_fraction": cfg.val_fraction,
        "tokenizer": tokenizer_key,
    }
    return _sha256(json.dumps(payload, sort_keys=True))


def _folder_name(source: str, spec: str, fp: str) -> str:
    label = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(source).name or source}-{spec}").strip("-")[:48]
    return f"{label}-{fp[:16]}"


# ---------------------------------------------------------------------------
# Building the cache


def _resolve_tokenizer(
    spec: str, tokenizer: Tokenizer | None, sample_mb: float
) -> tuple[Tokenizer | None, int | None, str]:
    """Returns (tokenizer or None if it must be trained, bpe vocab size, fingerprint key)."""
    if tokenizer is not None:
        return tokenizer, None, "json:" + _sha256(tokenizer.to_json())
    vocab = parse_bpe_spec(spec)
    if vocab is not None:
        return None, vocab, f"bpe:{vocab}:min_frequency=2:sample_mb={sample_mb:g}"
    if spec.strip().startswith("bpe:") or not Path(spec).expanduser().exists():
        raise AttnlabError(
            f"data.tokenizer '{spec}' is neither 'bpe:N' (train one, e.g. bpe:4096) "
            "nor an existing tokenizer.json / GPT-2 directory; fix the spec or the path"
        )
    tok = Tokenizer.load(spec)
    return tok, None, "json:" + _sha256(tok.to_json())


def _is_complete(folder: Path, fp: str) -> bool:
    """Whether ``folder`` is a finished preparation of fingerprint ``fp`` (every shard at its size)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        if meta.get("fingerprint") != fp or not (folder / "tokenizer.json").is_file():
            return False
        for s in SPLITS:
            index = meta["shards"][s]
            if sum(sh["n_tokens"] for sh in index) != meta[s]["n_tokens"]:
                return False
            if any((folder / sh["file"]).stat().st_size != sh["n_tokens"] * itemsize for sh in index):
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _training_texts(cfg: DataConfig) -> Iterator[str]:
    """The training part of every document, streamed."""
    for _, text in iter_documents(cfg.source, cfg.glob, cfg.text_field):
        k = cut_point(text, cfg.val_fraction)
        if k:
            yield text[:k]


def _tokenizer_for(
    work: Path, tok: Tokenizer | None, bpe_vocab: int | None, cfg: DataConfig, progress: bool
) -> Tokenizer:
    """The given tokenizer, the one an interrupted attempt trained, or a newly trained one; kept in ``work``."""
    saved = work / "tokenizer.json"
    if tok is None and saved.is_file():
        return Tokenizer.load(saved)  # trained before an interruption (written atomically)
    if tok is None:
        if progress:
            print(f"training a {bpe_vocab}-token BPE tokenizer on the training text...", file=sys.stderr)
        tok = Tokenizer.train_bpe(_training_texts(cfg), bpe_vocab, sample_mb=cfg.tokenizer_sample_mb,
                                  progress=progress)
    tok.save(saved)
    durable.fsync_file(work)
    return tok


def _documents(cfg: DataConfig, writer: ShardWriter) -> Iterator[tuple[int, str, str]]:
    """``(index, name, text)`` of the documents not yet in committed shards (the others are read and skipped)."""
    skip, d, same = writer.docs_done, -1, True
    for d, (name, text) in enumerate(iter_documents(cfg.source, cfg.glob, cfg.text_field)):
        if d >= skip:
            yield d, name, text
        elif d == skip - 1 and name != writer.last_name:
            same = False
            break
    if not same or d < skip - 1:  # another document where the last commit was, or fewer documents
        raise AttnlabError(
            f"the source no longer matches the interrupted preparation in '{writer.folder}' (document "
            f"{skip} was '{writer.last_name}'); delete that folder and rerun"
        )


def _encode(cfg: DataConfig, tok: Tokenizer, writer: ShardWriter, progress: bool) -> None:
    """Stream the documents not yet done through the encoder into the shards; commit at the end."""
    started = [writer.splits[s].n_documents > 0 for s in SPLITS]
    items = streaming.work_items(_documents(cfg, writer), lambda t: cut_point(t, cfg.val_fraction), started,
                                 tok.chunk_text, writer.bytes_done, streaming.BATCH_CHARS)
    total = streaming.text_bytes_estimate(cfg.source, cfg.glob, cfg.text_field)
    with tqdm(total=total, initial=writer.bytes_done, desc="tokenizing", unit="B", unit_scale=True,
              disable=not progress, file=sys.stderr, smoothing=0.1) as bar:
        try:
            for item, (arrays, n_bytes) in streaming.encode_items(items, tok, writer.dtype, cfg.num_proc):
                for s, split in enumerate(SPLITS):
                    if len(arrays[s]) or item.n_documents[s]:
                        writer.append(split, arrays[s], n_bytes[s], item.n_documents[s])
                if bar.total is not None and bar.n + sum(n_bytes) > bar.total:
                    bar.total = bar.n + sum(n_bytes)  # the estimate was short (JSON escapes, a guess)
                bar.update(sum(n_bytes))
                if item.boundary is not None:
                    writer.documents_done(*item.boundary)
            writer.commit()
        finally:
            writer.close()
        bar.total = bar.n
        bar.refresh()


def _build(cfg: DataConfig, work: Path, fp: str, tok: Tokenizer | None, bpe_vocab: int | None,
           given: bool, progress: bool, shard_tokens: int) -> None:
    """Fill the work folder: tokenizer, shards (resuming committed work), then ``meta.json``."""
    t0 = time.perf_counter()
    tok = _tokenizer_for(work, tok, bpe_vocab, cfg, progress)
    t_tok = time.perf_counter() - t0
    dtype = token_dtype(tok.vocab_size)
    writer = ShardWriter.open(work, dtype, shard_tokens, key=fp)
    resumed = writer.docs_done
    if resumed and progress:
        print(f"resuming the interrupted preparation after {resumed:,} documents", file=sys.stderr)
    t1 = time.perf_counter()
    _encode(cfg, tok, writer, progress)
    if fingerprint(cfg, _resolve_tokenizer(cfg.tokenizer, tok if given else None, cfg.tokenizer_sample_mb)[2]) != fp:
        shutil.rmtree(work, ignore_errors=True)
        raise AttnlabError(f"the source '{cfg.source}' changed while it was being tokenized; rerun")
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "fingerprint": fp,
        "source": cfg.source,
        "glob": cfg.glob,
        "text_field": cfg.text_field,
        "tokenizer": cfg.tokenizer if not given else "given",
        "val_fraction": cfg.val_fraction,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "dtype": dtype.name,
        "n_documents": writer.docs_done,
        "shard_tokens": writer.shard_tokens,
        "shards": writer.index(),
        **{s: {"n_tokens": sp.n_tokens, "n_bytes": sp.n_bytes, "n_documents": sp.n_documents}
           for s, sp in writer.splits.items()},
        "resumed_after_documents": resumed,
        "seconds": {"tokenizer": round(t_tok, 3), "tokenize": round(time.perf_counter() - t1, 3)},
    }
    durable.write_file(work / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())


def prepare(
    cfg: DataConfig,
    tokenizer: Tokenizer | None = None,
    cache_root: str | Path | None = None,
    progress: bool = True,
    *,
    shard_tokens: int = SHARD_TOKENS,
) -> TokenData:
    """Split, tokenize and cache a text source in one streaming pass; reuse the cache when the inputs match.

    Memory stays bounded whatever the corpus size; a preparation that was killed resumes from
    its last committed shard when called again with the same inputs.

    Args:
        cfg: the data section of the config (``source``, ``glob``, ``text_field``, ``tokenizer``,
            ``tokenizer_sample_mb``, ``val_fraction``, ``cache_dir``, ``num_proc``).
        tokenizer: use this tokenizer instead of the one ``cfg.tokenizer`` names.
        cache_root: folder for the cache (default ``cfg.cache_dir``).
        progress: show a progress bar (MB/s, time left) on stderr while tokenizing.
        shard_tokens: tokens between durable commits (the shard size; both splits together).

    Returns:
        The memory-mapped :class:`TokenData`.

    Raises:
        AttnlabError: for a missing, unreadable or empty source, or a bad tokenizer spec.
    """
    if shard_tokens <= 0:
        raise AttnlabError(f"shard_tokens must be positive, got {shard_tokens}")
    tok, bpe_vocab, tok_key = _resolve_tokenizer(cfg.tokenizer, tokenizer, cfg.tokenizer_sample_mb)
    fp = fingerprint(cfg, tok_key)
    root = Path(cache_root if cache_root is not None else cfg.cache_dir).expanduser()
    name = _folder_name(cfg.source, cfg.tokenizer, fp)
    folder = root / name
    if _is_complete(folder, fp):
        return TokenData(folder)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / f".lock-{name}"
    with exclusive(lock, waiting=f"waiting for another process that is preparing '{folder}'..."):
        if not _is_complete(folder, fp):  # nobody finished it while we waited
            durable.remove_stale(folder)
            work = root / f".partial-{name}"
            work.mkdir(exist_ok=True)
            if not _is_complete(work, fp):  # else killed between finishing and the rename
                _build(cfg, work, fp, tok, bpe_vocab, tokenizer is not None, progress, shard_tokens)
            (work / PROGRESS).unlink(missing_ok=True)
            durable.digests(work, hash_files=False)  # flush every file before the rename
            durable.replace_folder(work, folder)
        lock.unlink(missing_ok=True)
    return TokenData(folder)


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Convert a per-token loss in nats to bits per UTF-8 byte of text."""
    return loss_nats / math.log(2) / bytes_per_token
