"""HOW attention runs: one module per backend, plus the automatic choice.

Backends: ``eager`` (the reference; weights, top-k), ``sdpa`` (PyTorch's fused kernels),
``flex`` (FlexAttention: predicate masks and score mods, compiled), ``chunked``
(blockwise PyTorch, linear memory for structured masks, forward and backward anywhere).
``auto`` picks one per call (see :mod:`~attnlab.attention.backends.registry`).

Every backend takes an :class:`~attnlab.attention.backends.base.AttentionCall`
(what to compute) and returns the output, or ``(output, weights)``.
"""

from attnlab.attention.backends.base import AttentionCall, dispatch_log, prepare_masks, record_dispatch
from attnlab.attention.backends.registry import BACKENDS, choose, run

__all__ = ["AttentionCall", "BACKENDS", "choose", "dispatch_log", "prepare_masks", "record_dispatch", "run"]
