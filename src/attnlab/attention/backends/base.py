"""The request every backend serves, and the record of which backend ran."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Union

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
