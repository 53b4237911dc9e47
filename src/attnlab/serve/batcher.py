"""The scheduler that owns the model: concurrent requests decoded together, one batch at a time.

Handlers :meth:`Batcher.submit` a :class:`~attnlab.serve.job.Job` and receive its
:class:`~attnlab.serve.job.Delta` events (through its ``sink``, or :meth:`Job.pieces`). One
worker thread owns the model. It waits for a job, gathers more for up to ``gather_ms`` (at
most ``max_batch`` in all), left-pads their prompts into one batch and decodes them step by
step in a :class:`~attnlab.generate.Session`. Every row keeps its own sampling settings
(temperature, top-p, repetition penalty, a seeded generator), stop strings, stop ids, EOS,
``max_tokens`` and log-probabilities; sampling runs row by row on the batch logits, so a
request gives the same text in a batch as alone. A row that finishes, is cancelled (its
client went away) or runs out of time is dropped from the batch (``Session.reorder``).
Requests arriving meanwhile join the running batch between two steps when there is room
(:meth:`~attnlab.generate.Session.join`: prefilled on their own, then merged, left-padded;
:meth:`~attnlab.generate.Session.trim` drops the columns that became padding for every row);
otherwise they wait for the next batch. The batch ends when no row is left.

Failures stay as small as they can (hand-written because no library schedules our
``Session``): whatever fails for one request (checking its options, seeding its generator,
its sampling, its log-probabilities, its detokenizing) ends that request alone with a
:class:`~attnlab.serve.job.RequestError` (400 if the request is at fault, else 500) and the
batch goes on; a failing batched forward ends that batch's requests with 500 and the worker
serves the next batch. Each failure is one line on stderr (plus the traceback for a 5xx). If
the worker thread ever stops anyway, :attr:`Batcher.alive` turns False, every waiting
request gets a 503 and so does every later :meth:`~Batcher.submit`: nothing hangs.

Limits: at most ``max_concurrency`` jobs queued + running (beyond it :meth:`submit`
refuses with 429), and ``request_timeout`` seconds per request counted from submission
(then the job ends with a 408 error, queued or running).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.data import Tokenizer
from attnlab.data.tasks import pad_batch
from attnlab.generate import Session
from attnlab.generate.session import eval_mode
from attnlab.serve.job import STARTED, Event, Job, RequestError, Sampling
from attnlab.serve.row import Row


@dataclass
class BatchConfig:
    """Scheduling limits.

    Attributes:
        max_batch: requests decoded together at most (1: one at a time).
        gather_ms: how long the worker waits for more requests once one arrived.
        max_concurrency: requests queued + running at most; more are refused with 429.
        request_timeout: seconds a request may take from submission to its last token
            (None: no limit); past it the request ends with a 408 error.
        join: let queued requests join a running batch between steps (iteration-level
            batching); otherwise they wait until the whole batch has finished.
    """

    max_batch: int = 8
    gather_ms: float = 5.0
    max_concurrency: int = 64
    request_timeout: float | None = 300.0
    join: bool = True

    def check(self) -> None:
        """Raise a ``ValueError`` naming the bad field."""
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.gather_ms < 0:
            raise ValueError(f"gather_ms must be >= 0, got {self.gather_ms}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 seconds (or None), got {self.request_timeout}")


def _timeout_error(limit: float | None) -> RequestError:
    return RequestError(408, f"the request took longer than this server's limit of {limit} s; lower max_tokens "
                        "or retry later", code="request_timeout")


def _log(line: str, exc: BaseException | None = None) -> None:
    """One line on stderr, then ``exc``'s traceback if given."""
    print(f"attnlab serve: {line}", file=sys.stderr, flush=True)
    if exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


