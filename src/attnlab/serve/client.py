"""A tiny standard-library client for the server (tests, the load benchmark, scripts).

The official ``openai`` package works too; this one has no dependency and shows the raw
answers: status codes, error bodies and server-sent events as they arrive::

    status, body = request("http://127.0.0.1:8000", "/v1/completions", {"prompt": "Hi", "max_tokens": 8})
    for chunk in stream_events("http://127.0.0.1:8000", "/v1/completions", {"prompt": "Hi", "stream": True}):
        print(chunk["choices"][0]["text"], end="")
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any


def _request(base: str, path: str, body: Any = None, raw: bytes | None = None, method: str | None = None,
             api_key: str | None = None) -> urllib.request.Request:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return urllib.request.Request(base + path, data=data, method=method or ("GET" if data is None else "POST"),
                                  headers=headers)


def request(base: str, path: str, body: Any = None, *, raw: bytes | None = None, method: str | None = None,
            timeout: float = 30.0, api_key: str | None = None) -> tuple[int, Any]:
    """Send one request; returns (status, parsed JSON) or (status, text) for a non-JSON answer (SSE).

    Args:
        base: server address, e.g. ``http://127.0.0.1:8000``.
        path: route, e.g. ``/v1/completions``.
        body: JSON-serialisable body (POST), or None (GET).
        raw: bytes to send as the body instead of ``body``.
        method: override the HTTP method.
        timeout: socket timeout in seconds.
        api_key: sent as ``Authorization: Bearer KEY`` (a server started with ``--api-key``).
    """
    try:
        with urllib.request.urlopen(_request(base, path, body, raw, method, api_key), timeout=timeout) as r:
            status, text, ctype = r.status, r.read().decode(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        status, text, ctype = e.code, e.read().decode(), e.headers.get("Content-Type")
    return status, (json.loads(text) if (ctype or "").startswith("application/json") else text)


def sse_events(text: str) -> list[dict[str, Any]]:
    """The JSON payloads of a whole SSE body (``data: {...}`` blocks ending with ``data: [DONE]``).

    Raises:
        ValueError: the body does not end with ``data: [DONE]`` (the stream was cut).
    """
    events = [block[len("data: "):] for block in text.split("\n\n") if block]
    if not events or events[-1] != "[DONE]":
        raise ValueError(f"the event stream does not end with 'data: [DONE]': {text[-200:]!r}")
    return [json.loads(e) for e in events[:-1]]


def stream_events(base: str, path: str, body: dict[str, Any], *, timeout: float = 60.0,
                  api_key: str | None = None) -> Iterator[dict[str, Any]]:
    """POST a streaming request and yield each event's JSON as it arrives (an ``{"error": ...}``
    event included); ends at ``data: [DONE]``.

    Raises:
        urllib.error.HTTPError: the server answered with an error status (read ``.code``, ``.read()``).
        ValueError: the stream ended without ``data: [DONE]``.
    """
    with urllib.request.urlopen(_request(base, path, body, api_key=api_key), timeout=timeout) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: "):]
            if data == b"[DONE]":
                return
            yield json.loads(data)
    raise ValueError("the event stream ended without 'data: [DONE]'")


__all__ = ["request", "sse_events", "stream_events"]
