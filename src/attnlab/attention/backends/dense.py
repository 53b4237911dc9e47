"""The dense attention kernel: the math eager runs whole and chunked runs per block.

scores = scale · q kᵀ + bias  →  score_mod  →  mask  →  top-k  →  softmax  →  dropout  →  weights · v

Two rules every dense computation in :mod:`attnlab.attention` follows, written once here:

- :func:`compute_dtype`: half-precision inputs (float16, bfloat16) are computed in float32
  and the result is cast back; other dtypes compute in their own precision.
- :func:`masked_softmax`: a query that may attend to nothing gets zero weights, never NaN
  (also in the backward pass).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to accumulate in: float32 for float16/bfloat16 inputs, else ``dtype`` itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def unmask_empty_rows(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make fully masked query rows harmless.

    A query that may attend to nothing has no defined softmax. We let such rows
    attend everywhere (so kernels never see an all -inf row and never produce NaN,
    also in the backward pass) and return which rows were empty so the caller can
    zero their output.

    Args:
        allowed: bool (..., Tq, Tk), e.g. (B|1, H|1, Tq, Tk).

    Returns:
        ``(allowed_fixed, empty)`` with ``empty`` bool (..., Tq, 1).
    """
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty, empty


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor | None = None,
                   topk: int | None = None) -> torch.Tensor:
    """Softmax over the last dimension restricted to the allowed keys.

    Args:
        scores: (..., Tq, Tk) float scores, already in the compute dtype.
        allowed: bool broadcastable to ``scores`` (True = may attend), or None (all allowed).
        topk: keep only each row's ``topk`` highest allowed scores (ties may keep more).

    Returns:
        (..., Tq, Tk) weights in ``scores.dtype``; rows with no allowed key are all zero.
    """
    empty = None
    if allowed is not None:
        allowed, empty = unmask_empty_rows(allowed)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if topk is not None and topk < scores.shape[-1]:
        # Content-dependent sparsity: keep each row's k best scores (ties may keep more).
        kth = scores.topk(topk, dim=-1).values[..., -1:]  # (..., Tq, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (..., Tq, Tk)
    if empty is not None:
        weights = weights.masked_fill(empty, 0.0)
    return weights


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, T, D) → (B, Hkv·n_rep, T, D): query head h reads kv head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    bias: torch.Tensor | None = None,
    score_mod: Callable[[torch.Tensor], torch.Tensor] | None = None,
    allowed: torch.Tensor | None = None,
    topk: int | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention through the explicit (Tq, Tk) weight matrix.

    Args:
        q: (B, H, Tq, D) queries.
        k: (B, Hkv, Tk, D) keys; H a multiple of Hkv.
        v: (B, Hkv, Tk, Dv) values.
        scale: multiplier of q·k.
        bias: float broadcastable to (B, H, Tq, Tk), added to the scaled scores.
        score_mod: maps the (B, H, Tq, Tk) scores (after the bias) to new scores.
        allowed: bool broadcastable to (B, H, Tq, Tk), True = may attend; None: all.
        topk: keep each query's ``topk`` best allowed keys.
        dropout_p: dropout on the weights.

    Returns:
        ``(out, weights)``: out (B, H, Tq, Dv) in ``q.dtype``, weights (B, H, Tq, Tk) in the
        compute dtype (see :func:`compute_dtype`).
    """
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, Tk, D)
    work = compute_dtype(q.dtype)
    scores = (q.to(work) @ k.to(work).transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias.to(work)
    if score_mod is not None:
        scores = score_mod(scores)
    weights = masked_softmax(scores, allowed, topk)  # (B, H, Tq, Tk)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = (weights @ v.to(work)).to(q.dtype)  # (B, H, Tq, Dv)
    return out, weights