class Batcher:
    """The worker thread and queue in front of one model (see the module docstring).

    Args:
        model: a decoder-only LM in eval mode with ``max_context``.
        tokenizer: its tokenizer.
        device: where the model lives.
        cfg: limits.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, device: torch.device, cfg: BatchConfig):
        cfg.check()
        self.model, self.tokenizer, self.device, self.cfg = model, tokenizer, device, cfg
        self.context = int(model.max_context)
        self.paddable = self._can_pad()
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._taken: list[Job] = []  # jobs out of the queue: running, or about to
        self._closing = self._stopped = self._dead = False
        self.served = self.failed = self.cancelled = self.joined = self.batches = self.max_batch_seen = 0
        self._thread = threading.Thread(target=self._loop, name="attnlab-batcher", daemon=True)
        self._thread.start()

    @torch.no_grad()
    def _can_pad(self) -> bool:
        """Whether the model takes a left-padding mask; if not, only equal-length prompts share a batch."""
        ids = torch.zeros(2, 2, dtype=torch.long, device=self.device)
        mask = torch.tensor([[0, 1], [1, 1]], device=self.device)
        try:
            with eval_mode(self.model):
                Session(self.model, ids, 0, attention_mask=mask).next_logits()
        except (ValueError, TypeError):
            return False
        return True

    # --- the handler side -----------------------------------------------------------------
    def submit(self, ids: list[int], max_tokens: int, opts: Sampling,
               sink: Callable[[Event], None] | None = None) -> Job:
        """Queue a request; its events go to ``sink`` (called on the worker thread), else read
        them with :meth:`Job.pieces`.

        Raises:
            RequestError: the server is at its concurrency limit (429), shutting down, or its
                scheduler stopped (503).
        """
        limit = self.cfg.request_timeout
        job = Job(ids, max_tokens, opts, None if limit is None else time.monotonic() + limit, sink)
        with self._cond:
            if self._closing:
                raise RequestError(503, "the server is shutting down; retry on another replica or later",
                                   code="shutting_down")
            if not self.alive:
                raise self._stopped_error()
            if len(self._pending) + self._running >= self.cfg.max_concurrency:
                raise RequestError(429, f"the server is at its limit of {self.cfg.max_concurrency} concurrent "
                                   "requests; retry shortly", code="too_many_requests", kind="rate_limit_error")
            self._pending.append(job)
            self._cond.notify_all()
        return job

    @property
    def alive(self) -> bool:
        """False once the worker thread stopped for any reason but :meth:`close`."""
        return not self._dead and (self._stopped or self._thread.is_alive())

    @property
    def _running(self) -> int:
        return sum(not job.done for job in self._taken)

    def stats(self) -> dict[str, int]:
        """Counters: served, failed, cancelled, batches (started), joined (rows that joined a running
        batch), max_batch_seen, running, queued."""
        with self._cond:
            return {"served": self.served, "failed": self.failed, "cancelled": self.cancelled, "batches": self.batches,
                    "joined": self.joined,
                    "max_batch_seen": self.max_batch_seen, "running": self._running, "queued": len(self._pending)}

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new jobs, let queued and running ones finish for up to ``timeout`` seconds,
        then fail the rest with 503 and stop the worker. Returns True if all finished in time."""
        end = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._pending or self._running) and not self._dead and time.monotonic() < end:
                self._cond.wait(min(0.1, max(end - time.monotonic(), 0.0)))
            drained = not (self._pending or self._running)
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=max(end - time.monotonic(), 0.0) + 10.0)
        return drained

    # --- failures ---------------------------------------------------------------------------
    @staticmethod
    def _stopped_error() -> RequestError:
        return RequestError(503, "the scheduler stopped; restart the server", code="scheduler_stopped")

    def _emit(self, job: Job, event: Event) -> None:
        """Send ``event``; a sink that fails (its client is gone) cancels the job instead of stopping the worker."""
        try:
            job.emit(event)
        except Exception as exc:  # noqa: BLE001 — one handler's failure must not reach the others
            _log(f"a request's handler refused an event ({type(exc).__name__}: {exc}); dropping the request")
            job.cancel()

    def _failure(self, exc: Exception, what: str) -> RequestError:
        """The error a request gets when ``what`` failed for it (400 for its own bad options, else 500), logged."""
        if isinstance(exc, RequestError):
            err = exc
        else:
            err = RequestError(500, f"the server failed while {what}; see the server log", code="internal_error")
        _log(f"a request failed ({err.status}) while {what}: {type(exc).__name__}: {exc}",
             exc if err.status >= 500 else None)
        return err

    def _die(self, exc: BaseException) -> None:
        """The worker is stopping on an error: fail every job in and out of the queue with 503."""
        try:
            _log(f"the scheduler stopped on an error ({type(exc).__name__}: {exc}); every request now gets 503 "
                 "until the server restarts", exc)
        finally:
            with self._cond:
                self._dead = True
                for job in [*self._taken, *self._pending]:
                    if not job.done:
                        self._finish(job, self._stopped_error())
                self._pending.clear()
                self._taken = []
                self._cond.notify_all()

    # --- the worker side ------------------------------------------------------------------
    def _finish(self, job: Job, error: RequestError | None = None) -> None:
        """Send the job's last event and count it (call with the lock held)."""
        if error is None:
            self.served += 1
        else:
            self.failed += 1
            self._emit(job, error)
        self._emit(job, None)

    def _drop_stale(self, now: float) -> None:
        """Fail queued jobs that ran out of time or were cancelled (lock held)."""
        for job in [j for j in self._pending if j.cancelled or j.expired(now)]:
            self._pending.remove(job)
            if job.cancelled:
                self.cancelled += 1
                self._emit(job, None)
            else:
                self._finish(job, _timeout_error(self.cfg.request_timeout))

    def _fits(self, batch: list[Job], job: Job) -> bool:
        """Whether ``job`` can join ``batch``: padded prompt + longest continuation within the context."""
        if not batch:
            return True
        if not self.paddable and len(job.ids) != len(batch[0].ids):
            return False
        longest = max(len(j.ids) for j in batch + [job])
        return longest + max(j.max_tokens for j in batch + [job]) <= self.context

    def _gather(self) -> list[Job]:
        """Wait for work, then take up to ``max_batch`` jobs that fit together ([] when stopping)."""
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                for job in list(self._pending):
                    self._finish(job, RequestError(503, "the server shut down before this request ran; retry",
                                                   code="shutting_down"))
                self._pending.clear()
                return []
            end = time.monotonic() + self.cfg.gather_ms / 1000
            while len(self._pending) < self.cfg.max_batch and not self._closing and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
            self._drop_stale(time.monotonic())
            batch: list[Job] = []
            for job in list(self._pending):
                if len(batch) < self.cfg.max_batch and self._fits(batch, job):
                    batch.append(job)
                    self._pending.remove(job)
            self._taken = list(batch)
            if batch:
                self.batches += 1
                self.max_batch_seen = max(self.max_batch_seen, len(batch))
            return batch

    def _loop(self) -> None:
        try:
            while True:
                batch = self._gather()
                if not batch:
                    if self._stopped:
                        return
                    continue
                rows = self._start(batch)
                if rows:
                    self._decode(rows)
                with self._cond:
                    self._taken = []
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 — whatever stops the worker, nobody may wait forever
            self._die(exc)

    def _start(self, jobs: list[Job]) -> list[Row]:
        """Rows of the jobs that can start (a job whose options fail fails alone); each gets :data:`STARTED`."""
        rows = []
        for job in jobs:
            try:
                rows.append(Row(job, self.tokenizer, self.device, self.context))
            except Exception as exc:  # noqa: BLE001 — this request's fault or bad luck, never the batch's
                error = self._failure(exc, "admitting it")
                with self._cond:
                    self._finish(job, error)
        for row in rows:
            self._emit(row.job, STARTED)
        return rows

    def _session(self, jobs: list[Job]) -> Session:
        """The left-padded batch of the jobs' prompts (no mask when all have the same length)."""
        ids, mask = pad_batch([j.ids for j in jobs], 0, side="left")  # (N, T) each
        padded = bool((mask == 0).any())
        return Session(self.model, ids.to(self.device), max(j.max_tokens for j in jobs),
                       attention_mask=mask.to(self.device) if padded else None)

    def _pick(self, rows: list[Row], logits: torch.Tensor, session: Session) -> list[int]:
        """The next token of every row (see :meth:`Row.pick`); a row whose sampling fails gets an error and token 0."""
        picked = []
        for i, row in enumerate(rows):
            valid = None if session.padding is None else session.padding[i:i + 1]
            try:
                picked.append(row.pick(logits[i:i + 1], session.tokens[i:i + 1], valid))
            except Exception as exc:  # noqa: BLE001 — fails this row alone
                row.error = self._failure(exc, "sampling its next token")
                picked.append(0)
        return picked

    def _end_row(self, row: Row, now: float) -> bool:
        """Finish ``row`` if it failed, is done, cancelled or out of time (lock held); True if it ended."""
        job = row.job
        if job.cancelled:
            self.cancelled += 1
            self._emit(job, None)
        elif row.error is not None:
            self._finish(job, row.error)
        elif self._stopped:
            self._finish(job, RequestError(503, "the server shut down while this request ran; retry",
                                           code="shutting_down"))
        elif job.expired(now):
            self._finish(job, _timeout_error(self.cfg.request_timeout))
        elif row.done:
            try:
                rest = row.flush()
            except Exception as exc:  # noqa: BLE001 — fails this row alone
                self._finish(job, self._failure(exc, "detokenizing its text"))
                return True
            if rest is not None:
                self._emit(job, rest)
            job.completion_tokens, job.finish_reason = row.text.n_tokens, row.text.finish_reason
            self._finish(job)
        else:
            return False
        return True

    def _advance(self, rows: list[Row], tokens: list[int]) -> list[int]:
        """Push each row's new token, send its text, end the rows that are done; the indices of the others."""
        keep = []
        with self._cond:
            now = time.monotonic()
            for i, row in enumerate(rows):
                row.steps += 1
                if row.error is None:
                    try:
                        delta = row.push(tokens[i])
                    except Exception as exc:  # noqa: BLE001 — fails this row alone
                        row.error = self._failure(exc, "detokenizing its text")
                    else:
                        if delta is not None:
                            self._emit(row.job, delta)
                if not self._end_row(row, now):
                    keep.append(i)
            self._drop_stale(now)
            self._taken = [job for job in self._taken if not job.done]
            self._cond.notify_all()
        return keep

    def _joiners(self, rows: list[Row], session: Session) -> list[Job]:
        """Queued jobs that can join the running batch now (lock held): room in the batch and, once
        left-padded to a common width, every row's remaining tokens within the context."""
        width = session.tokens.size(1)
        need = max(r.job.max_tokens - r.steps for r in rows)
        taken: list[Job] = []
        for job in list(self._pending):
            if len(rows) + len(taken) >= self.cfg.max_batch:
                break
            w, n = max(width, len(job.ids)), max(need, job.max_tokens)
            if w + n <= self.context:
                width, need = w, n
                taken.append(job)
                self._pending.remove(job)
        if taken:
            self.joined += len(taken)
            self._taken.extend(taken)
            self.max_batch_seen = max(self.max_batch_seen, len(rows) + len(taken))
        return taken

    def _admit(self, rows: list[Row], session: Session, logits: torch.Tensor) -> torch.Tensor:
        """Let queued jobs join the batch (prefilled apart, then merged); (N, V) logits of all rows.
        A job that cannot start fails alone; a failing prefill fails the joining jobs only."""
        if not (self.cfg.join and self.paddable and session.can_join()) or len(rows) >= self.cfg.max_batch:
            return logits
        with self._cond:
            self._drop_stale(time.monotonic())
            # Each join costs a prefill call and a cache copy: under load, wait until half the batch is free.
            if self.cfg.max_batch - len(rows) < min(len(self._pending), max(1, self.cfg.max_batch // 2)):
                return logits
            jobs = self._joiners(rows, session)
        new_rows = self._start(jobs) if jobs else []
        if not new_rows:
            return logits
        try:
            new = self._session([r.job for r in new_rows])
            new_logits = new.next_logits()  # (n, V) the prefill of the new rows
        except Exception as exc:  # noqa: BLE001 — the running rows go on
            error = self._failure(exc, "prefilling its prompt")
            with self._cond:
                for row in new_rows:
                    self._finish(row.job, error)
            return logits
        rows.extend(new_rows)  # before the join: should it fail, the batch's failure reaches them too
        session.join(new)
        return torch.cat((logits, new_logits))  # (N + n, V)

    @torch.no_grad()
    def _decode(self, rows: list[Row]) -> None:
        """Decode the batch until every row ended, dropping rows as they end and (with
        ``cfg.join``) taking queued jobs into the free places between steps. A failing
        batched step fails the rows still running with 500."""
        try:
            with eval_mode(self.model):
                session = self._session([r.job for r in rows])
                logits = session.next_logits()  # (N, V)
                while True:
                    tokens = self._pick(rows, logits, session)
                    session.append(torch.tensor(tokens, device=self.device))  # (N,)
                    keep = self._advance(rows, tokens)
                    if len(keep) < len(rows):
                        rows[:] = [rows[i] for i in keep]  # in place: failed below, what is left is what ran
                        if not rows:
                            return
                        session.reorder(torch.tensor(keep, device=self.device))
                        session.trim()
                    logits = self._admit(rows, session, session.next_logits())
        except Exception as exc:  # noqa: BLE001 — the batch fails, the worker goes on
            error = self._failure(exc, "running its batch")
            with self._cond:
                for row in rows:
                    if not row.job.done:
                        self._finish(row.job, error)


__all__ = ["STARTED", "BatchConfig", "Batcher", "Job"]
