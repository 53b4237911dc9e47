"""Fuzzing ``attnlab serve`` over real HTTP: hundreds of malformed or edge requests, never a 5xx or a hang.

Against ``create_app`` on the tiny trained model under the real runner (uvicorn on a thread),
each case goes out on its own raw socket: every sampling field times odd values (2**64,
10**30, NaN, Infinity, -1, "1", true, null, [], {} ...), lone surrogates in prompts and chat
content, 100,000-deep JSON, bad ``Content-Length`` (``²``, -1, too long, too short), wrong
content types, unknown fields, huge ``n`` and ``max_tokens``, bad UTF-8, an empty body, wrong
methods, odd paths and broken HTTP. For each: the answer comes within a timeout, its status is
below 500, and a normal request right after is answered with the same text as before. The
server's log must hold no traceback at the end.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from attnlab.serve.app import create_app
from attnlab.serve.batcher import BatchConfig
from attnlab.serve.engine import Engine
from attnlab.serve.runner import ServeConfig, start_in_thread
from tests.serve.conftest import PENALTY

pytestmark = pytest.mark.slow

NAN, INF = float("nan"), float("inf")
ODD = [2**64, 10**30, NAN, INF, -INF, -1, 0, "1", True, False, None, [], {}, 1.5, 1e308, "", "\ud800", [1, 2]]
COMPLETION_FIELDS = ["prompt", "model", "max_tokens", "temperature", "top_p", "seed", "n", "stop", "stream",
                     "stream_options", "logprobs", "echo", "best_of", "user", "repetition_penalty",
                     "frequency_penalty", "presence_penalty"]
CHAT_FIELDS = ["messages", "max_completion_tokens", "max_tokens", "logprobs", "top_logprobs", "temperature", "seed",
               "n", "stop", "stream"]
NORMAL = {"prompt": "ROMEO:", "max_tokens": 4, "temperature": 0, "repetition_penalty": PENALTY}
ANSWER_TIMEOUT = 20.0  # seconds for any answer; more is a hang


def request_bytes(method: str, path: str, body: bytes | None = None, ctype: str | None = "application/json",
                  extra: str = "", length: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n"
    if body is not None or length is not None:
        head += f"Content-Length: {len(body or b'') if length is None else length}\r\n"
    return head.encode("utf-8") + extra.encode("latin-1") + b"\r\n" + (body or b"")


def post(path: str, obj, **kw) -> bytes:
    """``obj`` as JSON (NaN / Infinity as the bare tokens, lone surrogates as \\ud800 escapes)."""
    return request_bytes("POST", path, json.dumps(obj).encode(), **kw)


def exchange(port: int, raw: bytes, method: str = "POST") -> tuple[int, bytes]:
    """Send ``raw`` on a fresh connection; (status, body) of the one answer (status 0: closed unanswered)."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all: read that answer
        resp = http.client.HTTPResponse(sock, method=method)
        try:
            resp.begin()
        except http.client.RemoteDisconnected:
            return 0, b""
        return resp.status, resp.read()


