"""The batching scheduler: concurrent requests decoded together give each one's text alone; limits
on concurrency and time; cancellation; graceful shutdown; and a worker that cannot die: a failing
request fails alone, a failing forward fails its batch, a stopped worker fails everyone with 503."""

from __future__ import annotations

import threading
import time

import pytest

from attnlab.serve.batcher import Batcher
from attnlab.serve.job import STARTED, RequestError
from attnlab.serve.row import Row
from tests.serve._batch import Throttled, alone, opts, served, start_batchers, submit, text_of

PROMPTS = ["ROMEO:", "KING HENRY:\nWhat", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "O", "Good morrow, cousin", "JULIET:\nWherefore art thou", "To be, or not", "MENENIUS:\nEither you"]


@pytest.fixture
def batchers(serve_model):
    """``start(model=None, **limits) -> Batcher`` (closed after the test)."""
    yield from start_batchers(serve_model)


def wait_stats(batcher: Batcher, predicate, timeout: float = 10.0) -> dict:
    """The scheduler's counters once ``predicate`` holds for them (fails after ``timeout`` s)."""
    end = time.monotonic() + timeout
    while not predicate(stats := batcher.stats()):
        assert time.monotonic() < end, stats
        time.sleep(0.01)
    return stats


def test_sixteen_requests_batched_match_each_alone(batchers):
    b = batchers(max_batch=8, gather_ms=1000)
    reqs = [(PROMPTS[i % len(PROMPTS)], 6 + 3 * (i % 9)) for i in range(16)]
    sinks = [submit(b, p, n)[1] for p, n in reqs]
    for (prompt, n), sink in zip(reqs, sinks, strict=True):
        deltas, error = sink.result()
        assert error is None and deltas[0] is STARTED and text_of(deltas) == alone(b, prompt, n), prompt
    stats = b.stats()
    assert stats["max_batch_seen"] == 8 and stats["batches"] < 16
    assert stats["served"] == 16 and stats["failed"] == stats["running"] == stats["queued"] == 0


def test_rows_that_do_not_fit_the_context_together_run_in_separate_batches(batchers):
    b = batchers(max_batch=8, gather_ms=1000, join=False)
    long_prompt = PROMPTS[2]  # ~30 tokens: with the rest of the 64-token context to fill
    reqs = [(long_prompt, b.context - len(b.tokenizer.encode(long_prompt))), ("O", 48)]
    sinks = [submit(b, p, n)[1] for p, n in reqs]
    for (prompt, n), sink in zip(reqs, sinks, strict=True):
        assert text_of(sink.result()[0]) == alone(b, prompt, n)
    assert b.stats()["batches"] == 2


def test_queued_requests_join_a_running_batch(batchers, serve_model):
    slow = Throttled(serve_model[0], delay=0.02)
    b = batchers(slow, max_batch=4, gather_ms=0)
    reqs = [("ROMEO:", 40), (PROMPTS[1], 12), ("O", 20)]
    first = submit(b, *reqs[0])[1]
    first.wait_text()  # the first request runs alone
    slow.gate.clear()  # hold the worker before its next step
    later = [submit(b, p, n)[1] for p, n in reqs[1:]]
    wait_stats(b, lambda s: s["queued"] + s["running"] == 3)
    slow.gate.set()
    for (prompt, n), sink in zip(reqs, [first, *later], strict=True):
        assert text_of(sink.result()[0]) == alone(b, prompt, n), prompt
    stats = b.stats()
    assert stats["batches"] == 1 and stats["joined"] == 2 and stats["max_batch_seen"] == 3 and stats["served"] == 3


