"""The eager backend: the readable reference that every fast backend is tested against.

scores = scale · q kᵀ + bias  →  score_mod  →  mask  →  top-k  →  softmax  →  dropout  →  weights · v
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.attention.backends.base import AttentionCall, unmask_empty_rows


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, T, D) → (B, Hkv·n_rep, T, D): query head h reads kv head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def unsupported(call: AttentionCall) -> str | None:
    """The eager backend serves every request."""
    return None


def run(call: AttentionCall) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    q, k, v = call.q, call.k, call.v
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, Tk, D)
    # Half-precision inputs: accumulate scores and softmax in float32.
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scores = (q.to(work) @ k.to(work).transpose(-2, -1)) * call.softmax_scale  # (B, H, Tq, Tk)
    if call.bias is not None:
        scores = scores + call.bias.to(work)
    if call.score_mod is not None:
        scores = call.score_mod.apply_dense(scores)
    allowed = call.dense_mask()
    empty = None
    if allowed is not None:
        allowed, empty = unmask_empty_rows(allowed)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if call.topk is not None and call.topk < scores.shape[-1]:
        # Content-dependent sparsity: keep each row's k best scores (ties may keep more).
        kth = scores.topk(call.topk, dim=-1).values[..., -1:]  # (B, H, Tq, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk)
    if empty is not None:
        weights = weights.masked_fill(empty, 0.0)
    if call.dropout_p > 0.0:
        weights = F.dropout(weights, p=call.dropout_p)
    out = (weights @ v.to(work)).to(q.dtype)  # (B, H, Tq, Dv)
    if call.return_weights:
        return out, weights.to(q.dtype)
    return out
