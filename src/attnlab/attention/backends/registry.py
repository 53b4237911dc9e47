"""Backend lookup and the ``"auto"`` choice.

``auto`` picks ``eager`` when weights are requested (only it returns them) and
``sdpa`` otherwise. An explicit backend that cannot serve a request raises a
ValueError that names why; nothing silently falls back.
"""

from __future__ import annotations

from types import ModuleType

import torch

from attnlab.attention.backends import eager, sdpa
from attnlab.attention.backends.base import AttentionCall, record_dispatch

BACKENDS: dict[str, ModuleType] = {"eager": eager, "sdpa": sdpa}


def choose(call: AttentionCall, backend: str = "auto") -> tuple[str, str]:
    """Pick the backend for ``call``.

    Returns:
        ``(name, reason)``.

    Raises:
        ValueError: unknown backend, or an explicit backend that cannot serve the call.
    """
    if backend == "auto":
        if call.return_weights:
            return "eager", "auto: weights requested"
        why = sdpa.unsupported(call)
        if why:
            return "eager", f"auto: {why}"
        return "sdpa", "auto: fused kernel"
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
    return BACKENDS[name].run(call)
