"""Backend lookup and the ``"auto"`` choice.

``auto`` decides per call, from the device, dtype, sequence lengths, mask kind, score
mod and whether weights or gradients are needed (first matching rule wins):

1. ``eager`` when weights or top-k are requested (only it computes them).
2. A non-additive score mod (soft-capping): ``flex`` when Flex can serve (CUDA, or a
   long CPU forward without grad); ``chunked`` for long sequences otherwise; else ``eager``.
3. A decode step (Tq == 1): ``sdpa`` — a (1, Tk) dense mask is tiny and Flex would
   compile a kernel per cache length.
4. A structured predicate mask (``mask.key`` not None, not plain causal/full), an
   additive score mod, or a data-dependent predicate mask (``key`` None: it captures
   tensors, e.g. padding or document ids) on a long sequence: ``flex`` when it can serve
   and (on CUDA with a structured mask, or the sequence is long; a data-dependent mask takes
   Flex on CUDA only); ``chunked`` for long sequences Flex does not serve (CPU training, CPU
   data-dependent masks); otherwise ``sdpa`` with a dense mask/bias. (Flex rebuilds the
   block mask of a ``key``-None mask on every call.)
5. No mask, plain causal, short data-dependent predicate masks or dense tensor masks: ``sdpa``.

"Long" means Tq·Tk ≥ :data:`DENSE_LIMIT`, where a dense mask starts to cost real memory.
Flex is also skipped (rule 2/4) when its compile budget is spent (a new shape would
exceed dynamo's recompile limit). Every decision is recorded with the rule's name
(:func:`~attnlab.attention.backends.base.dispatch_log`). An explicit backend that cannot
serve a request raises a ValueError that names why; nothing silently falls back.
"""

from __future__ import annotations

from types import ModuleType

import torch

from attnlab.attention.backends import chunked, eager, flex, sdpa
from attnlab.attention.backends.base import AttentionCall, is_preparing, note_prepared, record_dispatch
from attnlab.attention.masks import Mask

BACKENDS: dict[str, ModuleType] = {"eager": eager, "sdpa": sdpa, "flex": flex, "chunked": chunked}

DENSE_LIMIT = 1024 * 1024  # Tq·Tk from which a dense (Tq, Tk) mask is "long"


def is_structured(mask: object) -> bool:
    """A predicate mask Flex/chunked can exploit: hashable ``key``, not plain causal or full."""
    return isinstance(mask, Mask) and getattr(mask, "key", None) is not None and mask.kind not in ("causal", "full")


def _flex_blocker(call: AttentionCall) -> str | None:
    """Why auto should not pick Flex for ``call`` (None: it may)."""
    why = flex.unsupported(call)
    if why is None and not flex.is_known(call) and flex.compile_budget_left() <= 1:
        why = "flex compile budget spent (a new shape would hit dynamo's recompile limit)"
    return why


def _auto(call: AttentionCall) -> tuple[str, str]:
    tq, tk = call.q.shape[-2], call.k.shape[-2]
    long = tq * tk >= DENSE_LIMIT
    cuda = call.q.device.type == "cuda"
    mod = call.score_mod
    if call.return_weights:
        return "eager", "auto: weights requested"
    if call.topk is not None:
        return "eager", "auto: top-k needs eager"
    if mod is not None and not mod.additive:
        flex_why = _flex_blocker(call) if (cuda or long) else "short sequence"
        if flex_why is None:
            return "flex", "auto: non-additive score mod on flex"
        if long and chunked.unsupported(call) is None:
            return "chunked", f"auto: non-additive score mod, long sequence, not flex: {flex_why}"
        return "eager", "auto: non-additive score mod, short sequence"
    if tq == 1:
        return "sdpa", "auto: decode step, tiny dense mask"
    structured = is_structured(call.mask)
    data_mask = long and isinstance(call.mask, Mask) and call.mask.key is None  # a dense mask would be (B, 1, Tq, Tk)
    if structured or data_mask or mod is not None:
        what = "structured mask" if structured else "data-dependent mask" if data_mask else "additive score mod"
        if data_mask and not cuda:  # its shapes vary per call (prompts, batches): not a compile per shape
            flex_why = "a data-dependent mask on CPU would compile Flex for every new shape"
        else:
            flex_why = _flex_blocker(call) if ((cuda and structured) or long) else "short sequence"
        if flex_why is None:
            return "flex", f"auto: {what} on flex"
        if long and chunked.unsupported(call) is None:
            return "chunked", f"auto: {what}, long sequence, not flex: {flex_why}"
        return "sdpa", f"auto: {what} as dense mask/bias, short sequence"
    if call.mask is None:
        return "sdpa", "auto: no mask, fused kernel"
    if isinstance(call.mask, Mask) and call.mask.kind == "causal":
        return "sdpa", "auto: causal, fused kernel"
    if isinstance(call.mask, Mask) and call.mask.key is None:
        return "sdpa", "auto: data-dependent mask as dense mask, short sequence"
    return "sdpa", "auto: dense mask"


def choose(call: AttentionCall, backend: str = "auto") -> tuple[str, str]:
    """Pick the backend for ``call``.

    Args:
        call: what to compute.
        backend: ``"auto"`` or one of :data:`BACKENDS`.

    Returns:
        ``(name, reason)``; for auto the reason names the rule that decided.

    Raises:
        ValueError: unknown backend, or an explicit backend that cannot serve the call.
    """
    if backend == "auto":
        return _auto(call)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend '{backend}'; choose one of auto, {', '.join(BACKENDS)}")
    why = BACKENDS[backend].unsupported(call)
    if why:
        raise ValueError(f"attention backend '{backend}' cannot serve this call: {why}")
    return backend, "requested"


def run(call: AttentionCall, backend: str = "auto") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Choose a backend, record the choice, run it."""
    name, reason = choose(call, backend)
    record_dispatch(name, reason, call)
    if is_preparing():  # prepare_masks: build the backend's per-shape caches, skip the math
        note_prepared(name, reason, call)
        prepare = getattr(BACKENDS[name], "prepare", None)
        if prepare is not None:
            prepare(call)
        out = call.q.new_zeros(*call.q.shape[:-1], call.v.shape[-1])  # (B, H, Tq, Dv)
        if call.return_weights:
            return out, call.q.new_zeros(*call.q.shape[:-1], call.k.shape[-2])  # (B, H, Tq, Tk)
        return out
    return BACKENDS[name].run(call)
