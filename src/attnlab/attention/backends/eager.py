"""The eager backend: the readable reference that every fast backend is tested against.

It runs :func:`~attnlab.attention.backends.dense.dense_attention` on the whole (Tq, Tk)
score matrix: the only backend that returns the weights and computes top-k.
"""

from __future__ import annotations

import torch

from attnlab.attention.backends.base import AttentionCall
from attnlab.attention.backends.dense import dense_attention, repeat_kv

__all__ = ["prepare", "repeat_kv", "run", "unsupported"]


def unsupported(call: AttentionCall) -> str | None:
    """The eager backend serves every request."""
    return None


def prepare(call: AttentionCall) -> None:
    """Nothing to cache: eager evaluates the dense mask on every call."""


def run(call: AttentionCall) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention through the full (B, H, Tq, Tk) weights, computed in float32 for half-precision inputs."""
    mod = call.score_mod
    out, weights = dense_attention(
        call.q, call.k, call.v, scale=call.softmax_scale, bias=call.bias,
        score_mod=None if mod is None else mod.apply_dense, allowed=call.dense_mask(), topk=call.topk,
        dropout_p=call.dropout_p,
    )  # (B, H, Tq, Dv), (B, H, Tq, Tk)
    if call.return_weights:
        return out, weights.to(call.q.dtype)
    return out
