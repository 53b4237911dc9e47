"""Tokenized text datasets: split, tokenize once, cache as memmaps, serve batches.

:func:`prepare` turns a :class:`~attnlab.config.DataConfig` into a :class:`TokenData`:

1. read the documents (:func:`attnlab.data.corpus.read_documents`);
2. hold out the last ``val_fraction`` of every document for validation
   (:func:`split_documents`);
3. train a BPE tokenizer on the *training* text only (``tokenizer: bpe:N``) or load one;
4. tokenize each split (documents joined by ``<|endoftext|>``) into ``train.bin`` /
   ``val.bin``, raw ``uint16`` (or ``uint32`` for vocabularies over 65536) arrays, with
   ``meta.json`` and ``tokenizer.json`` beside them.

The folder is keyed by a sha256 fingerprint of the inputs (document names and texts,
``val_fraction``, tokenizer), lives under ``cache_dir``, is built in a temporary folder
that is flushed and renamed into place (:func:`attnlab.io.durable.write_folder`; ``meta.json``
records the token counts that tell a complete folder), and is reused whenever the fingerprint matches.

Batches are stateless functions of ``(seed, split, step, micro)``, so a resumed run
sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from attnlab.config import DataConfig
from attnlab.data.corpus import read_documents
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError
from attnlab.io import durable

CACHE_FORMAT = 1
SPLITS = ("train", "val")
_BPE_SPEC = re.compile(r"^bpe:(\d+)$")
_ENCODE_BATCH_CHARS = 1 << 19  # characters handed to one encode_batch call
_CHUNK_CHARS = 1 << 14  # characters per piece inside a batch

Documents = list[tuple[str, str]]


# ---------------------------------------------------------------------------
# Splitting and small helpers


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id: ``uint16`` up to 65536 tokens, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _cut_point(text: str, val_fraction: float) -> int:
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
        k = _cut_point(text, val_fraction)
        if text[:k]:
            train.append((name, text[:k]))
        if text[k:]:
            val.append((name, text[k:]))
    return train, val


def parse_bpe_spec(spec: str) -> int | None:
    """Vocab size of a ``"bpe:N"`` tokenizer spec, or ``None`` if ``spec`` is not one."""
    m = _BPE_SPEC.match(spec.strip())
    return int(m.group(1)) if m else None


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a hash of ``parts`` (e.g. ``seed, "train", step, micro``).

    Randomness that is a pure function of where a run is keeps resumed runs exact.
    """
    key = "|".join(map(str, parts)).encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def fingerprint(docs: Documents, val_fraction: float, tokenizer_key: str) -> str:
    """sha256 of everything that determines the token files: texts, split and tokenizer."""
    payload = {
        "format": CACHE_FORMAT,
        "val_fraction": val_fraction,
        "tokenizer": tokenizer_key,
        "documents": [[name, _sha256(text)] for name, text in docs],
    }
    return _sha256(json.dumps(payload, sort_keys=True))


def _folder_name(source: str, spec: str, fp: str) -> str:
    label = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(source).name or source}-{spec}").strip("-")[:48]
    return f"{label}-{fp[:16]}"


# ---------------------------------------------------------------------------
# TokenData: the memmapped splits and batch access


def _open_split(path: Path, dtype: np.dtype, n_tokens: int) -> np.ndarray:
    if n_tokens == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))


