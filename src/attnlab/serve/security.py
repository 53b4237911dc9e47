"""Access control for the server's ASGI app: who may call it, from where, and with what.

:func:`install` wraps a FastAPI app in two small pure-ASGI middlewares and, when asked for,
Starlette's ``CORSMiddleware`` between them::

    _Gate (Host, Origin)  ->  CORSMiddleware (only with cors_origins)  ->  _Guard (key, type, size)  ->  app

- **Host** (``_Gate``): on a loopback bind the ``Host`` header must name the loopback
  (``localhost``, ``127.x.x.x``, ``[::1]``, any port), else 400: a web page that re-points its
  own domain at 127.0.0.1 (DNS rebinding) cannot reach the server.
- **Origin** (``_Gate``): a request whose ``Origin`` is neither the server's own (the ``Host``
  it was sent to) nor one of ``cors_origins`` gets 403, so a page on another site cannot make
  the user's browser run a generation, even with a "simple" ``text/plain`` form POST.
- **CORS**: off by default; with ``cors_origins`` Starlette answers their preflight ``OPTIONS``
  and adds the ``Access-Control-*`` headers (the refusals below then carry them too, so a
  browser page sees a readable 401).
- **API key** (``_Guard``): with ``api_key`` set, every route that runs the model (``/v1/*`` and
  the explorer's ``/explorer/api/*``, :data:`KEYED_PATHS`) needs ``Authorization: Bearer KEY``
  (compared in constant time), else 401 with ``WWW-Authenticate: Bearer``. Pages, ``/health``,
  ``/metrics`` and the OpenAPI docs stay open (they run no model).
- **JSON only** (``_Guard``): POST/PUT/PATCH bodies must be ``application/json`` (parameters
  such as ``charset`` allowed), else 415.
- **Body size** (``_Guard``): a ``Content-Length`` over ``max_body_bytes`` gets 413 at once; a
  chunked body is counted as it arrives. The body is read here, whole, before the app runs,
  and handed to it as one message (the app reads the disconnect event afterwards as usual).

Every refusal is the OpenAI error JSON ``{"error": {"message", "type", "param", "code"}}``.
Hand-written as pure ASGI (not ``BaseHTTPMiddleware``) so that streamed responses and
disconnects pass through untouched; CORS itself is Starlette's.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

KEYED_PATHS = ("/v1", "/explorer/api")
"""Path prefixes that need the API key when one is set: everything that runs the model."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass
class SecurityConfig:
    """Who may call the server.

    Attributes:
        api_key: the bearer token ``/v1/*`` requires (None: no key).
        cors_origins: origins allowed to call from a browser, e.g. ``("https://app.example",)``
            (empty: CORS off, only same-origin pages may call).
        bind_host: the address the server listens on (a loopback bind checks the ``Host`` header).
        max_body_bytes: larger request bodies get 413.
    """

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    bind_host: str = "127.0.0.1"
    max_body_bytes: int = 1_000_000


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a ``Host`` header's name, brackets allowed) is the loopback."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, api_key: str | None) -> str | None:
    """The warning for listening on ``host`` without a key (None when loopback or a key is set)."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: listening on {host} without an API key: anyone who can reach this machine can use the model; "
            "set --api-key (or ATTNLAB_API_KEY), or bind 127.0.0.1")


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error",
           headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    return status, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          *headers]


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _split_host(host: str) -> tuple[str, str]:
    """``Host`` header -> (name, port) (port "" when absent); ``[::1]:8000`` -> (``[::1]``, ``8000``)."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest.removeprefix(":")
    name, _, port = host.partition(":")
    return name, port


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether ``Origin`` names the very server the request was sent to (the ``Host`` header's name and port).

    The scheme is not compared: behind a TLS-terminating proxy the page is ``https://`` while this
    server sees plain HTTP; one host and port cannot serve two different sites anyway.
    """
    if host is None:
        return False
    try:
        parts = urlsplit(origin)
        o_port = parts.port
    except ValueError:
        return False
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if default is None or not parts.hostname:
        return False
    h_name, h_port = _split_host(host)
    o_name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if h_port and not h_port.isdigit():
        return False
    return o_name == h_name and (o_port or default) == (int(h_port) if h_port else default)


class _Gate:
    """Outermost check: the ``Host`` header on a loopback bind (400), a foreign ``Origin`` (403)."""

    def __init__(self, app: ASGIApp, cfg: SecurityConfig):
        self.app, self.cfg = app, cfg
        self.loopback = is_loopback(cfg.bind_host)
        self.origins = {o.rstrip("/").lower() for o in cfg.cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if self.loopback and host is not None and not is_loopback(_split_host(host)[0]):
            await _answer(send, *_error(
                400, f"Host {host!r} is not this server's: it listens on the loopback only, so call it as "
                     "localhost or 127.0.0.1 (bind another --host to serve other names)", "bad_host"))
            return
        origin = _header(scope, b"origin")
        if (origin is not None and "*" not in self.origins and origin.rstrip("/").lower() not in self.origins
                and not _same_origin(origin.lower(), host)):
            await _answer(send, *_error(
                403, f"cross-origin request from {origin!r} refused: only this server's own pages may call it; "
                     "allow that origin with --cors-origin", "cross_origin"))
            return
        await self.app(scope, receive, send)


class _Guard:
    """Innermost check: the API key on ``/v1/*`` (401), JSON bodies (415), the body size (413)."""

    def __init__(self, app: ASGIApp, cfg: SecurityConfig):
        self.app, self.cfg = app, cfg
        self.key = None if cfg.api_key is None else cfg.api_key.encode()

    def _authorized(self, scope: Scope) -> bool:
        if self.key is None or scope["method"] == "OPTIONS":
            return True
        path = scope.get("path", "")
        if not any(path == p or path.startswith(p + "/") for p in KEYED_PATHS):
            return True
        auth = _header(scope, b"authorization") or ""
        scheme, _, token = auth.strip().partition(" ")
        # compare_digest on bytes: the same time whatever the token; a non-ASCII token is simply wrong.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            given = _header(scope, b"authorization") is not None
            await _answer(send, *_error(
                401, ("the API key is wrong" if given else "this server needs an API key")
                + ": send the header 'Authorization: Bearer YOUR_KEY'", "invalid_api_key",
                headers=((b"www-authenticate", b"Bearer"),)))
            return
        limit = self.cfg.max_body_bytes
        too_big = _error(413, f"the request body is larger than the server's limit of {limit} bytes; send less "
                              "(or start the server with a larger --max-body-bytes)", "body_too_large",
                         headers=((b"connection", b"close"),))
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            await _answer(send, *too_big)
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        ctype = (_header(scope, b"content-type") or "").partition(";")[0].strip().lower()
        if ctype != "application/json":
            await _answer(send, *_error(
                415, f"the body must be JSON with 'Content-Type: application/json', got "
                     f"{ctype or 'no Content-Type'!r}", "unsupported_media_type"))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, *too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def install(app: FastAPI, cfg: SecurityConfig) -> None:
    """Add the checks to ``app`` (call once, before it serves; see the module docstring for the rules)."""
    if cfg.max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {cfg.max_body_bytes}")
    # add_middleware: the last one added runs first.
    app.add_middleware(_Guard, cfg=cfg)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(_Gate, cfg=cfg)


__all__ = ["SecurityConfig", "bind_warning", "install", "is_loopback"]
