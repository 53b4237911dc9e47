"""The one attention function every model calls."""

from __future__ import annotations

import torch

from attnlab.attention.backends import AttentionCall, run
from attnlab.attention.masks import Mask
from attnlab.attention.score_mods import ScoreMod


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError unless q (B, H, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) fit together."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible shapes q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: Mask | torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
    return_weights: bool = False,
    score_mod: ScoreMod | None = None,
    topk: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention: softmax(scale · q kᵀ + bias, masked) · v.

    Args:
        q: (B, H, Tq, D) queries.
        k: (B, Hkv, Tk, D) keys; H must be a multiple of Hkv (GQA / MQA).
        v: (B, Hkv, Tk, Dv) values.
        mask: a :class:`~attnlab.attention.masks.Mask` predicate or a bool tensor
            broadcastable to (B, H, Tq, Tk), True = may attend. Query i sits at
            position Tk - Tq + i. A query that may attend to nothing outputs zeros.
        bias: float tensor broadcastable to (B, H, Tq, Tk) added to the scores.
        scale: score multiplier, default 1/sqrt(D).
        dropout_p: dropout on the weights (pass 0 at eval time).
        backend: ``"auto"``, ``"eager"``, ``"sdpa"``, ``"flex"``, ``"chunked"``, or a name given to
            :func:`~attnlab.attention.backends.registry.register_backend`.
        return_weights: also return the attention weights.
        score_mod: a :class:`~attnlab.attention.score_mods.ScoreMod` applied to the scaled
            scores before masking (ALiBi, relative position bias, soft-capping).
        topk: keep only each query's ``topk`` best-scoring keys (eager only).

    Returns:
        (B, H, Tq, Dv) output, or ``(output, weights)`` with weights (B, H, Tq, Tk).

    Raises:
        ValueError: for mismatched shapes or a backend that cannot serve the call.
    """
    check_qkv(q, k, v)
    if topk is not None and topk <= 0:
        raise ValueError(f"topk must be positive, got {topk}")
    call = AttentionCall(q, k, v, mask=mask, bias=bias, scale=scale, dropout_p=dropout_p,
                         return_weights=return_weights, score_mod=score_mod, topk=topk)
    return run(call, backend)
