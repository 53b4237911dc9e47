"""Summed log-probabilities of chosen tokens under a causal LM: preference scoring and DPO share it.

A batch of sequences of different lengths is right-padded into ``(B, T)`` ids with a ``(B, T)``
boolean mask of the tokens whose log-probability counts (a chat reply's assistant tokens, from
:func:`attnlab.data.chat.encode_conversation`). Right padding never changes a causal model's
outputs at the real positions, so no attention mask is needed::

    ids, mask = pad_sequences([(ids_a, mask_a), (ids_b, mask_b)])   # (B, T), (B, T)
    with torch.no_grad():
        scores = sequence_logprobs(model, ids, mask)                 # (B,) log p(masked tokens | the rest)

:func:`sequence_logprobs` keeps the autograd graph (DPO backpropagates through it); wrap it in
``torch.no_grad()`` to only score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad_sequences(items: Sequence[tuple[Sequence[int], Sequence[bool]]], pad_id: int = 0,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(ids, mask)`` pairs into one batch.

    Args:
        items: per sequence its token ids and, per token, whether its log-prob counts.
        pad_id: id written in the padding (its positions are masked out, so any valid id works).
        device: where the tensors go.

    Returns:
        ``ids`` (B, T) long and ``mask`` (B, T) bool, ``T`` the longest sequence.

    Raises:
        ValueError: no sequences, an empty sequence, or ids and mask of different lengths.
    """
    if not items:
        raise ValueError("pad_sequences needs at least one sequence")
    for i, (ids, mask) in enumerate(items):
        if len(ids) == 0 or len(ids) != len(mask):
            raise ValueError(f"sequence {i}: {len(ids)} ids and {len(mask)} mask entries; both must be equal and > 0")
    T = max(len(ids) for ids, _ in items)
    out_ids = torch.full((len(items), T), pad_id, dtype=torch.long)  # (B, T)
    out_mask = torch.zeros((len(items), T), dtype=torch.bool)  # (B, T)
    for b, (ids, mask) in enumerate(items):
        out_ids[b, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        out_mask[b, : len(mask)] = torch.as_tensor(list(mask), dtype=torch.bool)
    return out_ids.to(device), out_mask.to(device)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the ones before it.

    Args:
        logits: (B, T, V) a causal LM's outputs for ``ids``.
        ids: (B, T) the tokens.

    Returns:
        (B, T) float32: entry ``t`` is ``log p(ids[t] | ids[:t])``; entry 0 (nothing predicts it) is 0.
    """
    B, T, V = logits.shape
    # Position t-1 predicts token t; cross_entropy avoids materialising a second (B, T, V) log-softmax.
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1), reduction="none")
    lp = -nll.view(B, T - 1)  # (B, T-1)
    return torch.cat([lp.new_zeros(B, 1), lp], dim=1)  # (B, T)


def sequence_logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the masked tokens of each sequence under a causal LM.

    Args:
        model: a decoder-only LM whose ``forward(ids)`` returns logits (B, T, V).
        ids: (B, T) right-padded token ids.
        mask: (B, T) bool, True where the token's log-prob counts; column 0 must be False (no
            token predicts the first one).

    Returns:
        (B,) float32 sums, differentiable with respect to the model's parameters.

    Raises:
        ValueError: shapes differ, or a sequence's first token is masked.
    """
    if ids.shape != mask.shape or ids.dim() != 2:
        raise ValueError(f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be (B, T)")
    if bool(mask[:, 0].any()):
        raise ValueError("mask[:, 0] is True, but nothing predicts a sequence's first token; keep it False")
    logits = model(ids)  # (B, T, V)
    lp = token_logprobs(logits, ids)  # (B, T)
    return (lp * mask.to(lp.dtype)).sum(dim=1)  # (B,)
