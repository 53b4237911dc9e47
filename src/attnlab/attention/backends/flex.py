"""The FlexAttention backend: ``torch.nn.attention.flex_attention`` with a fused, compiled kernel.

A :class:`~attnlab.attention.masks.Mask` predicate becomes a Flex ``BlockMask`` and a
:class:`~attnlab.attention.score_mods.ScoreMod` becomes Flex's ``score_mod``; GQA runs
natively (``enable_gqa``). Queries are bottom-right aligned: with Tq < Tk, query ``i``
sits at absolute position ``Tk - Tq + i``, so both the mask and the score mod see
``q_idx + (Tk - Tq)``.

Caching and compilation:

- Everything cached lives in one :class:`FlexState` (:data:`STATE`, ``STATE.reset()``).
- Block masks are built once per ``(mask.key, B|None, H|None, Tq, Tk, device)`` and kept
  in a bounded LRU cache. A mask whose ``key`` is None (it captures tensors: padding,
  document ids) cannot be identified by value, so its block mask is rebuilt on every call.
- One compiled ``flex_attention`` (``torch.compile(fullgraph=True, dynamic=False)``) is
  created lazily and reused. Each new shape, dtype, mask/score-mod code or captured
  Python constant compiles once more. When dynamo's recompile limit is reached, PyTorch
  would silently run the unfused, ~50x slower path; we turn that into an error
  (``fail_on_recompile_limit_hit``) and count compiles in :func:`stats`.
- Inside an outer ``torch.compile`` region we call ``flex_attention`` directly and let
  the outer compile fuse it.

On CPU, Flex runs forward only (no backward), in float32/float16/bfloat16.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from attnlab.attention.backends.base import AttentionCall, needs_grad
from attnlab.attention.masks import Mask

_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_MASK_CACHE_SIZE = 64

COUNTERS = ("calls", "compiles", "block_mask_hits", "block_mask_misses", "block_mask_uncached")


@dataclass
class FlexState:
    """Everything the Flex backend caches and counts.

    Attributes:
        block_masks: ``BlockMask`` per (mask key, shape), least recently used first.
        limit: how many block masks to keep.
        counters: ``calls``, ``compiles``, ``block_mask_hits``/``misses``/``uncached``.
        kernel: the compiled ``flex_attention``, made on first use.
        signatures: what ``kernel`` has been specialised on (see :func:`signature`).
    """

    block_masks: OrderedDict[tuple, Any] = field(default_factory=OrderedDict)
    limit: int = BLOCK_MASK_CACHE_SIZE
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    kernel: Callable[..., torch.Tensor] | None = None
    signatures: set[tuple] = field(default_factory=set)

    def reset(self, kernel: bool = False) -> None:
        """Zero the counters and empty the block-mask cache.

        Args:
            kernel: also drop the compiled kernel and its signatures (the next call compiles anew).
        """
        for name in self.counters:
            self.counters[name] = 0
        self.block_masks.clear()
        if kernel:
            self.kernel = None
            self.signatures.clear()


STATE = FlexState()


class FlexRecompileError(RuntimeError):
    """torch.compile of flex_attention hit dynamo's recompile limit (it would run unfused and slow)."""


def available() -> bool:
    """Whether this PyTorch has FlexAttention and torch.compile support."""
    if torch.compiler.is_compiling():  # being traced: dynamo works (and its own check would break the graph)
        return True
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return torch._dynamo.is_dynamo_supported()


def unsupported(call: AttentionCall) -> str | None:
    """Why Flex cannot serve ``call``, or None when it can."""
    q, v = call.q, call.v
    if not available():
        return "FlexAttention needs torch.nn.attention.flex_attention and torch.compile (dynamo) support"
    if call.return_weights:
        return "Flex does not return attention weights (use backend='eager')"
    if call.topk is not None:
        return "top-k attention is content-dependent; only the eager backend computes it"
    if call.dropout_p > 0.0:
        return "Flex has no attention dropout (use sdpa, chunked or eager, or dropout_p=0)"
    if call.mask is not None and not isinstance(call.mask, Mask):
        return "Flex needs a Mask predicate, not a dense tensor mask (use sdpa, or build a Mask)"
    if call.bias is not None:
        return "Flex does not take a dense bias tensor (pass an additive ScoreMod, or use sdpa)"
    device = q.device.type
    if device not in ("cpu", "cuda"):
        return f"Flex runs on CPU and CUDA here, not {device}"
    dtypes = _CPU_DTYPES if device == "cpu" else _CUDA_DTYPES
    if q.dtype not in dtypes:
        return f"Flex on {device} supports {', '.join(str(d).replace('torch.', '') for d in dtypes)}, not {q.dtype}"
    if device == "cpu" and needs_grad(call):
        return "Flex on CPU is forward-only (no backward); use backend='chunked' for CPU training"
    d, dv = q.shape[-1], v.shape[-1]
    if d < 16 or d & (d - 1) or dv < 16 or dv & (dv - 1):
        return f"Flex here needs power-of-two head dims >= 16, got D={d}, Dv={dv}"
    return None


def _offset_mask_mod(mask: Mask, offset: int) -> Callable:
    """The mask as a Flex mask_mod whose q_idx is shifted to absolute positions."""
    if offset == 0:
        return mask.fn
    fn = mask.fn

    def mask_mod(b, h, q_idx, kv_idx):
        return fn(b, h, q_idx + offset, kv_idx)

    return mask_mod


