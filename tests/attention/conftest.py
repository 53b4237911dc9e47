"""A float64 attention reference written independently of attnlab, shared by the attention tests."""

from __future__ import annotations

import pytest
import torch


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scale + bias, masked) v in float64, differentiable.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D); query head h reads kv head h // (H / Hkv).
    ``allowed`` is a bool tensor broadcastable to (B, H, Tq, Tk) (True = may attend).
    A query row with no allowed key gets all-zero weights and a zero output.

    Returns:
        (out (B, H, Tq, Dv), weights (B, H, Tq, Tk)), both float64.
    """
    q, k, v = q.double(), k.double(), v.double()
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    kv_head = torch.tensor([i // group for i in range(h)])
    k, v = k[:, kv_head], v[:, kv_head]  # (B, H, Tk, D)
    scale = d ** -0.5 if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if bias is not None:
        scores = scores + bias.double()
    if allowed is None:
        allowed = torch.ones(b, h, tq, tk, dtype=torch.bool)
    allowed = torch.broadcast_to(allowed, (b, h, tq, tk))
    row_ok = allowed.any(dim=-1, keepdim=True)  # (B, H, Tq, 1)
    # A numerically safe masked softmax: exp of (score - row max) over allowed keys only.
    row_max = torch.where(allowed, scores, torch.full_like(scores, -1e300)).amax(-1, keepdim=True)
    row_max = torch.where(row_ok, row_max, torch.zeros_like(row_max)).detach()
    safe = torch.where(allowed, scores, row_max.expand_as(scores))  # masked entries: exp(0) · 0
    e = torch.exp(safe - row_max) * allowed
    denom = e.sum(-1, keepdim=True)
    weights = e / torch.where(row_ok, denom, torch.ones_like(denom))
    out = torch.einsum("bhij,bhjd->bhid", weights, v)
    return out, weights


@pytest.fixture
def reference():
    """The float64 reference ``(q, k, v, allowed=None, bias=None, scale=None) -> (out, weights)``."""
    return reference_attention
