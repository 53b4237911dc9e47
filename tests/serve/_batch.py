"""Helpers of the scheduler tests (test_batching, test_job): a model wrapper that holds or slows the
worker, a sink that records a job's events with a time limit, and the text a request gives alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from attnlab.generate import SamplingConfig, generate
from attnlab.serve.batcher import BatchConfig, Batcher
from attnlab.serve.job import Delta, Event, RequestError, Sampling

PENALTY = 3.0  # the tiny model's greedy text is all newlines without a repetition penalty
WAIT = 20.0  # seconds any test waits for an event at most: a hang fails, never blocks the suite


class Throttled(nn.Module):
    """Wraps the LM: every forward waits for :attr:`gate`, sleeps ``delay`` seconds, then raises
    if :attr:`fail_at` names this forward's number (counted from 1 in :attr:`calls`)."""

    accepts_padding = True  # its forward passes attention_mask on (see attnlab.models.protocols)

    def __init__(self, inner: nn.Module, delay: float = 0.0):
        super().__init__()
        self.inner, self.delay = inner, delay
        self.max_context = inner.max_context
        self.gate, self.waiting = threading.Event(), threading.Event()  # waiting: a forward waits at the gate
        self.gate.set()
        self.calls, self.fail_at = 0, None

    def make_cache(self):
        return self.inner.make_cache()

    def forward(self, input_ids, *, cache=None, attention_mask=None):
        if not self.gate.is_set():
            self.waiting.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        self.waiting.clear()
        time.sleep(self.delay)
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected forward failure")
        return self.inner(input_ids, cache=cache, attention_mask=attention_mask)


def opts(temperature: float = 0.0, repetition_penalty: float = PENALTY, *, stop=(), stop_ids=(), logprobs=None,
         **config) -> Sampling:
    """A request's options: greedy with the penalty unless told otherwise."""
    cfg = SamplingConfig(temperature=temperature, repetition_penalty=repetition_penalty, **config)
    return Sampling(config=cfg, stop=list(stop), stop_ids=list(stop_ids), logprobs=logprobs)


class Sink:
    """Records a job's events (pass as ``sink``); :meth:`wait` and :meth:`result` wait with a time limit."""

    def __init__(self):
        self.log: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.log.append(event)
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT) -> None:
        """Until ``predicate(events so far)``; fails the test if it does not come in time (a hang)."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.log), timeout):
                pytest.fail(f"waited {timeout} s in vain (a hang?); events so far: {self.log}")

    def wait_text(self, timeout: float = WAIT) -> None:
        """Until some text arrived (or the job ended)."""
        self.wait(lambda log: any(e is None or (isinstance(e, Delta) and e.text) for e in log), timeout)

    def result(self, timeout: float = WAIT) -> tuple[list[Delta], RequestError | None]:
        """(deltas, error or None) once the job ended; checks the events' order: deltas, one error at most, None."""
        self.wait(lambda log: any(e is None for e in log), timeout)
        *events, last = self.log
        assert last is None and sum(e is None for e in self.log) == 1, self.log
        errors = [e for e in events if isinstance(e, RequestError)]
        assert len(errors) <= 1 and (not errors or events[-1] is errors[0]), events
        return [e for e in events if isinstance(e, Delta)], (errors[0] if errors else None)


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def submit(batcher: Batcher, prompt: str, n: int, o: Sampling | None = None):
    """Submit ``prompt`` for ``n`` tokens with a :class:`Sink`; (job, sink)."""
    sink = Sink()
    return batcher.submit(batcher.tokenizer.encode(prompt), n, o or opts(), sink), sink


def served(batcher: Batcher, prompt: str, n: int, o: Sampling | None = None) -> str:
    """The text of one request run to its end (fails the test on an error)."""
    _, sink = submit(batcher, prompt, n, o)
    deltas, error = sink.result()
    assert error is None, error.body()
    return text_of(deltas)


def alone(batcher: Batcher, prompt: str, n: int, **kw) -> str:
    """The continuation by ``generate`` alone, up to EOS (greedy with the penalty unless ``kw`` says otherwise)."""
    tok, model = batcher.tokenizer, getattr(batcher.model, "inner", batcher.model)
    ids = tok.encode(prompt)
    kw = {"temperature": 0.0, "repetition_penalty": PENALTY, **kw}
    out = generate(model, torch.tensor([ids]), n, eos_token_id=tok.eos_id, **kw)
    new = out[0, len(ids):].tolist()
    return tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new)


def start_batchers(serve_model):
    """The body of a ``batchers`` fixture: yields ``start(model=None, **limits) -> Batcher`` on the tiny
    model, and closes every batcher it started afterwards."""
    started: list[Batcher] = []

    def start(model=None, **limits) -> Batcher:
        m, tok, device = serve_model
        started.append(Batcher(model or m, tok, device, BatchConfig(**limits)))
        return started[-1]

    yield start
    for b in started:
        b.close(timeout=5)
