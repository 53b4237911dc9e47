"""Helpers for batched-generation tests: pad a batch, decode greedily and keep every step's logits."""

from __future__ import annotations

import torch

from attnlab.data.tasks import pad_batch
from attnlab.generate import Session


def pad(rows: list[list[int]], pad_id: int = 0, *, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and their 1/0 mask, rows padded with ``pad_id`` on ``side`` ("left" or "right")."""
    return pad_batch(rows, pad_id, side=side)


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and their 1/0 mask, rows padded on the left with ``pad_id``."""
    return pad(rows, pad_id, side="left")


@torch.no_grad()
def greedy_logits(model, ids, n, mask=None, use_cache=True, **session_args) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding through a Session (``session_args``: more of its arguments): (B, n)
    tokens and (B, n, V) logits of every step."""
    session = Session(model, ids, n, attention_mask=mask, use_cache=use_cache, **session_args)
    steps = []
    for _ in range(n):
        logits = session.next_logits()
        steps.append(logits)
        session.append(logits.argmax(-1))
    return session.generated, torch.stack(steps, 1)
