"""Logit and stopping rules shared by sampling and beam search: the repetition penalty and
token-id stop sequences."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float,
                             valid: torch.Tensor | None = None) -> torch.Tensor:
    """CTRL's repetition penalty: for every token already in a row's sequence, divide a
    positive logit by ``penalty`` and multiply a negative one by it.

    Args:
        logits: (N, V) next-token logits.
        tokens: (N, T) the sequence so far (prompt included).
        penalty: > 1 makes repeats less likely, 1 leaves the logits alone.
        valid: (N, T) bool, False for padding (not counted as seen); None: all real.

    Returns:
        (N, V) penalised logits.
    """
    if penalty == 1.0 or tokens.size(1) == 0:
        return logits
    seen = torch.ones_like(tokens) if valid is None else valid.long()  # (N, T)
    present = torch.zeros(logits.shape, dtype=torch.long, device=logits.device).scatter_add_(1, tokens, seen) > 0
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised, logits)  # (N, V)


def stop_tensors(stop: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Token-id stop sequences (validated by :class:`~attnlab.generate.config.SamplingConfig`) as 1-D long tensors."""
    return [torch.tensor(list(seq), dtype=torch.long) for seq in stop]


def ends_with_stop(generated: torch.Tensor, stops: list[torch.Tensor]) -> torch.Tensor:
    """(N,) bool: whether each row of (N, n) generated tokens ends with one of ``stops``."""
    hit = torch.zeros(generated.size(0), dtype=torch.bool, device=generated.device)
    for seq in stops:
        if seq.numel() <= generated.size(1):
            hit |= (generated[:, -seq.numel():] == seq.to(generated.device)).all(dim=1)
    return hit


__all__ = ["apply_repetition_penalty", "ends_with_stop", "stop_tensors"]
