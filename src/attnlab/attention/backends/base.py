"""The request every backend serves, and the record of which backend ran."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

from attnlab.attention.masks import Mask
from attnlab.attention.score_mods import ScoreMod

logger = logging.getLogger("attnlab.attention")


@dataclass
class AttentionCall:
    """What attention must compute, independent of how.

    Attributes:
        q: (B, H, Tq, D) queries.
        k: (B, Hkv, Tk, D) keys; H must be a multiple of Hkv (GQA/MQA).
        v: (B, Hkv, Tk, Dv) values.
        mask: a :class:`Mask` predicate, a bool tensor broadcastable to (B, H, Tq, Tk)
            (True = may attend), or None.
        bias: float tensor broadcastable to (B, H, Tq, Tk) added to the scores, or None.
        scale: multiplier of q·k (default 1/sqrt(D)).
        dropout_p: dropout on the attention weights.
        return_weights: also return the (B, H, Tq, Tk) weights.
        score_mod: a :class:`ScoreMod` applied to the scaled scores (ALiBi, relative bias,
            soft-capping), before masking.
        topk: keep only each query's k highest-scoring allowed keys (content-dependent sparsity).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: Optional[Union[Mask, torch.Tensor]] = None
    bias: Optional[torch.Tensor] = None
    scale: Optional[float] = None
    dropout_p: float = 0.0
    return_weights: bool = False
    score_mod: Optional[ScoreMod] = None
    topk: Optional[int] = None

    @property
    def softmax_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.q.shape[-1])

    @property
    def mask_kind(self) -> str:
        kind = "none" if self.mask is None else self.mask.kind if isinstance(self.mask, Mask) else "dense"
        if self.score_mod is not None:
            kind += f"+{self.score_mod.kind}"
        if self.topk is not None:
            kind += f"+top{self.topk}"
        return kind

    def dense_mask(self) -> Optional[torch.Tensor]:
        """The mask as a bool tensor (B|1, H|1, Tq, Tk), or None when there is none."""
        if self.mask is None:
            return None
        if isinstance(self.mask, Mask):
            b, h, tq, _ = self.q.shape
            return self.mask.dense(b, h, tq, self.k.shape[-2], self.q.device)
        m = self.mask
        if m.dtype != torch.bool:
            raise TypeError(f"a tensor mask must be bool (True = may attend), got {m.dtype}")
        while m.dim() < 4:
            m = m.unsqueeze(0)
        return m


def needs_grad(call: AttentionCall) -> bool:
    """Whether this call is part of a backward pass (during :func:`prepare_masks`: whether it will be)."""
    if _prepare["on"]:
        return bool(_prepare["grad"])
    return torch.is_grad_enabled() and any(t.requires_grad for t in (call.q, call.k, call.v))


def unmask_empty_rows(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make fully masked query rows harmless.

    A query that may attend to nothing has no defined softmax. We let such rows
    attend everywhere (so kernels never see an all -inf row and never produce NaN,
    also in the backward pass) and return which rows were empty so the caller can
    zero their output.

    Args:
        allowed: bool (B|1, H|1, Tq, Tk).

    Returns:
        ``(allowed_fixed, empty)`` with ``empty`` bool (B|1, H|1, Tq, 1).
    """
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty, empty


# -- which backend ran --------------------------------------------------------

_MAX_RECORDS = 256
_records: dict[tuple, dict] = {}


def record_dispatch(backend: str, reason: str, call: AttentionCall) -> None:
    """Remember (and log once at INFO) each new backend/shape/mask combination."""
    if torch.compiler.is_compiling():
        return
    key = (backend, call.mask_kind, call.bias is not None, tuple(call.q.shape), tuple(call.k.shape), call.q.dtype, call.q.device.type)
    if key in _records:
        _records[key]["count"] += 1
        return
    if len(_records) >= _MAX_RECORDS:
        _records.pop(next(iter(_records)))
    _records[key] = {
        "backend": backend,
        "reason": reason,
        "mask": call.mask_kind,
        "bias": call.bias is not None,
        "q_shape": tuple(call.q.shape),
        "k_shape": tuple(call.k.shape),
        "dtype": str(call.q.dtype).replace("torch.", ""),
        "device": call.q.device.type,
        "count": 1,
    }
    logger.info("attention: %s (%s) mask=%s q=%s k=%s %s", backend, reason, call.mask_kind,
                tuple(call.q.shape), tuple(call.k.shape), call.q.dtype)


def dispatch_log(clear: bool = False) -> list[dict]:
    """Which backend ran for each distinct call seen so far, in first-seen order.

    Args:
        clear: forget the records after returning them.
    """
    out = [dict(r) for r in _records.values()]
    if clear:
        _records.clear()
    return out


# -- preparing cached mask structures before torch.compile ---------------------
#
# Flex block masks and chunked block plans are cached per (mask key, shape). Built inside
# a torch.compile trace they would be traced into the graph (a full Tq x Tk mask evaluation
# on every step) or break the graph (the chunked plan reads tensor values). One eager pass
# in "prepare" mode fills the caches; the compiled graph then reads them as constants.

_prepare: dict[str, Any] = {"on": False, "grad": False, "used": []}


def is_preparing() -> bool:
    """Whether a :func:`prepare_masks` pass is running (backends build caches, skip the math)."""
    return _prepare["on"]


def note_prepared(backend: str, reason: str, call: AttentionCall) -> None:
    """Record, during :func:`prepare_masks`, which backend a call will use."""
    _prepare["used"].append({"backend": backend, "reason": reason, "mask": call.mask_kind,
                             "q_shape": tuple(call.q.shape), "k_shape": tuple(call.k.shape)})


def prepare_masks(fn: Callable[..., Any], *args: Any, grad: bool, **kwargs: Any) -> list[dict]:
    """Build the attention caches ``fn(*args, **kwargs)`` will need, without computing attention.

    Runs ``fn`` once, eagerly and without autograd, with every attention call answered by
    zeros after its backend has built what it caches per shape (Flex ``BlockMask``,
    chunked block plan). Call it before the first call of a ``torch.compile``-d model so
    the trace finds them cached; otherwise they are rebuilt inside the graph on every call.

    Args:
        fn: the callable that will be compiled, e.g. the model or a loss of the model.
        *args: inputs of the shapes it will see.
        grad: whether the compiled calls will need a backward pass (backends are chosen
            as they will be then: Flex has no CPU backward).
        **kwargs: more inputs.

    Returns:
        One record per attention call: ``backend``, ``reason``, ``mask``, ``q_shape``, ``k_shape``.
    """
    if torch.compiler.is_compiling():
        raise RuntimeError("prepare_masks runs eagerly, before torch.compile; call it outside the compiled function")
    if _prepare["on"]:
        raise RuntimeError("prepare_masks is already running; it does not nest")
    _prepare.update(on=True, grad=grad, used=[])
    try:
        with torch.no_grad():
            fn(*args, **kwargs)
        return _prepare["used"]
    finally:
        _prepare.update(on=False, grad=False, used=[])
