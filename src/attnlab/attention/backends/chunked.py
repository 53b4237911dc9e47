"""The chunked backend: blockwise attention in plain PyTorch, forward and backward, any device.

Queries are processed in blocks of ``block_size`` rows. For each block the mask is
evaluated on the (block × Tk) index grid, the key range that holds any allowed entry is
found (fully masked keys before and after it are skipped), and scores, softmax and the
weighted sum are computed on that range only. With a sliding window of width W the
memory is O(T · (W + block)) instead of O(T²). Under autograd each block runs inside
``torch.utils.checkpoint`` so the backward pass recomputes it instead of keeping every
block's scores: backward memory stays linear in T too.

Each block runs :func:`~attnlab.attention.backends.dense.dense_attention`, the kernel of
the eager backend. For a mask with a hashable ``key`` the per-block key ranges (the "plan")
are cached per shape in :data:`STATE`, so repeated training steps skip the full-grid scan.
Masks with ``key`` None (padding, document ids) are scanned on every call.

This is the path for CPU training with structured masks (Flex is forward-only on CPU).
A query that may attend to nothing outputs zeros, never NaN.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from attnlab.attention.backends.base import AttentionCall, needs_grad
from attnlab.attention.backends.dense import dense_attention
from attnlab.attention.masks import Mask

BLOCK_SIZE = 256
PLAN_CACHE_SIZE = 64

Plan = list[tuple[int, int, int, int]]  # (q_start, q_end, kv_start, kv_end) per query block


@dataclass
class ChunkedState:
    """What the chunked backend caches: block plans per (mask key, shape), least recently used first."""

    plans: OrderedDict[tuple, Plan] = field(default_factory=OrderedDict)
    limit: int = PLAN_CACHE_SIZE

    def reset(self) -> None:
        """Forget the cached block plans."""
        self.plans.clear()


STATE = ChunkedState()


def unsupported(call: AttentionCall) -> str | None:
    """Why the chunked backend cannot serve ``call``, or None when it can."""
    if call.return_weights:
        return "the chunked backend never materialises the (Tq, Tk) weights (use backend='eager')"
    if call.topk is not None:
        return "top-k attention is content-dependent; only the eager backend computes it"
    return None


def _grid(batch: int, heads: int, positions: torch.Tensor, keys: torch.Tensor, per_batch: bool,
          per_head: bool) -> tuple[torch.Tensor, ...]:
    """Broadcastable (b, h, q_idx, kv_idx) index tensors for one query block."""
    nb, nh = (batch if per_batch else 1), (heads if per_head else 1)
    device = positions.device
    return (torch.arange(nb, device=device).view(nb, 1, 1, 1), torch.arange(nh, device=device).view(1, nh, 1, 1),
            positions.view(1, 1, -1, 1), keys.view(1, 1, 1, -1))


def _allowed(call: AttentionCall, s: int, e: int, lo: int, hi: int) -> torch.Tensor | None:
    """The mask on query rows [s, e) × keys [lo, hi) as bool (B|1, H|1, e-s, hi-lo), or None."""
    mask = call.mask
    if mask is None:
        return None
    batch, heads, tq, _ = call.q.shape
    tk = call.k.shape[-2]
    if isinstance(mask, Mask):
        device = call.q.device
        pos = torch.arange(tk - tq + s, tk - tq + e, device=device)
        grid = _grid(batch, heads, pos, torch.arange(lo, hi, device=device), mask.per_batch, mask.per_head)
        out = mask.fn(*grid)
        nb, nh = grid[0].shape[0], grid[1].shape[1]
        return out.expand(nb, nh, e - s, hi - lo)
    dense = call.dense_mask()  # (B|1, H|1, Tq|1, Tk|1)
    return dense.expand(*dense.shape[:2], tq, tk)[..., s:e, lo:hi]


def plan(call: AttentionCall, block_size: int = BLOCK_SIZE) -> Plan:
    """Per query block, the key range ``[lo, hi)`` holding every allowed key (``lo == hi``: none)."""
    tq, tk = call.q.shape[-2], call.k.shape[-2]
    mask = call.mask
    key = getattr(mask, "key", None) if isinstance(mask, Mask) else None
    batch, heads = call.q.shape[:2]
    cache_key = None
    if key is not None:
        cache_key = (key, batch if mask.per_batch else 1, heads if mask.per_head else 1, tq, tk, block_size,
                     str(call.q.device))
        plans = STATE.plans
        if cache_key in plans:
            if not torch.compiler.is_compiling():  # traced, the LRU update would become a guard
                plans.move_to_end(cache_key)
            return plans[cache_key]
    out: Plan = []
    for s in range(0, tq, block_size):
        e = min(s + block_size, tq)
        allowed = _allowed(call, s, e, 0, tk)
        if allowed is None:
            out.append((s, e, 0, tk))
            continue
        cols = allowed.reshape(-1, tk).any(dim=0).nonzero()  # (n, 1) allowed key indices
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
        out.append((s, e, lo, hi))
    if cache_key is not None:
        STATE.plans[cache_key] = out
        if len(STATE.plans) > STATE.limit:
            STATE.plans.popitem(last=False)
    return out


def _block(call: AttentionCall, s: int, lo: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           allowed: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """Attention of query rows starting at ``s`` over keys starting at ``lo`` (one block): (B, H, n, Dv)."""
    mod = call.score_mod
    score_mod = None
    if mod is not None:
        batch, heads, n, _ = q.shape
        tq, tk = call.q.shape[-2], call.k.shape[-2]
        pos = torch.arange(tk - tq + s, tk - tq + s + n, device=q.device)
        keys = torch.arange(lo, lo + k.shape[-2], device=q.device)
        grid = _grid(batch, heads, pos, keys, True, True)

        def score_mod(scores: torch.Tensor) -> torch.Tensor:  # (B, H, n, w) at absolute positions
            return mod.fn(scores, *grid)

    out, _ = dense_attention(q, k, v, scale=call.softmax_scale, bias=bias, score_mod=score_mod, allowed=allowed,
                             dropout_p=call.dropout_p)
    return out


def run(call: AttentionCall, block_size: int = BLOCK_SIZE, use_checkpoint: bool | None = None) -> torch.Tensor:
    """Blockwise attention.

    Args:
        call: what to compute.
        block_size: query rows per block.
        use_checkpoint: recompute each block in backward (default: when autograd records).

    Returns:
        (B, H, Tq, Dv) output.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    q, k, v = call.q, call.k, call.v
    batch, heads, tq, _ = q.shape
    tk, dv = k.shape[-2], v.shape[-1]
    if use_checkpoint is None:
        use_checkpoint = needs_grad(call)
    bias = None if call.bias is None else torch.broadcast_to(call.bias, (batch, heads, tq, tk))
    outs = []
    for s, e, lo, hi in plan(call, block_size):
        if lo == hi:  # every query of the block is fully masked: zero output
            outs.append(q.new_zeros(batch, heads, e - s, dv))
            continue
        allowed = _allowed(call, s, e, lo, hi)
        if allowed is not None:
            allowed = allowed.contiguous()  # drop any view of a larger grid
        args = (q[:, :, s:e], k[:, :, lo:hi], v[:, :, lo:hi], allowed,
                None if bias is None else bias[:, :, s:e, lo:hi])
        if use_checkpoint:
            outs.append(checkpoint(_block, call, s, lo, *args, use_reentrant=False))
        else:
            outs.append(_block(call, s, lo, *args))
    return torch.cat(outs, dim=-2)  # (B, H, Tq, Dv)


def prepare(call: AttentionCall) -> None:
    """Build and cache the block plan of ``call`` (see :func:`~attnlab.attention.backends.base.prepare_masks`)."""
    plan(call)


def clear_cache() -> None:
    """Forget the cached block plans (``STATE.reset()``)."""
    STATE.reset()
