"""Running the ASGI app under uvicorn (STUB: a plain uvicorn server; issue 17 hardens it).

:func:`serve` runs in the foreground until Ctrl-C / SIGTERM; :func:`start_in_thread` runs in
the background for tests and notebooks and returns a handle with the URL and ``stop()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn


@dataclass
class ServeConfig:
    """How the server listens.

    Attributes:
        host: interface to bind.
        port: TCP port (0: any free port).
        read_timeout: seconds a client may take to send a whole request; then the connection is dropped.
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


class Running:
    """A server started by :func:`start_in_thread`."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread):
        self.server, self.thread = server, thread

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.server.config.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests finish, and join the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def _config(app, cfg: ServeConfig) -> uvicorn.Config:
    return uvicorn.Config(app, host=cfg.host, port=cfg.port, timeout_keep_alive=int(cfg.keepalive_timeout),
                          limit_concurrency=cfg.max_connections, access_log=cfg.access_log, log_level="warning",
                          timeout_graceful_shutdown=int(cfg.shutdown_timeout), lifespan="off")


def start_in_thread(app, cfg: ServeConfig | None = None) -> Running:
    """Serve ``app`` on a daemon thread; returns once it listens."""
    server = uvicorn.Server(_config(app, cfg or ServeConfig(port=0)))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, name="attnlab-uvicorn", daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > end:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return Running(server, thread)


def serve(app, cfg: ServeConfig, on_start: Callable[[str], None] = lambda url: None,
          on_stop: Callable[[], None] = lambda: None) -> None:
    """Serve ``app`` until Ctrl-C / SIGTERM (main thread); ``on_start(url)`` once listening, ``on_stop()`` after."""
    server = uvicorn.Server(_config(app, cfg))
    server.run()
    on_stop()


__all__ = ["Running", "ServeConfig", "serve", "start_in_thread"]
