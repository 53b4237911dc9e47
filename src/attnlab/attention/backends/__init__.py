"""HOW attention runs: one module per backend, plus the registry and the automatic choice.

Backends: ``eager`` (the reference; weights, top-k), ``sdpa`` (PyTorch's fused kernels),
``flex`` (FlexAttention: predicate masks and score mods, compiled), ``chunked``
(blockwise PyTorch, linear memory for structured masks, forward and backward anywhere).
``auto`` picks one per call (see :mod:`~attnlab.attention.backends.registry`).

Every backend implements :class:`~attnlab.attention.backends.base.Backend`: it takes an
:class:`~attnlab.attention.backends.base.AttentionCall` (what to compute), says why it
cannot serve one (``unsupported``), builds its per-shape caches (``prepare``) and returns
the output, or ``(output, weights)`` (``run``). :func:`register_backend` adds your own.
Eager and chunked share one dense kernel (:mod:`~attnlab.attention.backends.dense`); the
backends that cache (flex, chunked) keep everything in one ``STATE`` with ``reset()``.
"""

from attnlab.attention.backends.base import AttentionCall, Backend, dispatch_log, prepare_masks, record_dispatch
from attnlab.attention.backends.registry import AUTO_RULES, BACKENDS, Rule, choose, register_backend, run

__all__ = ["AUTO_RULES", "AttentionCall", "BACKENDS", "Backend", "Rule", "choose", "dispatch_log", "prepare_masks",
           "record_dispatch", "register_backend", "run"]
