"""Attention masks as composable predicates.

A mask answers "may query ``q_idx`` attend to key ``kv_idx``?" for batch row ``b`` and
head ``h``. Masks combine with ``&``, ``|`` and ``~``. Indices are *absolute positions*:
when there are fewer queries than keys (decoding with a KV cache) query ``i`` sits at
position ``Tk - Tq + i`` (bottom-right alignment, as in FlashAttention >= 2.1).

One definition serves every backend: the eager and SDPA backends call
:meth:`Mask.dense` to materialise a boolean tensor; a backend that knows a mask kind
natively (SDPA's ``is_causal``) asks :attr:`Mask.kind`.

Example::

    mask = causal() & padding(lengths)           # (B,) valid lengths
    allowed = mask.dense(B, H, Tq, Tk, device)   # (B, 1, Tq, Tk) bool
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

Predicate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Mask:
    """A boolean predicate ``(b, h, q_idx, kv_idx) -> allowed``.

    Args:
        fn: the predicate; it receives broadcastable integer tensors and returns a
            broadcastable bool tensor.
        kind: a short name backends can recognise (``"causal"``, ``"padding"``, ...;
            combinations are named like ``"causal&padding"``).
        per_batch: whether the predicate depends on ``b`` (materialise per batch row).
        per_head: whether it depends on ``h``.
    """

    def __init__(self, fn: Predicate, kind: str, *, per_batch: bool = False, per_head: bool = False):
        self.fn = fn
        self.kind = kind
        self.per_batch = per_batch
        self.per_head = per_head

    def __call__(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __and__(self, other: Mask) -> Mask:
        return Mask(
            lambda b, h, q, k: self.fn(b, h, q, k) & other.fn(b, h, q, k),
            f"{self.kind}&{other.kind}",
            per_batch=self.per_batch or other.per_batch,
            per_head=self.per_head or other.per_head,
        )

    def __or__(self, other: Mask) -> Mask:
        return Mask(
            lambda b, h, q, k: self.fn(b, h, q, k) | other.fn(b, h, q, k),
            f"({self.kind}|{other.kind})",
            per_batch=self.per_batch or other.per_batch,
            per_head=self.per_head or other.per_head,
        )

    def __invert__(self) -> Mask:
        return Mask(lambda b, h, q, k: ~self.fn(b, h, q, k), f"~{self.kind}",
                    per_batch=self.per_batch, per_head=self.per_head)

    def __repr__(self) -> str:
        return f"Mask({self.kind})"

    def dense(self, batch: int, heads: int, tq: int, tk: int, device: torch.device | str) -> torch.Tensor:
        """Materialise the mask as a bool tensor.

        Args:
            batch: batch size B.
            heads: number of query heads H.
            tq: number of queries; they sit at positions ``tk - tq .. tk - 1``.
            tk: number of keys.
            device: where to build it.

        Returns:
            Bool tensor of shape (B or 1, H or 1, Tq, Tk); True means "may attend".
        """
        nb = batch if self.per_batch else 1
        nh = heads if self.per_head else 1
        b = torch.arange(nb, device=device).view(nb, 1, 1, 1)
        h = torch.arange(nh, device=device).view(1, nh, 1, 1)
        q = torch.arange(tk - tq, tk, device=device).view(1, 1, tq, 1)
        k = torch.arange(tk, device=device).view(1, 1, 1, tk)
        out = self.fn(b, h, q, k)
        return out.expand(nb, nh, tq, tk)


def causal() -> Mask:
    """Each query sees itself and earlier positions."""
    return Mask(lambda b, h, q, k: q >= k, "causal")


def full() -> Mask:
    """Every query sees every key."""
    return Mask(lambda b, h, q, k: torch.ones_like(q >= k), "full")


def padding(lengths: torch.Tensor) -> Mask:
    """Keys at positions ``>= lengths[b]`` are padding (right-padded batch).

    Args:
        lengths: (B,) number of valid tokens per sequence.
    """
    lengths = lengths.long()
    return Mask(lambda b, h, q, k: k < lengths.to(k.device)[b], "padding", per_batch=True)


def key_padding(valid: torch.Tensor) -> Mask:
    """Keys where ``valid[b, kv] is False`` are padding (any padding side).

    Args:
        valid: (B, Tk) bool, True for real tokens.
    """
    valid = valid.bool()
    return Mask(lambda b, h, q, k: valid.to(k.device)[b, k], "key_padding", per_batch=True)


def document(doc_ids: torch.Tensor) -> Mask:
    """Packed sequences: a query only sees keys of the same document.

    Args:
        doc_ids: (B, Tk) integer document id of every position. Combine with
            :func:`causal` for causal packed training.
    """
    doc_ids = doc_ids.long()
    return Mask(
        lambda b, h, q, k: doc_ids.to(k.device)[b, q] == doc_ids.to(k.device)[b, k],
        "document",
        per_batch=True,
    )


def is_kind(mask: Optional[Mask | torch.Tensor], kind: str) -> bool:
    """True when ``mask`` is exactly the named single kind (e.g. plain ``"causal"``).

    A dense tensor mask (or None) is never a named kind.
    """
    return isinstance(mask, Mask) and mask.kind == kind
