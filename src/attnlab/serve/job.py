"""What passes between an HTTP handler and the scheduler: a request's options, its events, its errors.

A handler builds a :class:`Sampling` from a validated request, submits prompt ids to the
:class:`~attnlab.serve.batcher.Batcher` and gets a :class:`Job`. The worker thread sends the
job :class:`Delta` events (new text, and the new tokens' log-probabilities when asked for),
then ``None`` at the end, or a :class:`RequestError` first when the request failed. A
handler on an event loop passes ``sink`` (e.g. ``loop.call_soon_threadsafe`` into an
``asyncio.Queue``) so that no thread blocks waiting; without one, :meth:`Job.pieces` reads a
thread-safe queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from attnlab.generate.config import SamplingConfig


class RequestError(Exception):
    """A request the client must fix (4xx) or the server could not serve (5xx); ``body()`` is the OpenAI error JSON.

    Args:
        status: HTTP status.
        message: one line naming the problem and the fix.
        param: the offending request field, if any.
        code: a short machine-readable code.
        kind: the error ``type`` (default: ``invalid_request_error`` for 4xx, ``server_error`` for 5xx).
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Sampling:
    """Validated options of one request: how to decode and how to answer.

    Attributes:
        config: ``temperature`` (0 is greedy), ``top_p``, ``seed``, ``repetition_penalty`` and
            ``max_new_tokens`` (None: fill up to the cap / context).
        stop: strings that end the text (trimmed from it).
        stop_ids: token ids that end the reply (every EOS id, a chat template's end-of-turn); never shown.
        stream: answer as server-sent events.
        include_usage: ``stream_options.include_usage``: a stream ends with a chunk holding ``usage``.
        logprobs: None: no log-probabilities; ``k >= 0``: each generated token's log-probability
            (``log_softmax`` of the model's logits, before temperature / top-p / penalty) and the
            ``k`` most likely alternatives.
    """

    config: SamplingConfig = field(default_factory=SamplingConfig)
    stop: list[str] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None

    @property
    def max_tokens(self) -> int | None:
        """Tokens to generate at most (None: fill up to the cap / context)."""
        return self.config.max_new_tokens


@dataclass
class TokenLogprob:
    """One generated token and how likely the model found it.

    Attributes:
        id: the token id.
        text: its text (``tokenizer.decode([id])``; may hold U+FFFD for part of a character).
        logprob: ``log_softmax`` of the raw logits at this step, for this token.
        top: the ``k`` most likely tokens at this step as ``(id, text, logprob)``, best first.
    """

    id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class Delta:
    """New output of a running job: text now safe to show, and the tokens generated since the last delta
    (``tokens`` is empty unless the request asked for ``logprobs``)."""

    text: str
    tokens: list[TokenLogprob] = field(default_factory=list)


STARTED = Delta("")
"""The first event of every job that runs: it has left the queue (real deltas follow)."""

Event = Delta | RequestError | None


class Job:
    """One request inside the scheduler: its prompt, limits, options and the events it receives.

    Args:
        ids: prompt token ids.
        max_tokens: tokens to generate at most.
        opts: the request's sampling options.
        deadline: ``time.monotonic()`` past which it fails with 408 (None: no limit).
        sink: called from the worker thread with each event; None: events go to a queue read by :meth:`pieces`.

    Attributes:
        prompt_tokens / completion_tokens / finish_reason: filled in when it finishes.
        done: its last event (``None``) was sent.
    """

    def __init__(self, ids: list[int], max_tokens: int, opts: Sampling, deadline: float | None,
                 sink: Callable[[Event], None] | None = None):
        self.ids, self.max_tokens, self.opts, self.deadline = ids, max_tokens, opts, deadline
        self.prompt_tokens, self.completion_tokens, self.finish_reason = len(ids), 0, "length"
        self._queue: queue.Queue[Event] | None = None if sink is not None else queue.Queue()
        self._sink = sink if sink is not None else self._queue.put
        self._cancel = threading.Event()
        self.done = False

    def emit(self, event: Event) -> None:
        """Send one event to the handler (worker side); ``None`` marks it :attr:`done` (even if the sink fails)."""
        if event is None:
            self.done = True
        self._sink(event)

    def cancel(self) -> None:
        """Ask the worker to drop this job (its client went away); harmless once finished."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def pieces(self) -> Iterator[Delta]:
        """Deltas until the job ends (the first is :data:`STARTED`); only for a job made without ``sink``.

        Raises:
            RequestError: the job failed (time limit 408, shutdown or a dead worker 503, model error 500).
        """
        if self._queue is None:
            raise RuntimeError("this job sends its events to a sink; read them there")
        while True:
            event = self._queue.get()
            if event is None:
                return
            if isinstance(event, RequestError):
                raise event
            yield event


__all__ = ["STARTED", "Delta", "Event", "Job", "RequestError", "Sampling", "TokenLogprob"]
