"""Prepared token data read back: :class:`TokenData` and its stateless batches.

A prepared folder (written by :func:`attnlab.data.dataset.prepare`) holds ``meta.json``,
``tokenizer.json`` and each split's token shards (:mod:`attnlab.data.shards`). Batches are pure
functions of ``(seed, split, step, micro)`` over the token stream (:func:`seeded_generator`), so a
resumed run sees exactly the batches it would have seen without the interruption, whatever the
shard layout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.data.shards import SPLITS, TokenShards
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a hash of ``parts`` (e.g. ``seed, "train", step, micro``).

    Randomness that is a pure function of where a run is keeps resumed runs exact.
    """
    key = "|".join(map(str, parts)).encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)



# ---------------------------------------------------------------------------
# TokenData: the memmapped splits and batch access


def _open_split(folder: Path, meta: dict[str, Any], split: str) -> TokenShards:
    dtype = np.dtype(meta["dtype"])
    if "shards" in meta:
        return TokenShards.open(folder, meta["shards"][split], dtype)
    n = int(meta[split]["n_tokens"])  # format 1: one {split}.bin
    return TokenShards([np.memmap(folder / f"{split}.bin", dtype=dtype, mode="r", shape=(n,))] if n else [], dtype)


class TokenData:
    """Tokenized train/validation splits, memory-mapped from a cache folder.

    Attributes:
        train: training token ids, shape (N_train,), uint16 or uint32 (a
            :class:`~attnlab.data.shards.TokenShards` over the memmapped shards).
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
        self.train = _open_split(self.dir, self.meta, "train")
        self.val = _open_split(self.dir, self.meta, "val")

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the tokenizer."""
        return int(self.meta["vocab_size"])

    def split(self, split: str) -> TokenShards:
        """The token array of ``"train"`` or ``"val"``."""
        if split not in SPLITS:
            raise AttnlabError(f"unknown split '{split}'; use 'train' or 'val'")
        return self.train if split == "train" else self.val

    def _checked(self, split: str, seq_len: int, batch_size: int) -> TokenShards:
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
    def _windows(data: TokenShards, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        counts = sum(np.bincount(np.asarray(a), minlength=self.vocab_size) for a in data.shards)
        p = counts[counts > 0] / len(data)
        return float(-(p * np.log(p)).sum())

    def __repr__(self) -> str:
        return (
            f"TokenData(dir='{self.dir}', vocab_size={self.vocab_size}, "
            f"train={len(self.train)}, val={len(self.val)} tokens)"
        )