def test_seeded_sampling_in_a_batch_equals_alone(batchers):
    b = batchers(max_batch=6, gather_ms=1000)
    kws = [{"temperature": 0.5 + 0.2 * i, "top_p": [None, 0.9][i % 2], "seed": i, "repetition_penalty": 1.0 + 0.3 * i}
           for i in range(5)] + [{}]
    sinks = [submit(b, PROMPTS[i], 12, opts(**kw))[1] for i, kw in enumerate(kws)]
    texts = [text_of(s.result()[0]) for s in sinks]
    assert b.stats()["max_batch_seen"] == len(kws)
    for i, (kw, text) in enumerate(zip(kws, texts, strict=True)):
        assert text == alone(b, PROMPTS[i], 12, **kw), kw
    assert len(set(texts)) == len(texts)  # the settings differ per row


def test_concurrency_limit_refuses_with_429(batchers, serve_model):
    slow = Throttled(serve_model[0])
    b = batchers(slow, max_batch=1, max_concurrency=2)
    slow.gate.clear()  # the worker blocks in its first forward
    held = [submit(b, "ROMEO:", 4)[1] for _ in range(2)]
    wait_stats(b, lambda s: s["running"] + s["queued"] == 2)
    with pytest.raises(RequestError) as refused:
        submit(b, "ROMEO:", 4)
    body = refused.value.body()["error"]
    assert refused.value.status == 429 and body["type"] == "rate_limit_error"
    assert body["code"] == "too_many_requests" and "2 concurrent" in body["message"]
    slow.gate.set()
    assert [s.result()[1] for s in held] == [None, None]
    assert served(b, "ROMEO:", 4) == alone(b, "ROMEO:", 4)


def test_time_limit_ends_running_and_queued_requests(batchers, serve_model):
    slow = Throttled(serve_model[0])
    b = batchers(slow, max_batch=1, request_timeout=0.3)
    slow.gate.clear()
    running = submit(b, "ROMEO:", 8)[1]
    wait_stats(b, lambda s: s["running"] == 1)
    queued = submit(b, "ROMEO:", 8)[1]
    wait_stats(b, lambda s: s["queued"] == 1)
    time.sleep(0.4)
    slow.gate.set()
    deltas, error = queued.result()
    assert deltas == [] and error.status == 408 and error.code == "request_timeout" and "0.3 s" in error.message
    deltas, error = running.result()
    assert deltas[0] is STARTED and error.status == 408  # it had begun: its deltas, then the error
    assert b.stats()["failed"] == 2
    b.cfg.request_timeout = None
    assert served(b, "ROMEO:", 8) == alone(b, "ROMEO:", 8)


def test_a_cancelled_job_frees_its_row(batchers, serve_model):
    b = batchers(Throttled(serve_model[0], delay=0.02), max_batch=4, gather_ms=300)
    gone, gone_sink = submit(b, "ROMEO:", 48)
    other = submit(b, "KING:", 30)[1]
    gone_sink.wait_text()
    gone.cancel()  # its client went away mid-stream
    assert gone_sink.result()[1] is None  # it just ends
    assert text_of(other.result()[0]) == alone(b, "KING:", 30)
    stats = wait_stats(b, lambda s: s["running"] == 0)
    assert stats["cancelled"] == 1 and stats["failed"] == 0 and stats["served"] == 1 and stats["max_batch_seen"] == 2
    assert served(b, "ROMEO:", 8) == alone(b, "ROMEO:", 8)


def test_graceful_shutdown_finishes_requests_in_flight(batchers, serve_model):
    b = batchers(Throttled(serve_model[0], delay=0.01), max_batch=4, gather_ms=50)
    sinks = [submit(b, p, 24)[1] for p in PROMPTS[:4]]
    for s in sinks:
        s.wait_text()  # every request has begun
    assert b.close(timeout=20)
    for prompt, s in zip(PROMPTS, sinks, strict=False):
        assert text_of(s.result()[0]) == alone(b, prompt, 24)
    with pytest.raises(RequestError, match="shutting down") as refused:
        submit(b, "ROMEO:", 4)
    assert refused.value.status == 503 and b.alive  # closed, not dead