def cases() -> list[tuple[str, bytes, str]]:
    """(name, raw request, method) for every case."""
    out: list[tuple[str, bytes, str]] = []
    base = {"prompt": "Hi", "max_tokens": 2}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for field in COMPLETION_FIELDS:
        for value in ODD:
            out.append((f"completions {field}={value!r}", post("/v1/completions", {**base, field: value}), "POST"))
    for field in CHAT_FIELDS:
        for value in ODD:
            out.append((f"chat {field}={value!r}", post("/v1/chat/completions", {**chat, field: value}), "POST"))
    odd_messages = [
        [{"role": "user", "content": "\ud800"}], [{"role": "user", "content": "a\udfffb"}],
        [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
        [{"role": "tool", "content": "x"}], [{"role": "user"}], [{"content": "x"}], [{"role": "user", "content": None}],
        [{"role": "user", "content": "x", "name": "bob"}], [{"role": "user", "content": []}],
        [{"role": "user", "content": "x"}] * 2000, [{"role": "assistant", "content": "only me"}],
        [{"role": "user", "content": "😀 \u0000 \u202e"}], "hello", [[]], [None],
    ]
    for msgs in odd_messages:
        body = post("/v1/chat/completions", {**chat, "messages": msgs})
        out.append((f"chat messages={str(msgs)[:40]}", body, "POST"))
    odd_prompts = ["\ud800", "a\udc00b", "\ud83d\ude00", "\u0000", "word " * 5000, ["a", "b"], [1, 2, 3], [[1]],
                   "é" * 100, "\r\n\r\n", "</s><|endoftext|>", ""]
    for prompt in odd_prompts:
        out.append((f"prompt={str(prompt)[:30]!r}", post("/v1/completions", {**base, "prompt": prompt}), "POST"))
    for name, value in (("huge n", 10**6), ("n 2**64", 2**64), ("n 9", 9), ("n 8 stream", 8)):
        body = {**base, "n": value, **({"stream": True} if "stream" in name else {})}
        out.append((name, post("/v1/completions", body), "POST"))
    for value in (10**9, 2**63, 10**30, 10**4):
        out.append((f"huge max_tokens {value}", post("/v1/completions", {**base, "max_tokens": value}), "POST"))
        out.append((f"huge max_completion_tokens {value}",
                    post("/v1/chat/completions", {**chat, "max_completion_tokens": value}), "POST"))
    for field in ("foo", "functions", "tools", "response_format", "logit_bias", "suffix", "", "__proto__"):
        out.append((f"unknown field {field!r}", post("/v1/completions", {**base, field: 1}), "POST"))
        out.append((f"chat unknown field {field!r}", post("/v1/chat/completions", {**chat, field: 1}), "POST"))
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "max_tokens": 2}'
    deep_obj = b'{"prompt": "x", "stop": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    raw_bodies = {
        "100000-deep JSON array": deep, "50000-deep JSON object": deep_obj,
        "bad UTF-8": b'{"prompt": "\xff\xfe\xc3", "max_tokens": 2}', "UTF-16 body": '{"prompt": "x"}'.encode("utf-16"),
        "empty body": b"", "not JSON": b"prompt=hi", "JSON null": b"null", "JSON list": b"[1, 2]",
        "JSON string": b'"hi"', "truncated JSON": b'{"prompt": "x"', "trailing garbage": b'{"prompt": "x"} xyz',
        "duplicate keys": b'{"prompt": "x", "prompt": 5, "max_tokens": 2}', "BOM": b'\xef\xbb\xbf{"prompt": "x"}',
        "NaN literal": b'{"prompt": "x", "temperature": NaN}', "huge number": b'{"prompt": "x", "seed": 1' +
        b"0" * 5000 + b"}", "huge exponent": b'{"prompt": "x", "temperature": 1e99999}',
        "lone surrogate escape": b'{"prompt": "\\ud800\\u0000", "max_tokens": 2}',
        "over the body limit": b'{"prompt": "' + b"x" * 1_100_000 + b'"}',
    }
    for name, body in raw_bodies.items():
        out.append((name, request_bytes("POST", "/v1/completions", body), "POST"))
        out.append(("chat " + name, request_bytes("POST", "/v1/chat/completions", body), "POST"))
    good = json.dumps(base).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None,
                  "application/json; charset=latin-1", "application/json, text/plain", "json", "*/*", "\x7f"):
        out.append((f"content type {ctype!r}", request_bytes("POST", "/v1/completions", good, ctype=ctype), "POST"))
    for length in ("²", "-1", "1e3", "0x10", "", " 5", "99999999999999999999999", "5, 6"):
        body = request_bytes("POST", "/v1/completions", good, length=length)
        out.append((f"Content-Length {length!r}", body, "POST"))
    out.append(("Content-Length too short", request_bytes("POST", "/v1/completions", good, length="5"), "POST"))
    out.append(("Content-Length too long (read timeout)",
                request_bytes("POST", "/v1/completions", good, length=str(len(good) + 50)), "POST"))
    out.append(("two Content-Lengths", request_bytes("POST", "/v1/completions", good, extra="Content-Length: 3\r\n"),
                "POST"))
    chunked = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" \
              b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    out.append(("chunked body", chunked + b"%x\r\n" % len(good) + good + b"\r\n0\r\n\r\n", "POST"))
    out.append(("bad chunk size", chunked + b"zz\r\n" + good + b"\r\n0\r\n\r\n", "POST"))
    out.append(("chunk too long", chunked + b"ffffffffffffffffff\r\n" + good + b"\r\n0\r\n\r\n", "POST"))
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "CONNECT"):
        for path in ("/v1/completions", "/v1/chat/completions", "/health", "/v1/models"):
            body = good if method in ("PUT", "PATCH") else None
            target = "127.0.0.1:80" if method == "CONNECT" else path
            out.append((f"{method} {target}", request_bytes(method, target, body), method))
    for path in ("/v1/completions/", "//v1/completions", "/v1/completions?x=1&y", "/%00", "/../../etc/passwd",
                 "/v1/%ff", "/v1/" + "a" * 8000, "/" + "x" * 20000, "/v1/completions#frag", "*", "/v1/models/../x",
                 "http://127.0.0.1/v1/completions", "/v1/completions;x", "/docs", "/openapi.json", "/metrics",
                 "/health?", "/%2e%2e/", "/v1/models/tiny", "/v1"):
        out.append((f"path {path[:40]}", request_bytes("POST", path, good), "POST"))
        out.append((f"GET path {path[:40]}", request_bytes("GET", path), "GET"))
    broken = {
        "HTTP/2.0 line": b"GET /health HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n",
        "HTTP/1.0 no host": b"GET /health HTTP/1.0\r\n\r\n",
        "HTTP/0.9": b"GET /health\r\n\r\n", "garbage": b"\x00\x01\x02\xff\r\n\r\n",
        "no version": b"GET /health FOO\r\nHost: x\r\n\r\n", "bare LF": b"GET /health HTTP/1.1\nHost: 127.0.0.1\n\n",
        "space in header name": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
        "non-ASCII target": b"GET /h\xc3\xa9alth HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        "non-ASCII header": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: \xff\xfe\r\nConnection: close\r\n\r\n",
        "huge header": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        "many headers": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n",
        "foreign Host": b"GET /health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "two Hosts": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "foreign Origin": request_bytes("POST", "/v1/completions", good, ctype="text/plain",
                                        extra="Origin: http://evil.example\r\n"),
        "Expect 100-continue": request_bytes("POST", "/v1/completions", good, extra="Expect: 100-continue\r\n"),
        "Upgrade websocket": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\n",
        "Upgrade h2c": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        "bad Authorization": request_bytes("POST", "/v1/completions", good, extra="Authorization: Bearer \xff\r\n"),
        "pipelined with garbage": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGARBAGE\r\n\r\n",
    }
    for name, raw in broken.items():
        out.append((name, raw, "GET"))
    return out


