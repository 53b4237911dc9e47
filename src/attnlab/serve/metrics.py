"""``GET /metrics`` in the Prometheus text format, from ``prometheus_client``.

What a :class:`Metrics` exports (each ``Metrics`` has its own ``CollectorRegistry``: two apps in
one process, as in the tests, never share or clash):

- ``attnlab_requests_total{route, method, status}``: every HTTP request, refused ones included,
  by route template (``/v1/completions``; ``other`` for a path no route matches, so odd paths
  cannot blow up the label set) and status;
- ``attnlab_request_duration_seconds{route}``: from the request to the end of its response
  (the last event of a stream);
- ``attnlab_time_to_first_token_seconds``: from a generation request to its first text;
- ``attnlab_prompt_tokens_total`` / ``attnlab_completion_tokens_total``;
- ``attnlab_queue_length`` / ``attnlab_running_requests``: the scheduler's ``queued`` and
  ``running``, read from ``stats()`` when scraped (nothing to keep in sync);
- ``attnlab_scheduler_events_total{event}``: its ``served`` / ``failed`` / ``cancelled`` /
  ``batches`` / ``joined`` counters.

``/metrics`` is open like ``/health`` (no API key): it holds counts and timings, no prompt or
text, and scrapers rarely carry the key. Bind the loopback (the default) to keep it private.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match

from attnlab.serve.security import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_EVENTS = ("served", "failed", "cancelled", "batches", "joined")


class _SchedulerCollector(Collector):
    """Reads the scheduler's ``stats()`` at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, int]]):
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        yield GaugeMetricFamily("attnlab_queue_length", "Requests waiting for a batch slot.", value=s.get("queued", 0))
        yield GaugeMetricFamily("attnlab_running_requests", "Requests being decoded (the running batch size).",
                                value=s.get("running", 0))
        events = CounterMetricFamily("attnlab_scheduler_events", "Scheduler counters (requests served, failed, "
                                     "cancelled; batches started; requests that joined a running batch).",
                                     labels=["event"])
        for name in _EVENTS:
            events.add_metric([name], s.get(name, 0))
        yield events


class Metrics:
    """The server's counters and histograms.

    Args:
        stats: returns the scheduler's counters (``Batcher.stats()``: ``queued``, ``running``, ...); None: no model.
    """

    def __init__(self, stats: Callable[[], dict[str, int]] | None = None):
        self.stats = stats
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("attnlab_requests", "HTTP requests by route template, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("attnlab_request_duration_seconds", "From a request to the end of its response.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("attnlab_time_to_first_token_seconds", "From a generation request to its first text.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("attnlab_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.completion_tokens = Counter("attnlab_completion_tokens", "Tokens generated for finished requests.",
                                         registry=r)
        if stats is not None:
            r.register(_SchedulerCollector(stats))

    def observe_tokens(self, prompt: int, completion: int) -> None:
        """Count one finished request's prompt and completion tokens."""
        self.prompt_tokens.inc(max(0, prompt))
        self.completion_tokens.inc(max(0, completion))

    def observe_ttft(self, seconds: float) -> None:
        """Record one request's time to its first generated text."""
        self.ttft.observe(max(0.0, seconds))

    def observe_request(self, route: str, method: str, status: int | str, seconds: float) -> None:
        """Count one HTTP request (the middleware calls this; status ``none``: the client left unanswered)."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(max(0.0, seconds))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Count:
    """Pure-ASGI middleware timing and counting every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _template(self, scope: Scope) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "path", None) or "other"
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 0
        route = self._template(scope)
        method = scope["method"] if scope["method"] in _METHODS else "other"

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, counted)
            failed = False
        finally:
            # No response started: a failure (the server answers 500) or a client that left first ("none").
            label = str(status) if status else ("500" if failed else "none")
            self.metrics.observe_request(route, method, label, time.perf_counter() - start)


def install(app: FastAPI, metrics: Metrics) -> None:
    """Count every request (route, status, latency) and serve ``GET /metrics`` (open, like ``/health``)."""

    def scrape() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False)
    app.add_middleware(_Count, metrics=metrics, routes=lambda: app.router.routes)


__all__ = ["LATENCY_BUCKETS", "TTFT_BUCKETS", "Metrics", "install"]
