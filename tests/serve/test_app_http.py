"""The app over real HTTP (uvicorn on a thread) with a slowed model: a client hanging up cancels its job,
streaming or not; an error after a stream started is an error event then [DONE]; metrics and the request log."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from fastapi.testclient import TestClient

from attnlab.serve import metrics as metrics_lib
from attnlab.serve.app import create_app
from attnlab.serve.batcher import BatchConfig
from attnlab.serve.client import request, sse_events
from attnlab.serve.engine import Engine
from attnlab.serve.runner import ServeConfig, start_in_thread
from tests.serve._batch import Throttled


@pytest.fixture
def slow_server(serve_model):
    """``start(**limits) -> (url, engine)``: a server whose model sleeps 50 ms per forward."""
    made = []

    def start(**limits):
        model, tok, device = serve_model
        engine = Engine(Throttled(model, delay=0.05), tok, device, "tiny", max_tokens_cap=40,
                        batch=BatchConfig(**limits))
        running = start_in_thread(create_app(engine), ServeConfig(port=0, access_log=False))
        made.append((running, engine))
        return running.url, engine

    yield start
    for running, engine in made:
        running.stop()
        engine.close(5)


def wait_for(engine, predicate, timeout: float = 10.0) -> dict:
    end = time.monotonic() + timeout
    while not predicate(stats := engine.stats()):
        assert time.monotonic() < end, stats
        time.sleep(0.01)
    return stats


def raw_post(url: str, body: dict) -> socket.socket:
    """Send a POST on a raw socket and return it unread."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" +
                 data)
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_hanging_up_cancels_its_job(slow_server, stream):
    url, engine = slow_server()
    sock = raw_post(url, {"prompt": "KING:", "max_tokens": 40, "temperature": 0, "stream": stream})
    wait_for(engine, lambda s: s["running"] == 1)
    if stream:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # the stream began
    sock.close()
    stats = wait_for(engine, lambda s: s["cancelled"] == 1 and s["running"] == 0)
    assert stats["served"] == 0  # it did not run its 40 steps to the end (2 s)
    status, body = request(url, "/v1/completions", {"prompt": "KING:", "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] <= 2


def test_an_error_after_the_stream_began_is_an_error_event_then_done(slow_server):
    url, _ = slow_server(request_timeout=0.5)
    status, text = request(url, "/v1/completions", {"prompt": "KING:", "max_tokens": 40, "temperature": 0,
                                                    "stream": True})
    events = sse_events(text)  # ends with [DONE]
    assert status == 200 and events[-1]["error"]["code"] == "request_timeout", events[-1]
    assert all("choices" in e for e in events[:-1]) and len(events) > 2


class Recorder(metrics_lib.Metrics):
    """Metrics that also keep what the app observed."""

    def __init__(self, stats):
        super().__init__(stats)
        self.seen_tokens, self.seen_ttft = [], []

    def observe_tokens(self, prompt: int, completion: int) -> None:
        super().observe_tokens(prompt, completion)
        self.seen_tokens.append((prompt, completion))

    def observe_ttft(self, seconds: float) -> None:
        super().observe_ttft(seconds)
        self.seen_ttft.append(seconds)


@pytest.mark.parametrize("stream", [False, True])
def test_metrics_see_tokens_and_ttft_and_the_user_is_logged(serve_model, caplog, stream):
    engine = Engine(*serve_model, "tiny", max_tokens_cap=8)
    metrics = Recorder(engine.stats)
    try:
        with TestClient(create_app(engine, metrics=metrics), base_url="http://localhost") as client, \
                caplog.at_level(logging.INFO, logger="attnlab.serve"):
            r = client.post("/v1/completions", json={"prompt": "KING:", "max_tokens": 5, "temperature": 0, "n": 2,
                                                     "stream": stream, "user": "user-\n42",
                                                     "repetition_penalty": 3.0})
            assert r.status_code == 200
    finally:
        assert engine.close(5)
    n_prompt = len(engine.tokenizer.encode("KING:"))
    assert metrics.seen_tokens == [(n_prompt, 10)]  # two choices of 5 tokens
    assert len(metrics.seen_ttft) == 1 and 0 < metrics.seen_ttft[0] < 60
    line = next(r.getMessage() for r in caplog.records if "user=" in r.getMessage())
    assert "user='user-\\n42'" in line and "n=2" in line and "\n" not in line
