"""The batching scheduler: concurrent requests decoded together give each one's text alone;
limits on concurrency and time; disconnects; graceful shutdown."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

import pytest
from torch import nn

from attnlab.serve import BatchConfig, Engine, RequestError, Sampling, ServeConfig, make_server, start_in_thread
from attnlab.serve.client import request, sse_events, stream_events

PENALTY = 3.0  # as in conftest.reference


class Throttled(nn.Module):
    """Wraps the LM: every forward waits for :attr:`gate` and then sleeps ``delay`` seconds,
    so tests can hold the worker still or slow it down."""

    accepts_padding = True  # its forward passes attention_mask on (see attnlab.models.protocols)

    def __init__(self, inner: nn.Module, delay: float = 0.0):
        super().__init__()
        self.inner, self.delay = inner, delay
        self.max_context = inner.max_context
        self.gate = threading.Event()
        self.gate.set()

    def make_cache(self):
        return self.inner.make_cache()

    def forward(self, input_ids, *, cache=None, attention_mask=None):
        self.gate.wait()
        time.sleep(self.delay)
        return self.inner(input_ids, cache=cache, attention_mask=attention_mask)


class Running:
    """A server on an ephemeral port around an :class:`Engine`; ``stop()`` shuts it down gracefully."""

    def __init__(self, model, tok, device, **limits):
        self.engine = Engine(model, tok, device, "tiny", max_tokens_cap=48, batch=BatchConfig(**limits))
        self.server = make_server(self.engine, ServeConfig(port=0, log_requests=False))
        self.thread = start_in_thread(self.server)
        host, port = self.server.server_address[:2]
        self.base, self.port = f"http://{host}:{port}", port
        self.stopped = False

    def stats(self) -> dict:
        return request(self.base, "/health")[1]["stats"]

    def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        end = time.monotonic() + timeout
        while not predicate(stats := self.stats()):
            assert time.monotonic() < end, stats
            time.sleep(0.01)
        return stats

    def stop(self, timeout: float = 10.0) -> bool:
        if self.stopped:
            return True
        self.stopped = True
        self.server.shutdown()
        drained = self.server.drain(timeout)
        self.server.server_close()
        self.thread.join(timeout=5)
        return drained


@pytest.fixture
def running(serve_model):
    """A function starting a :class:`Running` server with the given limits (stopped after the test)."""
    started = []

    def start(model=None, **limits) -> Running:
        m, tok, device = serve_model
        started.append(Running(model or m, tok, device, **limits))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def streamed_text(base: str, body: dict) -> tuple[str, str]:
    """(joined text, finish_reason) of a streaming completion."""
    chunks = list(stream_events(base, "/v1/completions", {**body, "stream": True}))
    return "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]


PROMPTS = ["ROMEO:", "KING HENRY:\nWhat", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "O", "Good morrow, cousin", "JULIET:\nWherefore art thou", "To be, or not", "MENENIUS:\nEither you"]


def test_sixteen_streams_batched_match_each_alone(running, reference):
    srv = running(max_batch=8, gather_ms=100)
    reqs = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 6 + 3 * (i % 9), "temperature": 0,
             "repetition_penalty": PENALTY} for i in range(16)]
    barrier = threading.Barrier(16)

    def one(req):
        barrier.wait()
        return streamed_text(srv.base, req)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, reqs))
    for req, (text, finish) in zip(reqs, results, strict=False):
        assert text == reference(srv.engine, req["prompt"], req["max_tokens"]), req
        assert finish in ("stop", "length")
    stats = srv.stats()
    assert stats["max_batch_seen"] > 1 and stats["batches"] < 16
    assert stats["served"] == 16 and stats["failed"] == stats["running"] == stats["queued"] == 0


def test_rows_that_do_not_fit_the_context_together_run_in_separate_batches(running, reference):
    srv = running(max_batch=8, gather_ms=100, join=False)
    long_prompt = PROMPTS[2]  # ~30 tokens: with the rest of the 64-token context to fill
    n_long = srv.engine.context - len(srv.engine.tokenizer.encode(long_prompt))
    reqs = [{"prompt": long_prompt, "max_tokens": n_long}, {"prompt": "O", "max_tokens": 48}]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda r: streamed_text(srv.base, {**r, "temperature": 0,
                                                                    "repetition_penalty": PENALTY}), reqs))
    for req, (text, _) in zip(reqs, results, strict=False):
        assert text == reference(srv.engine, req["prompt"], req["max_tokens"])
    assert srv.stats()["batches"] == 2


def test_queued_requests_join_a_running_batch(running, serve_model, reference):
    slow = Throttled(serve_model[0], delay=0.02)
    srv = running(slow, max_batch=4, gather_ms=0)
    reqs = [{"prompt": "ROMEO:", "max_tokens": 40}, {"prompt": PROMPTS[1], "max_tokens": 12},
            {"prompt": "O", "max_tokens": 20}]
    reqs = [{**r, "temperature": 0, "repetition_penalty": PENALTY, "stream": True} for r in reqs]
    with ThreadPoolExecutor(3) as pool:
        chunks = stream_events(srv.base, "/v1/completions", reqs[0])
        first = [next(chunks)["choices"][0]["text"]]  # the first request runs alone
        slow.gate.clear()  # hold the worker before its next step
        later = [pool.submit(streamed_text, srv.base, r) for r in reqs[1:]]
        srv.wait_for(lambda s: s["queued"] + s["running"] == 3)  # queued, or joined during the last step
        slow.gate.set()
        texts = ["".join(first + [c["choices"][0]["text"] for c in chunks])] + [f.result(10)[0] for f in later]
    for req, text in zip(reqs, texts, strict=False):
        assert text == reference(srv.engine, req["prompt"], req["max_tokens"]), req
    stats = srv.stats()
    assert stats["batches"] == 1 and stats["joined"] == 2 and stats["max_batch_seen"] == 3 and stats["served"] == 3


def test_seeded_sampling_in_a_batch_equals_alone(running, reference):
    srv = running(max_batch=8, gather_ms=100)
    reqs = [{"prompt": PROMPTS[i], "max_tokens": 12, "temperature": 0.5 + 0.2 * i, "top_p": [None, 0.9][i % 2],
             "seed": i, "repetition_penalty": 1.0 + 0.3 * i} for i in range(5)]
    reqs.append({"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0, "repetition_penalty": PENALTY})
    with ThreadPoolExecutor(len(reqs)) as pool:
        batched = list(pool.map(lambda r: request(srv.base, "/v1/completions", r)[1]["choices"][0]["text"], reqs))
    assert srv.stats()["max_batch_seen"] == len(reqs)
    for req, text in zip(reqs, batched, strict=False):
        kw = {k: req[k] for k in ("temperature", "top_p", "seed", "repetition_penalty") if k in req}
        assert text == reference(srv.engine, req["prompt"], 12, **kw), req
    assert len(set(batched)) == len(batched)  # the settings differ per row


def test_concurrency_limit_answers_429_json(running, serve_model):
    slow = Throttled(serve_model[0])
    srv = running(slow, max_batch=1, max_concurrency=2)
    slow.gate.clear()  # the worker blocks in its first forward
    req = {"prompt": "ROMEO:", "max_tokens": 4, "temperature": 0}
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(request, srv.base, "/v1/completions", req) for _ in range(2)]
        srv.wait_for(lambda s: s["running"] + s["queued"] == 2)
        status, body = request(srv.base, "/v1/completions", req)
        assert status == 429 and body["error"]["type"] == "rate_limit_error"
        assert body["error"]["code"] == "too_many_requests" and "2 concurrent" in body["error"]["message"]
        slow.gate.set()
        assert [f.result(timeout=10)[0] for f in held] == [200, 200]
    assert request(srv.base, "/v1/completions", req)[0] == 200


def test_time_limit_ends_running_and_queued_requests(running, serve_model):
    slow = Throttled(serve_model[0])
    srv = running(slow, max_batch=1, request_timeout=0.3)
    slow.gate.clear()
    req = {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0}
    with ThreadPoolExecutor(2) as pool:
        streaming = pool.submit(request, srv.base, "/v1/completions", {**req, "stream": True})
        srv.wait_for(lambda s: s["running"] == 1)
        queued = pool.submit(request, srv.base, "/v1/completions", req)
        srv.wait_for(lambda s: s["queued"] == 1)
        time.sleep(0.4)
        slow.gate.set()
        status, body = queued.result(timeout=10)
        assert status == 408 and body["error"]["code"] == "request_timeout" and "0.3 s" in body["error"]["message"]
        status, text = streaming.result(timeout=10)
    assert status == 200  # the stream had begun: it ends with an error event
    assert sse_events(text)[-1]["error"]["code"] == "request_timeout"
    assert srv.stats()["failed"] == 2
    srv.engine.batch.request_timeout = None
    assert request(srv.base, "/v1/completions", req)[0] == 200


def test_client_disconnect_frees_its_row(running, serve_model, reference):
    srv = running(Throttled(serve_model[0], delay=0.02), max_batch=4, gather_ms=300)
    body = b'{"prompt": "ROMEO:", "max_tokens": 48, "stream": true, "temperature": 0, "repetition_penalty": 3}'
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(streamed_text, srv.base, {"prompt": "KING:", "max_tokens": 30, "temperature": 0,
                                                       "repetition_penalty": PENALTY})
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
        sock.close()  # gone mid-stream
        stats = srv.wait_for(lambda s: s["cancelled"] == 1)
        assert other.result(timeout=20)[0] == reference(srv.engine, "KING:", 30)
    assert stats["failed"] == 0
    stats = srv.wait_for(lambda s: s["running"] == 0)
    assert stats["served"] == 1 and stats["max_batch_seen"] == 2
    after = {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0, "repetition_penalty": PENALTY}
    assert streamed_text(srv.base, after)[0] == reference(srv.engine, "ROMEO:", 8)


def test_graceful_shutdown_finishes_requests_in_flight(running, serve_model, reference):
    srv = running(Throttled(serve_model[0], delay=0.01), max_batch=4, gather_ms=50)
    reqs = [{"prompt": p, "max_tokens": 24, "temperature": 0, "repetition_penalty": PENALTY} for p in PROMPTS[:4]]
    first = threading.Barrier(len(reqs) + 1)

    def one(req):
        chunks = stream_events(srv.base, "/v1/completions", {**req, "stream": True})
        texts = [next(chunks)["choices"][0]["text"]]
        first.wait()
        texts += [c["choices"][0]["text"] for c in chunks]
        return "".join(texts)

    with ThreadPoolExecutor(len(reqs)) as pool:
        futures = [pool.submit(one, r) for r in reqs]
        first.wait(timeout=20)  # every stream has begun
        assert srv.stop(timeout=20)
        for req, f in zip(reqs, futures, strict=False):
            assert f.result(timeout=5) == reference(srv.engine, req["prompt"], 24)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        request(srv.base, "/health", timeout=2)
    with pytest.raises(RequestError, match="shutting down") as refused:
        srv.engine.submit([1, 2], 4, Sampling())
    assert refused.value.status == 503
