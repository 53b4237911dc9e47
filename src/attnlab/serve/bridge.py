"""The event-loop side of a request's jobs: their events on an ``asyncio.Queue``, and cancelling on hang-up.

The scheduler runs on its own thread and calls each job's ``sink`` there; :class:`Run` makes the
sink ``loop.call_soon_threadsafe(queue.put_nowait, (choice, event))``, so a coroutine awaits the
events of all ``n`` choices of one request, interleaved, without a thread blocking per request. A
task waits for the client's ``http.disconnect`` and cancels the jobs, streaming or not, so a
client that hangs up frees its batch rows at the next step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request

from attnlab.serve.engine import Engine
from attnlab.serve.job import Delta, Event, Job, RequestError, Sampling, TokenLogprob


class Run:
    """The jobs of one request (one per choice), submitted at once.

    Args:
        engine: where to submit.
        ids: prompt token ids.
        max_tokens: tokens to generate at most, per choice.
        opts: each choice's options.
        request: the HTTP request, watched for the client hanging up.
        on_text: called once, when the first generated text arrives (time to first token).
        lstrip: drop each choice's leading whitespace (a chat reply: the template puts its own separator
            before it, as ``attnlab chat`` does).

    Raises:
        RequestError: a job was refused (429, 503); the ones already submitted are cancelled.
    """

    def __init__(self, engine: Engine, ids: list[int], max_tokens: int, opts: list[Sampling], request: Request,
                 on_text: Callable[[], None] = lambda: None, lstrip: bool = False):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.buffer: deque[tuple[int, Event]] = deque()
        self.jobs: list[Job] = []
        self.on_text, self.completion_tokens = on_text, 0
        self._open, self._texted = len(opts), False
        self._leading = [lstrip] * len(opts)  # choice i still drops leading whitespace
        self._watch: asyncio.Task | None = None
        try:
            for i, o in enumerate(opts):
                self.jobs.append(engine.submit(ids, max_tokens, o, sink=self._sink(i)))
        except BaseException:
            self.close()
            raise
        self._watch = self.loop.create_task(self._cancel_on_disconnect(request))

    def _sink(self, i: int) -> Callable[[Event], None]:
        loop, queue = self.loop, self.queue

        def sink(event: Event) -> None:  # on the worker thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (i, event))
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

        return sink

    async def _cancel_on_disconnect(self, request: Request) -> None:
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 — a receive channel that ended: treat as gone
            pass
        self.cancel()

    def cancel(self) -> None:
        """Drop every job (harmless for finished ones)."""
        for job in self.jobs:
            job.cancel()

    def close(self) -> None:
        """Cancel the jobs and stop watching the connection (call when the answer is done)."""
        self.cancel()
        if self._watch is not None:
            self._watch.cancel()

    async def _next(self) -> tuple[int, Event]:
        return self.buffer.popleft() if self.buffer else await self.queue.get()

    async def started(self) -> None:
        """Wait until every job has left the queue (its first event).

        Raises:
            RequestError: a job failed before running (408 in the queue, 503 shutting down).
        """
        seen: set[int] = set()
        while len(seen) < len(self.jobs):
            i, event = await self.queue.get()
            if isinstance(event, RequestError):
                raise event
            self.buffer.append((i, event))
            seen.add(i)

    async def events(self) -> AsyncIterator[tuple[int, Delta | None, Job | None]]:
        """``(choice, delta, None)`` for new output, ``(choice, None, job)`` when that choice ended.

        Raises:
            RequestError: a job failed (408, 500, 503); the request fails as a whole.
        """
        while self._open:
            i, event = await self._next()
            if isinstance(event, RequestError):
                raise event
            if event is None:
                self._open -= 1
                self.completion_tokens += self.jobs[i].completion_tokens
                yield i, None, self.jobs[i]
                continue
            if self._leading[i] and event.text:
                event = Delta(event.text.lstrip(), event.tokens)
                self._leading[i] = not event.text
            if event.text and not self._texted:
                self._texted = True
                self.on_text()
            yield i, event, None

    async def collect(self) -> tuple[list[str], list[list[TokenLogprob]], list[str]]:
        """Every choice's whole text, tokens (with logprobs when asked) and finish reason."""
        texts: list[list[str]] = [[] for _ in self.jobs]
        tokens: list[list[TokenLogprob]] = [[] for _ in self.jobs]
        async for i, delta, _ in self.events():
            if delta is not None:
                texts[i].append(delta.text)
                tokens[i].extend(delta.tokens)
        return ["".join(t) for t in texts], tokens, [j.finish_reason for j in self.jobs]


__all__ = ["Run"]