@pytest.fixture
def fuzz_server(serve_model):
    model, tok, device = serve_model
    engine = Engine(model, tok, device, "tiny", max_tokens_cap=8, batch=BatchConfig(max_batch=8, gather_ms=1,
                                                                                    max_concurrency=32))
    running = start_in_thread(create_app(engine), ServeConfig(port=0, read_timeout=1.0, keepalive_timeout=1.0,
                                                              access_log=False))
    yield running, engine
    running.stop()
    engine.close(5)


def error_message(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None


def normal(port: int) -> str:
    status, body = exchange(port, post("/v1/completions", NORMAL))
    assert status == 200, body[:300]
    return json.loads(body)["choices"][0]["text"]


def test_fuzz_no_5xx_no_hang_and_the_server_keeps_answering(fuzz_server, reference, capfd):
    running, engine = fuzz_server
    port = running.port
    expected = reference(engine, NORMAL["prompt"], NORMAL["max_tokens"])
    assert normal(port) == expected
    all_cases = cases()
    assert len(all_cases) >= 300
    failures, statuses = [], {}
    start = time.perf_counter()
    for name, raw, method in all_cases:
        t = time.perf_counter()
        try:
            status, body = exchange(port, raw, method)
        except OSError as e:  # a socket time-out is a hang
            failures.append(f"{name}: {type(e).__name__}: {e}")
            continue
        took = time.perf_counter() - t
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500 or status == 0 or took > ANSWER_TIMEOUT:
            failures.append(f"{name}: {status} in {took:.1f} s: {body[:200]!r}")
        elif 400 <= status and method != "HEAD" and not error_message(body):
            failures.append(f"{name}: {status} without an OpenAI error body: {body[:200]!r}")
        try:
            text = normal(port)
        except (OSError, AssertionError) as e:
            failures.append(f"{name}: the normal request after it failed: {e}")
            continue
        if text != expected:
            failures.append(f"{name}: the normal request after it answered {text!r}, not {expected!r}")
    elapsed = time.perf_counter() - start
    assert not failures, "\n".join(failures[:40])
    assert statuses.get(200, 0) > 10 and statuses.get(400, 0) > 100, statuses  # the cases did reach the app
    assert engine.healthy
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    print(f"{len(all_cases)} cases in {elapsed:.1f} s: {dict(sorted(statuses.items()))}")
