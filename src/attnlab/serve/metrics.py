"""``GET /metrics`` in the Prometheus text format (STUB: the interface only; issue 17 fills it in).

Requests by route and status, prompt and completion tokens, queue length and running batch
size (read from the scheduler's stats), time-to-first-token and latency histograms.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI


class Metrics:
    """The server's counters and histograms.

    Args:
        stats: returns the scheduler's counters (``Batcher.stats()``: ``queued``, ``running``, ...); None: no model.
    """

    def __init__(self, stats: Callable[[], dict[str, int]] | None = None):
        self.stats = stats

    def observe_tokens(self, prompt: int, completion: int) -> None:
        """Count one finished request's prompt and completion tokens."""

    def observe_ttft(self, seconds: float) -> None:
        """Record one request's time to its first generated text."""

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return b"", "text/plain; version=0.0.4; charset=utf-8"


def install(app: FastAPI, metrics: Metrics) -> None:
    """Count every request (route, status, latency) and serve ``GET /metrics`` (STUB: does nothing yet)."""


__all__ = ["Metrics", "install"]
