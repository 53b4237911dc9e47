"""serve/runner.py: keep-alive, the read timeout against slow clients, a prompt stop, quiet logs.

The slow-client numbers are the issue's: with 300 half-sent requests open a normal request is
answered in under 1 s, the stalled connections are dropped after the read timeout, and the
server stops in under 5 s.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from attnlab.serve.runner import ServeConfig, bind, start_in_thread

pytestmark = pytest.mark.slow

STALLED = 300
SRC = str(Path(__file__).resolve().parents[2] / "src")


def small_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health(request: Request):
        return {"status": "ok", "client_port": request.client.port}

    @app.post("/echo")
    async def echo(request: Request):
        return {"n": len(await request.body())}

    return app


@pytest.fixture(autouse=True)
def enough_files():
    """Room for 300 client sockets plus the server's 300 ends in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def stall(port: int, n: int) -> list[socket.socket]:
    """``n`` connections, each sending part of a request: a third half a head, a third a whole head and
    half its body, a third nothing at all."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if i % 3 == 0:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        elif i % 3 == 1:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        socks.append(s)
    return socks


def read_to_eof(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def timed_get(port: int) -> tuple[int, dict, float]:
    start = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/health")
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    return r.status, body, time.perf_counter() - start


def test_keep_alive_reuses_one_connection():
    running = start_in_thread(small_app(), ServeConfig(port=0, keepalive_timeout=5))
    try:
        c = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        ports = []
        for _ in range(2):
            c.request("GET", "/health")
            r = c.getresponse()
            assert r.status == 200 and r.getheader("connection") != "close"
            ports.append(json.loads(r.read())["client_port"])
        c.request("POST", "/echo", body=b'{"a": 1}', headers={"Content-Type": "application/json"})
        assert json.loads(c.getresponse().read()) == {"n": 8}
        c.request("GET", "/health")
        ports.append(json.loads(c.getresponse().read())["client_port"])
        assert len(set(ports)) == 1  # one TCP connection served all of them
        # Nagle off on the server's end: else each keep-alive answer, written in pieces, waits ~40 ms for an ACK
        (conn,) = running.server.server_state.connections
        assert conn.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        c.close()
    finally:
        running.stop()


def test_idle_keep_alive_is_closed_after_keepalive_timeout():
    running = start_in_thread(small_app(), ServeConfig(port=0, keepalive_timeout=1, read_timeout=30))
    try:
        s = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        start = time.perf_counter()
        data = read_to_eof(s)  # the answer, then EOF once idle for keepalive_timeout
        assert data.startswith(b"HTTP/1.1 200") and 0.8 < time.perf_counter() - start < 5
        s.close()
    finally:
        running.stop()


def test_slow_clients_do_not_block_and_are_dropped_after_the_read_timeout():
    running = start_in_thread(small_app(), ServeConfig(port=0, read_timeout=2, shutdown_timeout=30))
    socks = []
    try:
        opened = time.perf_counter()
        socks = stall(running.port, STALLED)
        status, body, took = timed_get(running.port)
        assert status == 200 and body["status"] == "ok" and took < 1.0, took
        answers = [read_to_eof(s) for s in socks]  # blocks until the server closes each
        dropped_after = time.perf_counter() - opened
        assert 1.5 < dropped_after < 10, dropped_after
        for i, data in enumerate(answers):
            if i % 3 == 2:
                assert data == b""  # never sent a byte: closed without an answer
            else:
                head, _, payload = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), data[:80]
                assert json.loads(payload)["error"]["code"] == "request_timeout"
        assert timed_get(running.port)[0] == 200
    finally:
        for s in socks:
            s.close()
        start = time.perf_counter()
        running.stop(timeout=10)
        assert not running.thread.is_alive() and time.perf_counter() - start < 5


def test_stop_does_not_wait_for_stalled_clients():
    """A long read timeout and shutdown timeout: the stop closes the stalled connections at once."""
    running = start_in_thread(small_app(), ServeConfig(port=0, read_timeout=60, shutdown_timeout=30))
    socks = stall(running.port, STALLED)
    try:
        assert timed_get(running.port)[0] == 200
        start = time.perf_counter()
        running.stop(timeout=10)
        took = time.perf_counter() - start
        assert not running.thread.is_alive() and took < 5, took
        for s in socks:
            s.settimeout(5)
            read_to_eof(s)  # closed by the server (a timeout here would raise)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", running.port), timeout=2)
    finally:
        for s in socks:
            s.close()


def test_past_max_connections_requests_get_a_json_503():
    running = start_in_thread(small_app(), ServeConfig(port=0, max_connections=5, read_timeout=30))
    socks = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(6)]
    try:
        time.sleep(0.2)
        c = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        c.request("GET", "/health")
        r = c.getresponse()
        assert r.status == 503 and r.getheader("connection") == "close"
        assert json.loads(r.read())["error"]["code"] == "too_many_connections"
        c.close()
        for s in socks:
            s.close()
        time.sleep(0.2)
        assert timed_get(running.port)[0] == 200
    finally:
        for s in socks:
            s.close()
        running.stop()


def test_a_burst_of_200_connections_is_answered():
    """The accept backlog is 2048 (the old explorer server's was 5: most of a burst got reset)."""
    running = start_in_thread(small_app(), ServeConfig(port=0, access_log=False))
    try:
        barrier = threading.Barrier(200)

        def one(_: int) -> int:
            barrier.wait()
            return timed_get(running.port)[0]

        with ThreadPoolExecutor(200) as pool:
            assert list(pool.map(one, range(200))) == [200] * 200
    finally:
        running.stop()


def test_port_in_use_is_an_oserror():
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            start_in_thread(small_app(), ServeConfig(port=taken.getsockname()[1]))
    finally:
        taken.close()


def test_bad_config_is_refused():
    for kw, word in (({"read_timeout": 0}, "read_timeout"), ({"port": 70000}, "port"),
                     ({"max_connections": 0}, "max_connections"), ({"shutdown_timeout": -1}, "shutdown_timeout")):
        with pytest.raises(ValueError, match=word):
            ServeConfig(**kw)


CHILD = textwrap.dedent("""
    import asyncio, socket, sys
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from attnlab.serve.runner import ServeConfig, serve

    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/body")
    async def body(request: Request):
        return {"n": len(await request.body())}  # raises ClientDisconnect when the client leaves mid-body

    @app.get("/slow")
    async def slow():
        async def gen():
            for i in range(10):
                yield f"data: {i}\\n\\n"
                await asyncio.sleep(0.1)
        return StreamingResponse(gen(), media_type="text/event-stream")

    port = None

    def on_start(url):
        global port
        port = int(url.rsplit(":", 1)[1])
        print("URL", url, flush=True)

    def on_stop():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            print("ON_STOP accepting", flush=True)
        except OSError:
            print("ON_STOP refused", flush=True)

    serve(app, ServeConfig(port=0, read_timeout=60, shutdown_timeout=10, access_log=False), on_start, on_stop)
    print("RETURNED", flush=True)
""")


def test_serve_on_the_main_thread_stops_on_sigterm_quietly():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    socks = []
    try:
        line = proc.stdout.readline()
        assert line.startswith("URL http://127.0.0.1:"), line + proc.stderr.read()
        port = int(line.strip().rsplit(":", 1)[1])
        assert timed_get(port)[0] == 200
        for _ in range(20):  # clients hanging up mid-body: the app raises ClientDisconnect, no traceback
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"a\"")
            time.sleep(0.02)
            s.close()
        for _ in range(5):  # and mid-stream
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(100)
            s.close()
        socks = stall(port, STALLED)
        stream = socket.create_connection(("127.0.0.1", port), timeout=10)
        stream.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert stream.recv(1000).startswith(b"HTTP/1.1 200")
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rest = read_to_eof(stream)  # the stream in flight still finishes
        assert b"data: 9" in rest
        out, err = proc.communicate(timeout=15)
        took = time.perf_counter() - start
        assert proc.returncode == 0, err
        assert took < 5, took
        assert "ON_STOP refused" in out and "RETURNED" in out  # on_stop ran after accepting stopped
        assert "Traceback" not in err and "Exception" not in err, err
        assert "GET /health" not in err and "POST /body" not in err, err  # access_log=False: no line per request
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_quiet_wrapper_swallows_errors_only_after_a_disconnect():
    from attnlab.serve.runner import _Edge

    async def failing(scope, receive, send):
        await receive()
        raise RuntimeError("boom")

    async def run(first: dict) -> None:
        async def receive():
            return first

        async def send(message):
            pass

        await _Edge(failing, 10)({"type": "http", "method": "GET", "path": "/"}, receive, send)

    asyncio.run(run({"type": "http.disconnect"}))  # the client left: quiet
    with pytest.raises(RuntimeError, match="boom"):  # a real failure: still raised (and logged by uvicorn)
        asyncio.run(run({"type": "http.request", "body": b"", "more_body": False}))


def test_streaming_response_passes_through():
    app = small_app()

    @app.get("/events")
    async def events():
        async def gen():
            for i in range(3):
                yield f"data: {i}\n\n"
        return StreamingResponse(gen(), media_type="text/event-stream")

    running = start_in_thread(app)
    try:
        c = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        c.request("GET", "/events")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("transfer-encoding") == "chunked"
        assert r.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    finally:
        running.stop()