class TokenData:
    """Tokenized train/validation splits, memory-mapped from a cache folder.

    Attributes:
        train: training token ids, shape (N_train,), uint16 or uint32 memmap.
        val: validation token ids, shape (N_val,).
        tokenizer: the :class:`~attnlab.data.tokenizer.Tokenizer` that produced them.
        meta: contents of ``meta.json`` (vocab size, dtype, per-split token and byte counts, ...).
        dir: the cache folder.
    """

    def __init__(self, dir: str | Path) -> None:
        self.dir = Path(dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise AttnlabError(f"'{self.dir}' is not a prepared data folder (no meta.json); run prepare() on it")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.tokenizer = Tokenizer.load(self.dir / "tokenizer.json")
        dtype = np.dtype(self.meta["dtype"])
        self.train = _open_split(self.dir / "train.bin", dtype, self.meta["train"]["n_tokens"])
        self.val = _open_split(self.dir / "val.bin", dtype, self.meta["val"]["n_tokens"])

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the tokenizer."""
        return int(self.meta["vocab_size"])

    def split(self, split: str) -> np.ndarray:
        """The token array of ``"train"`` or ``"val"``."""
        if split not in SPLITS:
            raise AttnlabError(f"unknown split '{split}'; use 'train' or 'val'")
        return self.train if split == "train" else self.val

    def _checked(self, split: str, seq_len: int, batch_size: int) -> np.ndarray:
        data = self.split(split)
        if seq_len <= 0 or batch_size <= 0:
            raise AttnlabError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if len(data) <= seq_len + 1:
            raise AttnlabError(
                f"the {split} split has {len(data)} tokens, too small for seq_len={seq_len} "
                f"(needs more than {seq_len + 1}); lower train.seq_len or add text"
            )
        return data

    @staticmethod
    def _windows(data: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(seq_len + 1)  # (B, T+1)
        w = torch.from_numpy(data[idx].astype(np.int64))  # (B, T+1) int64
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def get_batch(
        self, split: str, step: int, batch_size: int, seq_len: int, seed: int, micro: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows for one (micro-)step, a pure function of its arguments.

        Args:
            split: ``"train"`` or ``"val"``.
            step: optimizer step; with ``seed`` and ``micro`` it alone picks the windows.
            batch_size: sequences B.
            seq_len: tokens T per sequence.
            seed: run seed.
            micro: micro-batch index within the step (gradient accumulation).

        Returns:
            ``(x, y)``, int64 CPU tensors of shape (B, T); ``y`` is ``x`` shifted left by one
            token (the next-token targets: ``y[:, t] == x[:, t + 1]``).

        Raises:
            AttnlabError: if the split holds no more than ``seq_len + 1`` tokens.
        """
        data = self._checked(split, seq_len, batch_size)
        g = seeded_generator(seed, split, step, micro)
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=g).numpy()  # (B,)
        return self._windows(data, starts, seq_len)

    def eval_batches(
        self, split: str, batch_size: int, seq_len: int, max_batches: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed, evenly spaced, non-overlapping windows spanning the whole split.

        The same arguments always give the same batches, so losses are comparable
        across runs. All batches are full, except when the split holds fewer than
        ``batch_size`` windows: then a single smaller batch comes back.

        Yields:
            ``(x, y)`` int64 tensors of shape (B, T), as :meth:`get_batch`.
        """
        data = self._checked(split, seq_len, batch_size)
        if max_batches <= 0:
            return
        room = len(data) - seq_len - 1  # last valid window start
        fit = (len(data) - 1) // seq_len  # non-overlapping windows that fit
        n = min(max_batches, fit // batch_size) * batch_size or fit
        # Spacing room/(n-1) >= seq_len because n <= fit, so windows never overlap.
        starts = np.array([k * room // (n - 1) for k in range(n)] if n > 1 else [0], dtype=np.int64)
        for i in range(0, n, batch_size):
            yield self._windows(data, starts[i : i + batch_size], seq_len)

    def bytes_per_token(self, split: str = "val") -> float:
        """UTF-8 bytes of text per token in ``split``: bits/byte = loss / ln 2 / bytes_per_token."""
        self.split(split)  # validates the name
        m = self.meta[split]
        return m["n_bytes"] / max(m["n_tokens"], 1)

    def unigram_entropy(self, split: str = "train") -> float:
        """Entropy of the token frequency distribution of ``split``, in nats per token.

        The loss of a model that ignores context; a trained LM should go well below it.
        """
        data = self.split(split)
        if len(data) == 0:
            return 0.0
        counts = np.bincount(np.asarray(data), minlength=self.vocab_size)
        p = counts[counts > 0] / len(data)
        return float(-(p * np.log(p)).sum())

    def __repr__(self) -> str:
        return (
            f"TokenData(dir='{self.dir}', vocab_size={self.vocab_size}, "
            f"train={len(self.train)}, val={len(self.val)} tokens)"
        )


# ---------------------------------------------------------------------------
# Building the cache


def _resolve_tokenizer(spec: str, tokenizer: Tokenizer | None) -> tuple[Tokenizer | None, int | None, str]:
    """Returns (tokenizer or None if it must be trained, bpe vocab size, fingerprint key)."""
    if tokenizer is not None:
        return tokenizer, None, "json:" + _sha256(tokenizer.to_json())
    vocab = parse_bpe_spec(spec)
    if vocab is not None:
        return None, vocab, f"bpe:{vocab}:min_frequency=2"
    if spec.strip().startswith("bpe:") or not Path(spec).expanduser().exists():
        raise AttnlabError(
            f"data.tokenizer '{spec}' is neither 'bpe:N' (train one, e.g. bpe:4096) "
            "nor an existing tokenizer.json / GPT-2 directory; fix the spec or the path"
        )
    tok = Tokenizer.load(spec)
    return tok, None, "json:" + _sha256(tok.to_json())


def _encode_split(
    tokenizer: Tokenizer, docs: Documents, path: Path, dtype: np.dtype, desc: str, progress: bool
) -> int:
    """Tokenize ``docs`` (joined by eos) straight into the raw file ``path``; return the token count."""
    eos = tokenizer.eos_id
    eos_arr = np.array([eos] if eos is not None else [], dtype=dtype)
    total = sum(len(t) for _, t in docs)
    n_tokens = 0
    with open(path, "wb") as f, tqdm(
        total=total, desc=desc, unit="char", unit_scale=True, disable=not progress, file=sys.stderr
    ) as bar:
        for d, (_, text) in enumerate(docs):
            if d:
                eos_arr.tofile(f)
                n_tokens += len(eos_arr)
            pieces = tokenizer.chunk_text(text, _CHUNK_CHARS)
            per_batch = max(1, _ENCODE_BATCH_CHARS // _CHUNK_CHARS)
            for i in range(0, len(pieces), per_batch):
                batch = pieces[i : i + per_batch]
                for ids in tokenizer.encode_batch(batch):
                    np.asarray(ids, dtype=dtype).tofile(f)
                    n_tokens += len(ids)
                bar.update(sum(len(p) for p in batch))
    return n_tokens


def _is_complete(folder: Path, fp: str) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        return (
            meta.get("fingerprint") == fp
            and (folder / "tokenizer.json").is_file()
            and all((folder / f"{s}.bin").stat().st_size == meta[s]["n_tokens"] * itemsize for s in SPLITS)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def prepare(
    cfg: DataConfig,
    tokenizer: Tokenizer | None = None,
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> TokenData:
    """Split, tokenize and cache a text source; reuse the cache when the inputs match.

    Args:
        cfg: the data section of the config (``source``, ``glob``, ``tokenizer``,
            ``val_fraction``, ``cache_dir``).
        tokenizer: use this tokenizer instead of the one ``cfg.tokenizer`` names.
        cache_root: folder for the cache (default ``cfg.cache_dir``).
        progress: show a progress bar on stderr while tokenizing.

    Returns:
        The memory-mapped :class:`TokenData`.

    Raises:
        AttnlabError: for a missing or empty source, or a bad tokenizer spec.
    """
    docs = read_documents(cfg.source, cfg.glob, cfg.text_field)
    train_docs, val_docs = split_documents(docs, cfg.val_fraction)
    tok, bpe_vocab, tok_key = _resolve_tokenizer(cfg.tokenizer, tokenizer)
    fp = fingerprint(docs, cfg.val_fraction, tok_key)

    root = Path(cache_root if cache_root is not None else cfg.cache_dir).expanduser()
    name = _folder_name(cfg.source, cfg.tokenizer, fp)
    folder = root / name
    if _is_complete(folder, fp):
        return TokenData(folder)

    t0 = time.perf_counter()
    if tok is None:
        if progress:
            print(f"training a {bpe_vocab}-token BPE tokenizer on the training text...", file=sys.stderr)
        tok = Tokenizer.train_bpe((text for _, text in train_docs), bpe_vocab)
    t_tok = time.perf_counter() - t0
    dtype = token_dtype(tok.vocab_size)

    def fill(tmp: Path) -> None:
        meta: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "fingerprint": fp,
            "source": cfg.source,
            "glob": cfg.glob,
            "tokenizer": cfg.tokenizer if tokenizer is None else "given",
            "val_fraction": cfg.val_fraction,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "dtype": dtype.name,
            "n_documents": len(docs),
        }
        t1 = time.perf_counter()
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            n = _encode_split(tok, split_docs, tmp / f"{split}.bin", dtype, f"tokenizing {split}", progress)
            meta[split] = {
                "n_tokens": n,
                "n_bytes": sum(len(t.encode("utf-8", errors="surrogatepass")) for _, t in split_docs),
                "n_documents": len(split_docs),
            }
        meta["seconds"] = {"tokenizer": round(t_tok, 3), "tokenize": round(time.perf_counter() - t1, 3)}
        tok.save(tmp / "tokenizer.json")
        durable.write_file(tmp / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())

    try:  # staged beside the cache folder, flushed, renamed into place (an incomplete one is replaced)
        durable.write_folder(folder, fill, manifest=None)
    except OSError:
        if not _is_complete(folder, fp):  # another process did not win the race either
            raise
    return TokenData(folder)


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Convert a per-token loss in nats to bits per UTF-8 byte of text."""
    return loss_nats / math.log(2) / bytes_per_token
