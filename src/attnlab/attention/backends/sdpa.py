"""The SDPA backend: ``torch.nn.functional.scaled_dot_product_attention``.

PyTorch picks its fastest kernel (flash, memory-efficient, cuDNN, math). We pass
``is_causal=True`` instead of a dense mask whenever the mask is plain causal with
Tq == Tk (SDPA aligns ``is_causal`` top-left, so it is wrong for Tq != Tk); a single
decode query under a causal mask needs no mask at all. Anything else becomes a dense
boolean (or, with a bias, float) mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.attention.backends.base import AttentionCall
from attnlab.attention.backends.dense import unmask_empty_rows
from attnlab.attention.masks import is_kind


def unsupported(call: AttentionCall) -> str | None:
    """Why SDPA cannot serve ``call``, or None when it can."""
    if call.return_weights:
        return "SDPA kernels do not return attention weights (use backend='eager' or 'auto')"
    if call.score_mod is not None and not call.score_mod.additive:
        return f"score mod '{call.score_mod.kind}' is not additive; SDPA can only add a bias (use eager or flex)"
    if call.topk is not None:
        return "top-k attention is content-dependent; only the eager backend computes it"
    return None


def prepare(call: AttentionCall) -> None:
    """Nothing to cache: the dense mask is built on every call."""


def run(call: AttentionCall) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with ``is_causal`` or a dense (bool or float) mask: (B, H, Tq, Dv)."""
    q, k, v = call.q, call.k, call.v
    tq, tk = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    kwargs = dict(dropout_p=call.dropout_p, scale=call.softmax_scale, enable_gqa=gqa)
    bias = call.bias
    if call.score_mod is not None:  # additive (checked in unsupported): materialise it
        mod = call.score_mod.dense_bias(q.shape[0], q.shape[1], tq, tk, q.device, q.dtype)
        bias = mod if bias is None else bias + mod
    if bias is None and (call.mask is None or (is_kind(call.mask, "causal") and tq == 1)):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)  # (B, H, Tq, Dv)
    if bias is None and is_kind(call.mask, "causal") and tq == tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
    allowed = call.dense_mask()
    empty = None
    if allowed is not None:
        allowed, empty = unmask_empty_rows(allowed)
    if bias is None:
        attn_mask = allowed
    else:
        attn_mask = bias.to(q.dtype)
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out
