"""Running the ASGI app under uvicorn, hardened against slow clients, with a clean stop.

uvicorn gives HTTP/1.1 keep-alive (its own idle timer, ``keepalive_timeout``), a connection
limit (``max_connections``: beyond it requests get 503) and the accept backlog (2048). What it
lacks, and this module adds:

- **A read timeout.** uvicorn waits forever for a client that sends half a request, so 300
  such clients hold 300 connections as long as they like. :class:`_Protocol`, a subclass of
  uvicorn's h11 protocol, starts a timer at a connection's first byte (at the connection
  itself while nothing arrives) and cancels it once the whole request, head and body, is in;
  when it fires the client gets a JSON 408 (nothing if it never sent a byte) and the
  connection is closed.
- **A stop that does not wait on stalled clients.** :class:`_Server` stops accepting, closes
  idle and half-received connections at once, runs ``on_stop()`` on a worker thread while the
  event loop keeps streaming the answers in flight (the CLI drains the engine there), waits for
  those up to ``shutdown_timeout`` and then cuts the rest. Ctrl-C / SIGTERM trigger it (a second
  Ctrl-C skips the wait) and :func:`serve` returns normally instead of re-raising the signal.
- **A connection limit in JSON.** Past ``max_connections`` open connections a request gets a JSON
  503 and its connection is closed (``_Edge``; uvicorn's own limit answers in plain text).
- **Quiet logs.** A client that hangs up mid-request does not print a traceback (``_Edge``);
  uvicorn's own error lines stay at warning level; ``access_log=False`` prints nothing per
  request (``True``: one line each on stderr). A malformed request gets a JSON 400, not text.

The socket is bound here (not by uvicorn), so a port in use is an ``OSError`` the caller can
turn into a one-line message, and the URL is known before serving starts (made so that asyncio
turns Nagle off on each connection: see :func:`bind`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("attnlab.serve")

_IN_REQUEST = (h11.IDLE, h11.SEND_BODY)  # the client's side of h11 while its request is not all in


@dataclass
class ServeConfig:
    """How the server listens.

    Attributes:
        host: interface to bind.
        port: TCP port (0: any free port).
        read_timeout: seconds a client may take to send a whole request, from its first byte (or
            from connecting, while it sends nothing); then the connection is dropped.
        keepalive_timeout: seconds an idle keep-alive connection stays open.
        max_connections: open connections at most; beyond it new requests get 503.
        shutdown_timeout: on stop, seconds to let requests in flight finish.
        access_log: log one line per request.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    read_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 1000
    shutdown_timeout: float = 30.0
    access_log: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("read_timeout", "keepalive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {self.shutdown_timeout}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


def _json_response(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


_TIMEOUT = _json_response(408, "Request Timeout", "the request was not received in time: send the whole request "
                          "(head and body) within the server's read timeout", "request_timeout")
_BUSY = json.dumps({"error": {"message": "too many open connections; retry in a moment (or raise the server's "
                                          "--max-connections)", "type": "server_error", "param": None,
                               "code": "too_many_connections"}}).encode()
_MALFORMED = _json_response(400, "Bad Request", "malformed HTTP request (bad request line, header or "
                            "Content-Length): send valid HTTP/1.1", "bad_http")


class _Config(uvicorn.Config):
    """uvicorn's config plus the read timeout our protocol reads."""

    def __init__(self, app: Any, read_timeout: float, **kw: Any):
        super().__init__(app, **kw)
        self.read_timeout = read_timeout


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read timeout and a shutdown that closes half-received requests."""

    def __init__(self, config: _Config, *args: Any, **kw: Any):
        super().__init__(config, *args, **kw)
        self.read_timeout = config.read_timeout
        self.read_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self.read_timer is None:
            self.read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _receiving(self) -> bool:
        """Whether a request has begun arriving but is not all in (head or body pending)."""
        if self.conn.their_state is h11.SEND_BODY:
            return True
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is dropped after read_timeout too

    def data_received(self, data: bytes) -> None:
        self._arm()
        super().data_received(data)
        if not self._receiving():
            self._disarm()  # the request is in (or the connection is done): the app's time now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._receiving():  # a pipelined request already half in
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _read_timed_out(self) -> None:
        self.read_timer = None
        if self.transport.is_closing():
            return
        answered = self.cycle is not None and self.cycle.response_started
        if not answered and self._receiving():
            # Written past h11 on purpose: the connection is closed right after, whatever the app does.
            self.transport.write(_TIMEOUT)
        self.transport.close()

    def _unsupported_upgrade_warning(self) -> None:
        log.debug("ignored an Upgrade header (no WebSocket or HTTP/2 here); answering as HTTP/1.1")

    def send_400_response(self, msg: str) -> None:
        if self.cycle is None or not self.cycle.response_started:  # never inside an answer already going out
            self.transport.write(_MALFORMED)
        self.transport.close()

    def shutdown(self) -> None:
        if self._receiving() and not (self.cycle is not None and self.cycle.response_started):
            self.transport.close()  # stalled mid-request: nothing will come of it
        else:
            super().shutdown()


class _Edge:
    """The ASGI app as uvicorn calls it: the connection limit (JSON 503), and no traceback for a request
    failing after its client hung up (or cancelled at shutdown)."""

    def __init__(self, app: Any, max_connections: int):
        self.app, self.max_connections = app, max_connections
        self.connections: Callable[[], int] = lambda: 0  # set once the server exists

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and self.connections() > self.max_connections:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(_BUSY)).encode())]})
            await send({"type": "http.response.body", "body": _BUSY})
            return
        gone = False

        async def watched() -> dict:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, watched, send)
        except asyncio.CancelledError:
            log.debug("request cancelled at shutdown: %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            if not gone:
                raise
            log.debug("request ended after its client left: %s %s", scope.get("method"), scope.get("path"))


class _Server(uvicorn.Server):
    """uvicorn's server with our stop sequence and signal handling (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, shutdown_timeout: float,
                 on_start: Callable[[], None] = lambda: None, on_stop: Callable[[], None] = lambda: None):
        super().__init__(config)
        self.shutdown_timeout, self.on_start, self.on_stop = shutdown_timeout, on_start, on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_start()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: do not wait for requests in flight
            self.should_exit = True

        originals = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        for server in self.servers:
            server.close()  # stop accepting
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle and half-received ones close now; the others after their answer
        try:
            await asyncio.to_thread(self.on_stop)
        except Exception as e:  # noqa: BLE001 — the stop goes on; say why once
            log.error("on_stop failed: %s: %s", type(e).__name__, e)
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if state.connections or state.tasks:
            log.warning("stopping with %d request(s) still in flight after %s s", len(state.tasks),
                        self.shutdown_timeout)
        for connection in list(state.connections):
            connection.transport.abort()  # type: ignore[union-attr]
        for task in list(state.tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while state.tasks:
                    await asyncio.sleep(0.01)
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)


def _log_config(access_log: bool) -> dict[str, Any]:
    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["handlers"]["access"]["stream"] = "ext://sys.stderr"
    cfg["loggers"]["uvicorn"]["level"] = "WARNING"
    cfg["loggers"]["uvicorn.error"]["level"] = "WARNING"
    cfg["loggers"]["uvicorn.access"]["level"] = "INFO" if access_log else "WARNING"
    return cfg


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one).

    Made with the protocol number ``getaddrinfo`` gives (6), not 0 as ``socket.create_server`` does:
    asyncio sets ``TCP_NODELAY`` only on accepted sockets whose protocol says TCP, and without it
    a keep-alive answer written in pieces waits ~40 ms for the client's delayed ACK (Nagle).

    Raises:
        OSError: the address is in use, not ours, or unknown.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _make(app: Any, cfg: ServeConfig, sock: socket.socket, on_start: Callable[[], None] = lambda: None,
          on_stop: Callable[[], None] = lambda: None) -> _Server:
    edge = _Edge(app, cfg.max_connections)
    config = _Config(edge, cfg.read_timeout, host=cfg.host, port=sock.getsockname()[1], http=_Protocol,
                     lifespan="off", ws="none", timeout_keep_alive=cfg.keepalive_timeout,  # type: ignore[arg-type]
                     backlog=2048, access_log=cfg.access_log, log_config=_log_config(cfg.access_log),
                     proxy_headers=False, server_header=False,
                     timeout_graceful_shutdown=cfg.shutdown_timeout)  # type: ignore[arg-type]
    server = _Server(config, cfg.shutdown_timeout, on_start, on_stop)
    edge.connections = lambda: len(server.server_state.connections)
    return server


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Running:
    """A server started by :func:`start_in_thread`."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket):
        self.server, self.thread = server, thread
        self.host, self.port = server.config.host, sock.getsockname()[1]

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests finish (up to the config's shutdown_timeout), and join the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(app: Any, cfg: ServeConfig | None = None) -> Running:
    """Serve ``app`` on a daemon thread; returns once it listens.

    Raises:
        OSError: cannot listen on ``cfg.host:cfg.port``.
    """
    cfg = cfg or ServeConfig(port=0)
    sock = bind(cfg.host, cfg.port)
    server = _make(app, cfg, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="attnlab-uvicorn", daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > end:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return Running(server, thread, sock)


def serve(app: Any, cfg: ServeConfig, on_start: Callable[[str], None] = lambda url: None,
          on_stop: Callable[[], None] = lambda: None) -> None:
    """Serve ``app`` in the foreground (main thread) until Ctrl-C / SIGTERM, then return.

    ``on_start(url)`` runs once listening; ``on_stop()`` runs on a worker thread after the server
    stopped accepting, while the answers in flight still stream (drain the engine there).

    Raises:
        OSError: cannot listen on ``cfg.host:cfg.port`` (raised before anything runs).
    """
    sock = bind(cfg.host, cfg.port)
    url = _url(cfg.host, sock.getsockname()[1])
    _make(app, cfg, sock, lambda: on_start(url), on_stop).run(sockets=[sock])


__all__ = ["Running", "ServeConfig", "bind", "serve", "start_in_thread"]
