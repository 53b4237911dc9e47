"""A minimal OpenAI-compatible HTTP server on the standard library.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` answers with server-sent events,
``data: {...}`` chunks ending with ``data: [DONE]``). Bad requests get an OpenAI-style
JSON error and a 4xx status; an unexpected failure gets a 500 JSON error (the traceback
goes to the server log, never to the client). Requests are served on threads that hand
them to the engine's batching worker (:mod:`attnlab.serve.batcher`) and relay its deltas.

Limits: body size (413), prompt + ``max_tokens`` within the context and ``max_tokens``
within the cap (400), requests queued + running (429), time per request (408; a stream
that already started ends with an ``{"error": ...}`` event, which the ``openai`` client
raises). ``GET /health`` also reports the scheduler's counters (``stats``: served,
failed, cancelled, batches, max_batch_seen, running, queued). Graceful shutdown:
``shutdown()`` stops accepting, then :meth:`Server.drain` lets requests in flight finish.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from attnlab.serve.batcher import Job
from attnlab.serve.engine import Engine
from attnlab.serve.protocol import (
    RequestError,
    Sampling,
    chat_prompt,
    completion_prompt,
    envelope,
    new_id,
    parse_sampling,
    usage,
)


@dataclass
class ServeConfig:
    """Server settings.

    Attributes:
        host: interface to bind.
        port: TCP port (0: any free port; read it back from ``server.server_address``).
        max_body_bytes: larger request bodies are refused with 413.
        log_requests: print one line per request to stderr.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_000_000
    log_requests: bool = True


class Server(ThreadingHTTPServer):
    """A threading HTTP server holding the :class:`Engine` and the :class:`ServeConfig`."""

    daemon_threads = True
    request_queue_size = 256  # listen backlog: bursts of concurrent clients must not be reset

    def __init__(self, engine: Engine, cfg: ServeConfig):
        self.engine, self.cfg = engine, cfg
        self._active = 0
        self._active_cond = threading.Condition()
        super().__init__((cfg.host, cfg.port), Handler)

    def process_request(self, request, client_address) -> None:
        """Count the connection (so :meth:`drain` can wait for it), then serve it on a thread."""
        with self._active_cond:
            self._active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_cond:
                self._active -= 1
                self._active_cond.notify_all()

    def drain(self, timeout: float = 30.0) -> bool:
        """After ``shutdown()``: let requests in flight finish (up to ``timeout`` s), then stop the
        engine (requests still running are failed with 503). Returns True if all finished in time."""
        end = time.monotonic() + timeout
        done = self.engine.close(timeout)
        with self._active_cond:  # handlers write their last bytes
            while self._active and time.monotonic() < end + 5.0:
                self._active_cond.wait(0.05)
            return done and not self._active


