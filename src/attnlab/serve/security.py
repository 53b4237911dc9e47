"""Access control for the server's ASGI app (STUB: the interface only; issue 17 fills it in).

:func:`install` adds the checks to a FastAPI app: bearer API key on ``/v1/*``, the ``Host``
header on a loopback bind (DNS rebinding), CORS (off unless ``cors_origins``), JSON-only
POSTs and the body-size limit. :func:`bind_warning` is the line to print when a server
listens beyond the loopback without a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI


@dataclass
class SecurityConfig:
    """Who may call the server.

    Attributes:
        api_key: the bearer token ``/v1/*`` requires (None: no key).
        cors_origins: origins allowed to call from a browser (empty: CORS off).
        bind_host: the address the server listens on (a loopback bind checks the ``Host`` header).
        max_body_bytes: larger request bodies get 413.
    """

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    bind_host: str = "127.0.0.1"
    max_body_bytes: int = 1_000_000


def install(app: FastAPI, cfg: SecurityConfig) -> None:
    """Add the checks to ``app`` (STUB: does nothing yet)."""


def bind_warning(host: str, api_key: str | None) -> str | None:
    """The warning for listening on ``host`` without a key (None when loopback or a key is set). STUB."""
    return None


__all__ = ["SecurityConfig", "bind_warning", "install"]
