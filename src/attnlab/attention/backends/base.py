"""The contract of a backend: the request it serves (:class:`AttentionCall`), the three
methods it implements (:class:`Backend`), the record of which backend ran, and the
``prepare_masks`` pass that fills backend caches before ``torch.compile``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    mask: Mask | torch.Tensor | None = None
    bias: torch.Tensor | None = None
    scale: float | None = None
    dropout_p: float = 0.0
    return_weights: bool = False
    score_mod: ScoreMod | None = None
    topk: int | None = None

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

    def dense_mask(self) -> torch.Tensor | None:
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


class Backend(Protocol):
    """How attention runs: what every backend implements (a class instance or a module).

    Register one with :func:`~attnlab.attention.backends.registry.register_backend`; then
    ``attention(..., backend=name)`` runs it. ``auto`` picks only among the built-in backends.
    """

    def unsupported(self, call: AttentionCall) -> str | None:
        """Why this backend cannot serve ``call`` (one line naming the fix), or None when it can."""
        ...

    def prepare(self, call: AttentionCall) -> None:
        """Build what the backend caches per shape for ``call`` (see :func:`prepare_masks`); may do nothing."""
        ...

    def run(self, call: AttentionCall) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The (B, H, Tq, Dv) output, or ``(output, weights)`` when ``call.return_weights``."""
        ...


BACKEND_METHODS = ("unsupported", "prepare", "run")


def needs_grad(call: AttentionCall) -> bool:
    """Whether this call is part of a backward pass (during :func:`prepare_masks`: whether it will be)."""
    if PREPARE.on:
        return PREPARE.grad
    return torch.is_grad_enabled() and any(t.requires_grad for t in (call.q, call.k, call.v))


# -- which backend ran --------------------------------------------------------


@dataclass
class DispatchRecords:
    """The dispatch log: one record per distinct (backend, mask, shapes, dtype, device), bounded."""

    limit: int = 256
    records: dict[tuple, dict] = field(default_factory=dict)

    def add(self, backend: str, reason: str, call: AttentionCall) -> None:
        """Count ``call`` under its key; a new key is recorded (oldest dropped past ``limit``) and logged."""
        key = (backend, call.mask_kind, call.bias is not None, tuple(call.q.shape), tuple(call.k.shape),
               call.q.dtype, call.q.device.type)
        if key in self.records:
            self.records[key]["count"] += 1
            return
        if len(self.records) >= self.limit:
            self.records.pop(next(iter(self.records)))
        self.records[key] = {
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

    def reset(self) -> None:
        """Forget every record."""
        self.records.clear()


DISPATCH = DispatchRecords()


def record_dispatch(backend: str, reason: str, call: AttentionCall) -> None:
    """Remember (and log once at INFO) each new backend/shape/mask combination."""
    if torch.compiler.is_compiling():
        return
    DISPATCH.add(backend, reason, call)


def dispatch_log(clear: bool = False) -> list[dict]:
    """Which backend ran for each distinct call seen so far, in first-seen order.

    Args:
        clear: forget the records after returning them.
    """
    out = [dict(r) for r in DISPATCH.records.values()]
    if clear:
        DISPATCH.reset()
    return out


# -- preparing cached mask structures before torch.compile ---------------------
#
# Flex block masks and chunked block plans are cached per (mask key, shape). Built inside
# a torch.compile trace they would be traced into the graph (a full Tq x Tk mask evaluation
# on every step) or break the graph (the chunked plan reads tensor values). One eager pass
# in "prepare" mode fills the caches; the compiled graph then reads them as constants.


@dataclass
class PrepareState:
    """Whether a :func:`prepare_masks` pass runs, for which pass, and what it has seen."""

    on: bool = False
    grad: bool = False
    used: list[dict] = field(default_factory=list)

    def reset(self) -> None:
        """Back to "not preparing"."""
        self.on, self.grad, self.used = False, False, []


PREPARE = PrepareState()


def is_preparing() -> bool:
    """Whether a :func:`prepare_masks` pass is running (backends build caches, skip the math)."""
    return PREPARE.on


def note_prepared(backend: str, reason: str, call: AttentionCall) -> None:
    """Record, during :func:`prepare_masks`, which backend a call will use."""
    PREPARE.used.append({"backend": backend, "reason": reason, "mask": call.mask_kind,
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
    if PREPARE.on:
        raise RuntimeError("prepare_masks is already running; it does not nest")
    PREPARE.on, PREPARE.grad, PREPARE.used = True, bool(grad), []
    try:
        with torch.no_grad():
            fn(*args, **kwargs)
        return PREPARE.used
    finally:
        PREPARE.reset()
