"""Validation loss, perplexity and bits per byte of a language model."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    data: Any,
    *,
    split: str = "val",
    batch_size: int = 8,
    seq_len: int = 256,
    max_batches: int = 50,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Mean next-token loss over fixed, evenly spaced windows of a split.

    Args:
        model: returns (B, T, V) logits from (B, T) ids.
        data: a :class:`~attnlab.data.TokenData`.
        split: ``"train"`` or ``"val"``.
        batch_size: windows per batch.
        seq_len: tokens per window.
        max_batches: cap on batches (windows are spread over the whole split).
        device: where the model lives.
        autocast: optional autocast context (bf16 on CUDA).

    Returns:
        ``loss`` (nats/token), ``ppl``, ``bpb`` (bits per UTF-8 byte of text, comparable
        across tokenizers) and ``tokens`` evaluated.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in data.eval_batches(split, batch_size, seq_len, max_batches):
        x, y = x.to(device), y.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum")
        total += loss.item()
        count += y.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError(f"no {split} tokens to evaluate")
    loss = total / count
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "bpb": loss / math.log(2) / data.bytes_per_token(split),
        "tokens": float(count),
    }
