"""A job's events and options: Job/Delta/RequestError, options checked again by the scheduler (400s),
``stop_ids`` ending a reply unseen, and per-token logprobs equal to ``log_softmax`` of the model's logits,
alone and inside a left-padded batch."""

from __future__ import annotations

import math
import time

import pytest
import torch

from attnlab.generate import generate
from attnlab.serve.job import STARTED, Delta, Job, RequestError, Sampling, TokenLogprob
from tests.serve._batch import PENALTY, Sink, alone, opts, start_batchers, submit, text_of


@pytest.fixture
def batchers(serve_model):
    """``start(model=None, **limits) -> Batcher`` (closed after the test)."""
    yield from start_batchers(serve_model)


# --- Job ---------------------------------------------------------------------------------------
def test_pieces_yields_the_deltas_then_ends_or_raises():
    job = Job([1, 2], 4, Sampling(), None)
    for event in (STARTED, Delta("a"), Delta("b"), None):
        job.emit(event)
    assert [d.text for d in job.pieces()] == ["", "a", "b"] and job.done
    failing = Job([1], 4, Sampling(), None)
    failing.emit(RequestError(503, "the scheduler stopped; restart the server"))
    failing.emit(None)
    with pytest.raises(RequestError, match="restart") as info:
        list(failing.pieces())
    assert info.value.body()["error"]["type"] == "server_error"


def test_a_job_with_a_sink_sends_its_events_there():
    got = []
    job = Job([1], 4, Sampling(), time.monotonic() - 1, sink=got.append)
    job.emit(Delta("x"))
    assert not job.done
    job.emit(None)
    assert got == [Delta("x"), None] and job.done and job.expired(time.monotonic())
    with pytest.raises(RuntimeError, match="sink"):
        next(job.pieces())
    job.cancel()
    assert job.cancelled


def test_request_error_body_is_the_openai_error_json():
    err = RequestError(400, "'seed' must be an integer", "seed", "invalid_value")
    assert err.body() == {"error": {"message": "'seed' must be an integer", "type": "invalid_request_error",
                                    "param": "seed", "code": "invalid_value"}}


# --- options checked again -----------------------------------------------------------------------
def _forced(field: str, value):
    """Options with ``value`` forced into a field, as if a handler's validation had missed it."""
    o = opts(temperature=0.8, seed=1)
    if field in ("seed", "temperature", "top_p", "repetition_penalty"):
        object.__setattr__(o.config, field, value)
    else:
        setattr(o, field, value)
    return o


@pytest.mark.parametrize("field,value", [
    ("seed", 2**64), ("seed", 10**30), ("seed", -1), ("seed", 1.5), ("temperature", math.nan),
    ("top_p", 0.0), ("repetition_penalty", -1.0), ("logprobs", -1), ("logprobs", True), ("stop", [""]),
    ("stop_ids", ["x"]),
])
def test_an_option_that_slipped_past_validation_is_a_400_naming_it(batchers, capsys, field, value):
    b = batchers()
    deltas, error = submit(b, "ROMEO:", 8, _forced(field, value))[1].result()
    assert deltas == [] and error.status == 400 and error.param == field and error.code == "invalid_value"
    assert error.message.startswith(f"'{field}'") and "\n" not in error.message
    assert b.alive and text_of(submit(b, "ROMEO:", 8)[1].result()[0]) == alone(b, "ROMEO:", 8)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("ids,max_tokens,param", [
    ([], 4, "prompt"), ([10**6], 4, "prompt"), ([-1], 4, "prompt"), ([1, 2], 0, "max_tokens"),
    ([1, 2], 63, "max_tokens"),  # 2 + 63 > the tiny model's context of 64
])
def test_a_bad_prompt_fails_alone_in_a_batch(batchers, ids, max_tokens, param):
    b = batchers(max_batch=2, gather_ms=1000)
    good = submit(b, "ROMEO:", 8)[1]
    bad = Sink()
    b.submit(ids, max_tokens, opts(), bad)
    deltas, error = bad.result()
    assert deltas == [] and error.status == 400 and error.param == param
    assert text_of(good.result()[0]) == alone(b, "ROMEO:", 8) and b.alive