class Handler(BaseHTTPRequestHandler):
    """Routes one request; every answer is JSON (or an SSE stream)."""

    server: Server
    server_version = "attnlab-serve"

    # --- plumbing -------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        if self.server.cfg.log_requests:
            super().log_message(format, *args)

    def _send_json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _guarded(self, route) -> None:
        try:
            route()
        except RequestError as e:
            self._send_json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception:  # noqa: BLE001 — the boundary: log, answer 500, keep serving
            traceback.print_exc(file=sys.stderr)
            try:
                self._send_json(500, RequestError(500, "internal server error; see the server log",
                                                  code="internal_error").body())
            except OSError:
                pass

    def _read_json(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "send a Content-Length header with the JSON body", code="length_required")
        if int(length) > self.server.cfg.max_body_bytes:
            self.close_connection = True
            raise RequestError(413, f"request body is {length} bytes, over the limit of "
                               f"{self.server.cfg.max_body_bytes}; send a shorter prompt", code="body_too_large")
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"request body is not valid JSON ({e})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object", code="invalid_json")
        return body

    # --- routes ---------------------------------------------------------------
    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        engine = self.server.engine
        if self.path == "/health":
            self._send_json(200, {"status": "ok", "model": engine.name, "stats": engine.stats()})
        elif self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": engine.name, "object": "model", "created": 0, "owned_by": "attnlab",
                 "context_length": engine.context, "max_tokens_cap": engine.max_tokens_cap}]})
        else:
            raise RequestError(404, f"no route GET {self.path}; try /health or /v1/models", code="not_found")

    def _post(self) -> None:
        if self.path == "/v1/completions":
            body = self._read_json()
            self._complete(completion_prompt(body), parse_sampling(body), chat=False)
        elif self.path == "/v1/chat/completions":
            body = self._read_json()
            self._complete(chat_prompt(body), parse_sampling(body), chat=True)
        else:
            raise RequestError(404, f"no route POST {self.path}; try /v1/completions or /v1/chat/completions",
                               code="not_found")

    def _complete(self, prompt: str, opts: Sampling, *, chat: bool) -> None:
        engine = self.server.engine
        ids, max_tokens = engine.prepare(prompt, opts)
        rid = new_id("chatcmpl" if chat else "cmpl")
        job = engine.submit(ids, max_tokens, opts)
        try:
            if opts.stream:
                self._stream(rid, job, chat)
                return
            text = "".join(job.pieces())
            choice = ({"message": {"role": "assistant", "content": text}} if chat
                      else {"text": text, "logprobs": None})
            obj = envelope(rid, "chat.completion" if chat else "text_completion", engine.name,
                           {**choice, "finish_reason": job.finish_reason})
            obj["usage"] = usage(job.prompt_tokens, job.completion_tokens)
            self._send_json(200, obj)
        finally:
            job.cancel()  # frees the row if the client went away (a no-op once finished)

    def _stream(self, rid: str, job: Job, chat: bool) -> None:
        name = self.server.engine.name
        kind = "chat.completion.chunk" if chat else "text_completion"
        pieces = job.pieces()
        next(pieces, None)  # waits until the job runs: a queue time-out is still a plain JSON error
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.close_connection = True  # HTTP/1.0: the stream ends when the connection closes

        def event(obj: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

        def send(choice: dict[str, Any], finish: str | None) -> None:
            event(envelope(rid, kind, name, {**choice, "finish_reason": finish}))

        def piece(text: str) -> dict[str, Any]:
            return {"delta": {"content": text}} if chat else {"text": text, "logprobs": None}

        if chat:
            send({"delta": {"role": "assistant", "content": ""}}, None)
        try:
            for text in pieces:
                send(piece(text), None)
        except RequestError as e:  # time limit or shutdown after the stream began: an error event
            event(e.body())
        else:
            send({"delta": {}} if chat else piece(""), job.finish_reason)
            if job.opts.include_usage:  # as OpenAI: a last chunk with no choices and the usage
                event({**envelope(rid, kind, name, {}), "choices": [],
                       "usage": usage(job.prompt_tokens, job.completion_tokens)})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(engine: Engine, cfg: ServeConfig | None = None) -> Server:
    """A bound (not yet serving) server; call ``serve_forever()`` on it, ``shutdown()`` from another thread."""
    return Server(engine, cfg or ServeConfig())


def start_in_thread(server: Server) -> threading.Thread:
    """Run ``server.serve_forever()`` on a daemon thread (tests, notebooks)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="attnlab-serve",
                              daemon=True)
    thread.start()
    return thread


def serve_until_stopped(server: ThreadingHTTPServer, on_start: Callable[[], None] = lambda: None,
                        on_stop: Callable[[], None] = lambda: None) -> None:
    """Serve until Ctrl-C or SIGTERM, then close the socket and restore the signal handlers.

    Must run on the main thread (signal handlers). ``on_start`` runs once the handlers are
    set; ``on_stop`` once the server stopped accepting, before the socket closes (e.g.
    :meth:`Server.drain`).
    """

    stoppers: list[threading.Thread] = []

    def stop(signum, frame) -> None:  # shutdown() waits for serve_forever: call it from another thread
        stoppers.append(threading.Thread(target=server.shutdown, daemon=True))
        stoppers[-1].start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        on_start()
        server.serve_forever()
        on_stop()
    finally:
        server.server_close()
        for s, h in previous.items():
            signal.signal(s, h)
        # A stopper thread drops its reference to server.shutdown as it ends; if that were the
        # last reference, the server and its model would be freed on that daemon thread while
        # the interpreter shuts down, which aborts the process ("terminate called without an
        # active exception", exit -6). Let it end while the caller still holds the server.
        for t in stoppers:
            t.join(timeout=10)


__all__ = ["Handler", "ServeConfig", "Server", "make_server", "serve_until_stopped", "start_in_thread"]
