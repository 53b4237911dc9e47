"""Iteration-level batching for decoder-only sessions: new rows join a running batch.

A running :class:`~attnlab.generate.Session` and a freshly prefilled one (both with every
token already in their KV cache) become one batch by left-padding the shorter to the
longer width: tokens with 0, the real-token mask with False, cached keys/values with
zeros (never attended to: the mask hides them). Decoder-only positions count each row's
real tokens only, so extra padding on the left changes nothing a row sees, and every row
keeps decoding as it would alone. :func:`trim` drops leading columns that became
padding in every row (after finished rows left), so a batch that keeps taking new rows
does not creep towards the context limit.

Only dynamic KV caches (:class:`~attnlab.attention.LayerCache` per layer) of models that
take a padding mask can be joined; see :func:`can_join`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.attention.cache import LayerCache
from attnlab.generate import Session


def can_join(session: Session) -> bool:
    """Whether ``session`` is a cached decoder-only batch whose cache :func:`join` can pad."""
    return (not session.encoder_decoder and session.cache is not None
            and all(isinstance(layer, LayerCache) for layer in session.cache.layers))


def _pad_left(x: torch.Tensor, width: int, dim: int, value: float = 0) -> torch.Tensor:
    """``x`` left-padded with ``value`` to ``width`` along ``dim`` (a negative dim)."""
    extra = width - x.size(dim)
    if extra == 0:
        return x
    pad = [0, 0] * (-dim - 1) + [extra, 0]  # F.pad lists (left, right) pairs from the last dim back
    return F.pad(x, pad, value=value)


def _mask(session: Session) -> torch.Tensor:
    """(N, T) bool real-token mask (all True when the session has no padding)."""
    if session.padding is not None:
        return session.padding
    return torch.ones(session.tokens.shape, dtype=torch.bool, device=session.tokens.device)


def join(running: Session, new: Session) -> None:
    """Append ``new``'s rows to ``running`` (in place); both must have fed every token
    (call ``next_logits()`` on each first). Afterwards ``running.generated`` is not meaningful.

    Raises:
        ValueError: a session that :func:`can_join` refuses, or one with unfed tokens.
    """
    for s in (running, new):
        if not can_join(s) or s.consumed != s.tokens.size(1):
            raise ValueError("join() needs two cached decoder-only sessions whose tokens are all in the cache; "
                             "call next_logits() on both first")
    width = max(running.tokens.size(1), new.tokens.size(1))
    masks = [_pad_left(_mask(s), width, -1, False) for s in (running, new)]  # before tokens change
    running.tokens = torch.cat([_pad_left(s.tokens, width, -1) for s in (running, new)])  # (N, W)
    running.padding = torch.cat(masks)  # (N, W)
    for mine, theirs in zip(running.cache.layers, new.cache.layers):
        mine.k = torch.cat([_pad_left(mine.k, width, -2), _pad_left(theirs.k, width, -2)])  # (N, Hkv, W, D)
        mine.v = torch.cat([_pad_left(mine.v, width, -2), _pad_left(theirs.v, width, -2)])
    running.consumed = running.prefix_len = width


def trim(session: Session) -> None:
    """Drop leading columns that are padding in every row (tokens, mask and cache), in place."""
    if session.padding is None or not can_join(session):
        return
    real = session.padding.any(dim=0)  # (T,)
    first = int(real.long().argmax())
    if first == 0:
        return
    session.tokens, session.padding = session.tokens[:, first:], session.padding[:, first:]
    for layer in session.cache.layers:
        if layer.k is not None:
            layer.k, layer.v = layer.k[..., first:, :], layer.v[..., first:, :]
    session.consumed -= first
    session.prefix_len = max(session.prefix_len - first, 0)


__all__ = ["can_join", "join", "trim"]