def _offset_score_mod(mod: Any, offset: int) -> Callable:
    """The score mod as a Flex score_mod whose q_idx is shifted to absolute positions."""
    fn = mod.fn
    if offset == 0:
        return fn

    def score_mod(score, b, h, q_idx, kv_idx):
        return fn(score, b, h, q_idx + offset, kv_idx)

    return score_mod


def block_mask_for(mask: Mask, batch: int, heads: int, tq: int, tk: int, device: torch.device) -> Any:
    """The Flex ``BlockMask`` of ``mask`` for this shape, from the LRU cache when possible.

    Masks with ``key`` None are rebuilt on every call (they capture tensors and cannot be
    identified by value). Inside a ``torch.compile`` trace the cache is only read (counters
    and LRU order would become guards and recompile every call); a miss there is traced
    into the graph and rebuilt on every call, which
    :func:`~attnlab.attention.backends.base.prepare_masks` avoids.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    nb = batch if mask.per_batch else None
    nh = heads if mask.per_head else None
    key: Hashable | None = getattr(mask, "key", None)
    cache_key = None if key is None else (key, nb, nh, tq, tk, str(device))
    cache = STATE.block_masks
    if torch.compiler.is_compiling():
        cached = None if cache_key is None else cache.get(cache_key)
        if cached is not None:
            return cached
        return create_block_mask(_offset_mask_mod(mask, tk - tq), nb, nh, tq, tk, device=device)
    counters = STATE.counters
    if cache_key is not None and cache_key in cache:
        cache.move_to_end(cache_key)
        counters["block_mask_hits"] += 1
        return cache[cache_key]
    block_mask = create_block_mask(_offset_mask_mod(mask, tk - tq), nb, nh, tq, tk, device=device)
    if cache_key is None:
        counters["block_mask_uncached"] += 1
        return block_mask
    counters["block_mask_misses"] += 1
    cache[cache_key] = block_mask
    if len(cache) > STATE.limit:
        cache.popitem(last=False)
    return block_mask


def prepare(call: AttentionCall) -> None:
    """Build and cache the block mask of ``call`` (see :func:`~attnlab.attention.backends.base.prepare_masks`)."""
    if call.mask is not None:
        block_mask_for(call.mask, call.q.shape[0], call.q.shape[1], call.q.shape[-2], call.k.shape[-2], call.q.device)


def _compiled_flex() -> Callable[..., torch.Tensor]:
    """The compiled ``flex_attention``, made once and kept in :data:`STATE`."""
    if STATE.kernel is None:
        from torch.nn.attention.flex_attention import flex_attention

        STATE.kernel = torch.compile(flex_attention, fullgraph=True, dynamic=False)
    return STATE.kernel


def signature(call: AttentionCall) -> tuple:
    """What a compiled Flex kernel is specialised on (shapes, dtype, device, mask and mod identity)."""
    mask, mod = call.mask, call.score_mod
    mask_id = None if mask is None else (getattr(mask, "key", None) or mask.kind)
    mod_id = None if mod is None else mod.key
    return (tuple(call.q.shape), tuple(call.k.shape), tuple(call.v.shape), call.q.dtype, call.q.device.type,
            mask_id, mod_id, torch.is_grad_enabled())


def compile_budget_left() -> int:
    """Roughly how many new signatures can still compile before dynamo's recompile limit."""
    return int(torch._dynamo.config.recompile_limit) - len(STATE.signatures)


def is_known(call: AttentionCall) -> bool:
    """Whether a call with this signature already ran on Flex (so it needs no new compile)."""
    return signature(call) in STATE.signatures


def run(call: AttentionCall) -> torch.Tensor:
    q, k, v = call.q, call.k, call.v
    (batch, heads, tq, _), tk = q.shape, k.shape[-2]
    offset = tk - tq
    block_mask = None
    if call.mask is not None:
        block_mask = block_mask_for(call.mask, batch, heads, tq, tk, q.device)
    score_mod = None if call.score_mod is None else _offset_score_mod(call.score_mod, offset)
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=call.softmax_scale,
                  enable_gqa=q.shape[1] != k.shape[1])
    if torch.compiler.is_compiling():  # an outer torch.compile traces and fuses it
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, **kwargs)  # (B, H, Tq, Dv)
    from torch._dynamo.utils import counters

    fn = _compiled_flex()
    before = counters["stats"]["unique_graphs"]
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, suppress_errors=False):
            out = fn(q, k, v, **kwargs)  # (B, H, Tq, Dv)
    except torch._dynamo.exc.FailOnRecompileLimitHit as e:
        limit = torch._dynamo.config.recompile_limit
        raise FlexRecompileError(
            f"flex attention hit torch._dynamo.config.recompile_limit={limit} (too many distinct shapes, "
            "dtypes or mask/score-mod constants); it would run unfused and ~50x slower. Use fewer shapes, "
            "raise the limit, or pick backend='sdpa'/'chunked'"
        ) from e
    STATE.counters["calls"] += 1
    STATE.counters["compiles"] += counters["stats"]["unique_graphs"] - before
    STATE.signatures.add(signature(call))
    return out


def stats(reset: bool = False) -> dict[str, int]:
    """Counters: ``calls``, ``compiles``, ``block_mask_hits``/``misses``/``uncached``, ``cached_block_masks``.

    Args:
        reset: zero the counters and empty the block-mask cache afterwards (compiled
            kernels stay): ``STATE.reset()``.
    """
    out = dict(STATE.counters, cached_block_masks=len(STATE.block_masks))
    if reset:
        STATE.reset()
    return out
