"""HOW attention runs: one module per backend, plus the automatic choice.

Every backend takes an :class:`~attnlab.attention.backends.base.AttentionCall`
(what to compute) and returns the output, or ``(output, weights)``.
"""

from attnlab.attention.backends.base import AttentionCall, dispatch_log, record_dispatch
from attnlab.attention.backends.registry import BACKENDS, choose, run

__all__ = ["AttentionCall", "BACKENDS", "choose", "dispatch_log", "record_dispatch", "run"]