# --- failures -------------------------------------------------------------------------------------
def bad_seed(seed: int):
    """Options whose seed slipped past validation (a frozen config changed behind its back)."""
    o = opts(temperature=0.8, seed=1)
    object.__setattr__(o.config, "seed", seed)
    return o


@pytest.mark.parametrize("seed", [2**64, 10**30, -1])
def test_a_bad_seed_fails_alone_in_a_batch_of_3(batchers, capsys, seed):
    b = batchers(max_batch=3, gather_ms=1000)
    first, second = submit(b, "ROMEO:", 12)[1], submit(b, "O", 10)[1]
    bad = submit(b, "KING:", 12, bad_seed(seed))[1]
    deltas, error = bad.result()
    assert deltas == [] and error.status == 400 and error.param == "seed" and error.code == "invalid_value"
    assert "0..9223372036854775807" in error.message
    assert text_of(first.result()[0]) == alone(b, "ROMEO:", 12)
    assert text_of(second.result()[0]) == alone(b, "O", 10)
    stats = b.stats()
    assert stats["max_batch_seen"] == 3 and stats["failed"] == 1 and stats["served"] == 2 and b.alive
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "seed" in err and "Traceback" not in err  # a 4xx: one line


def test_a_bad_seed_joining_a_running_batch_fails_alone(batchers, serve_model):
    b = batchers(Throttled(serve_model[0], delay=0.02), max_batch=4, gather_ms=0)
    running = submit(b, "ROMEO:", 30)[1]
    running.wait_text()
    bad = submit(b, "KING:", 8, bad_seed(2**64))[1]
    assert bad.result()[1].status == 400
    assert text_of(running.result()[0]) == alone(b, "ROMEO:", 30)
    assert b.stats()["joined"] == 1 and b.alive


def _fail_sampling(monkeypatch):
    import attnlab.serve.row as row

    real, calls = row.next_token, []

    def flaky(logits, *, temperature, **kw):
        if temperature == 0.7:  # the bad request's, on its third token
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected sampling failure")
        return real(logits, temperature=temperature, **kw)

    monkeypatch.setattr(row, "next_token", flaky)
    return opts(temperature=0.7, seed=3)