# --- stop_ids ------------------------------------------------------------------------------------
def _greedy_ids(b, prompt: str, n: int) -> list[int]:
    ids = b.tokenizer.encode(prompt)
    out = generate(b.model, torch.tensor([ids]), n, temperature=0.0, repetition_penalty=PENALTY)
    return out[0, len(ids):].tolist()


def test_a_stop_id_ends_the_reply_unseen_and_uncounted(batchers):
    b = batchers()
    gen = _greedy_ids(b, "ROMEO:", 12)
    k = next(i for i in range(2, 12) if gen[i] not in gen[:i])  # the first new token from the third on
    job, sink = submit(b, "ROMEO:", 12, opts(stop_ids=[gen[k]], logprobs=0))
    deltas, error = sink.result()
    assert error is None and text_of(deltas) == b.tokenizer.decode(gen[:k])
    assert job.completion_tokens == k and job.finish_reason == "stop"
    assert [t.id for d in deltas for t in d.tokens] == gen[:k]  # the stop id is not reported either


# --- logprobs ------------------------------------------------------------------------------------
def _check_logprobs(b, prompt: str, job, deltas: list[Delta], k: int) -> list[TokenLogprob]:
    """Every reported token's logprob is log_softmax(model(prompt + generated[:i]))[-1, token] (fp32, 1e-5)."""
    tokens = [t for d in deltas for t in d.tokens]
    ids = b.tokenizer.encode(prompt)
    gen = [t.id for t in tokens]
    assert len(gen) == job.completion_tokens > 0 and text_of(deltas) == b.tokenizer.decode(gen)
    with torch.no_grad():
        lp = torch.log_softmax(b.model(torch.tensor([ids + gen])).float(), dim=-1)[0]  # (T, V)
    for i, t in enumerate(tokens):
        row = lp[len(ids) - 1 + i]  # (V,) what the model saw before token i
        assert abs(t.logprob - float(row[t.id])) < 1e-5, (i, t)
        assert t.text == b.tokenizer.decode([t.id]) and len(t.top) == k
        assert [v for _, _, v in t.top] == sorted((v for _, _, v in t.top), reverse=True)
        for tid, text, value in t.top:
            assert abs(value - float(row[tid])) < 1e-5 and text == b.tokenizer.decode([tid])
        assert [tid for tid, _, _ in t.top] == row.topk(k).indices.tolist()
    return tokens


def test_logprobs_alone_equal_log_softmax_of_the_model(batchers):
    b = batchers()
    job, sink = submit(b, "KING HENRY:\nWhat", 10, opts(logprobs=3))
    deltas, error = sink.result()
    assert error is None and deltas[0] is STARTED and deltas[0].tokens == []
    _check_logprobs(b, "KING HENRY:\nWhat", job, deltas, 3)
    assert text_of(deltas) == alone(b, "KING HENRY:\nWhat", 10)  # the penalty still picks the tokens


def test_logprobs_in_a_left_padded_batch_of_3_equal_alone(batchers):
    b = batchers(max_batch=3, gather_ms=1000)
    prompts = ["O", "KING HENRY:\nWhat", "First Citizen:\nBefore we proceed"]
    runs = [submit(b, p, 10, opts(logprobs=3)) for p in prompts]
    for prompt, (job, sink) in zip(prompts, runs, strict=True):
        deltas, error = sink.result()
        assert error is None
        _check_logprobs(b, prompt, job, deltas, 3)
    assert b.stats()["max_batch_seen"] == 3


def test_greedy_picks_the_top_logprob_and_a_request_without_logprobs_gets_none(batchers):
    b = batchers(max_batch=2, gather_ms=1000)
    with_lp = submit(b, "ROMEO:", 8, opts(repetition_penalty=1.0, logprobs=2))
    without = submit(b, "ROMEO:", 8, opts(repetition_penalty=1.0))
    deltas, _ = with_lp[1].result()
    for t in _check_logprobs(b, "ROMEO:", with_lp[0], deltas, 2):
        assert t.top[0][0] == t.id and t.top[0][2] == t.logprob
    plain, _ = without[1].result()
    assert all(d.tokens == [] for d in plain) and text_of(plain) == text_of(deltas)