def _fail_logprobs(monkeypatch):
    import attnlab.serve.row as row

    real, calls = row.token_logprobs, []

    def flaky(tokenizer, logits, token, k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected logprobs failure")
        return real(tokenizer, logits, token, k)

    monkeypatch.setattr(row, "token_logprobs", flaky)
    return opts(logprobs=2)


def _fail_detokenizing(monkeypatch):
    real = Row.push

    def flaky(self, token):
        if self.job.opts.stop == ["<<boom>>"] and self.steps == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizing failure")
        return real(self, token)

    monkeypatch.setattr(Row, "push", flaky)
    return opts(stop=["<<boom>>"])


@pytest.mark.parametrize("inject", [_fail_sampling, _fail_logprobs, _fail_detokenizing])
def test_a_row_failing_mid_decode_fails_alone(batchers, capsys, monkeypatch, inject):
    b = batchers(max_batch=3, gather_ms=1000)
    bad_opts = inject(monkeypatch)
    sinks = [submit(b, "ROMEO:", 16)[1], submit(b, "KING:", 16, bad_opts)[1], submit(b, "O", 16)[1]]
    deltas, error = sinks[1].result()
    assert deltas[0] is STARTED and error.status == 500 and error.code == "internal_error"
    assert error.kind == "server_error" and "server log" in error.message
    assert text_of(sinks[0].result()[0]) == alone(b, "ROMEO:", 16)
    assert text_of(sinks[2].result()[0]) == alone(b, "O", 16)
    assert b.stats()["max_batch_seen"] == 3 and b.stats()["failed"] == 1 and b.alive
    err = capsys.readouterr().err
    assert err.startswith("attnlab serve: a request failed (500)") and "injected" in err.splitlines()[0]
    assert "Traceback" in err  # a 5xx: the line, then the traceback


def test_a_failing_forward_fails_its_batch_and_the_worker_goes_on(batchers, serve_model, capsys):
    model = Throttled(serve_model[0])
    b = batchers(model, max_batch=2, gather_ms=1000)
    model.calls, model.fail_at = 0, 3  # the second decoding step
    sinks = [submit(b, "ROMEO:", 8)[1], submit(b, "O", 8)[1]]
    for s in sinks:
        deltas, error = s.result()
        assert deltas[0] is STARTED and error.status == 500 and error.code == "internal_error"
    assert "injected forward failure" in capsys.readouterr().err
    assert b.alive and served(b, "ROMEO:", 8) == alone(b, "ROMEO:", 8)


def test_a_failing_join_prefill_fails_only_the_joining_job(batchers, serve_model):
    model = Throttled(serve_model[0], delay=0.01)
    b = batchers(model, max_batch=4, gather_ms=0)
    running = submit(b, "ROMEO:", 30)[1]
    running.wait_text()
    model.gate.clear()
    assert model.waiting.wait(10)  # the worker waits in the running batch's next forward
    joiner = submit(b, "KING:", 8)[1]
    model.fail_at = model.calls + 2  # that forward, then the joiner's prefill
    model.gate.set()
    assert joiner.result()[1].status == 500
    assert text_of(running.result()[0]) == alone(b, "ROMEO:", 30)
    assert b.stats()["joined"] == 1 and b.alive


def test_a_failing_sink_drops_its_job_only(batchers):
    b = batchers(max_batch=2, gather_ms=1000)

    def broken(event):
        if event is not STARTED and event is not None:
            raise RuntimeError("the event loop is closed")

    b.submit(b.tokenizer.encode("KING:"), 12, opts(), broken)
    other = submit(b, "ROMEO:", 12)[1]
    assert text_of(other.result()[0]) == alone(b, "ROMEO:", 12)
    stats = wait_stats(b, lambda s: s["running"] == 0)
    assert stats["cancelled"] == 1 and stats["served"] == 1 and b.alive


def _raise_in_gather(self):
    with self._cond:  # wait for a job to be queued, then fail as a bug would
        self._cond.wait_for(lambda: self._pending)
    raise RuntimeError("injected scheduler bug")


def test_a_worker_dying_in_gather_fails_the_queued_job_with_503(batchers, monkeypatch, capsys):
    monkeypatch.setattr(Batcher, "_gather", _raise_in_gather)
    b = batchers()
    deltas, error = submit(b, "ROMEO:", 8)[1].result(timeout=10)
    assert deltas == [] and error.status == 503 and "restart the server" in error.message
    assert not b.alive
    with pytest.raises(RequestError, match="restart the server") as refused:
        submit(b, "ROMEO:", 8)
    assert refused.value.status == 503
    err = capsys.readouterr().err
    assert err.startswith("attnlab serve: the scheduler stopped") and "injected scheduler bug" in err
    assert b.close(timeout=5)  # nothing left to wait for


def test_a_worker_dying_in_decode_fails_running_and_queued_jobs_with_503(batchers, monkeypatch):
    release = threading.Event()

    def dying(self, rows):
        release.wait(10)
        raise RuntimeError("injected scheduler bug")

    monkeypatch.setattr(Batcher, "_decode", dying)
    b = batchers(max_batch=1)
    running = submit(b, "ROMEO:", 8)[1]
    wait_stats(b, lambda s: s["running"] == 1)
    queued = submit(b, "O", 8)[1]
    release.set()
    deltas, error = running.result(timeout=10)
    assert deltas == [STARTED] and error.status == 503
    deltas, error = queued.result(timeout=10)
    assert deltas == [] and error.status == 503
    assert not b.alive and b.stats()["failed"] == 2

