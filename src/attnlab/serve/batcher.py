"""The scheduler that owns the model: concurrent requests decoded together, one batch at a time.

HTTP handler threads :meth:`Batcher.submit` a :class:`Job` and read its text deltas from
the job's own queue. One worker thread owns the model. It waits for a job, gathers more
for up to ``gather_ms`` (at most ``max_batch`` in all), left-pads their prompts into one
batch and decodes them step by step in a :class:`~attnlab.generate.Session`. Every row
keeps its own sampling settings (temperature, top-p, repetition penalty, a seeded
generator), stop strings, EOS and ``max_tokens``; sampling runs row by row on the batch
logits, so a request gives the same text in a batch as alone. A row that finishes, is
cancelled (its client went away) or runs out of time is dropped from the batch
(``Session.reorder``). Requests arriving meanwhile join the running batch between two
steps when there is room (:meth:`~attnlab.generate.Session.join`: prefilled on their
own, then merged, left-padded; :meth:`~attnlab.generate.Session.trim` drops the columns that
became padding for every row); otherwise they wait for the next batch. The batch ends
when no row is left.

Limits: at most ``max_concurrency`` jobs queued + running (beyond it :meth:`submit`
refuses with 429), and ``request_timeout`` seconds per request counted from submission
(then the job ends with a 408 error, queued or running).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.data import Tokenizer
from attnlab.data.tasks import pad_batch
from attnlab.generate import Session, apply_repetition_penalty, next_token
from attnlab.generate.session import eval_mode
from attnlab.generate.text import TextStream
from attnlab.serve.protocol import RequestError, Sampling

STARTED = ""  # the first event of every job that runs: it has left the queue (deltas follow)


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


class Job:
    """One request: its prompt, options, the queue its events go to, and its outcome.

    Attributes:
        ids: prompt token ids.
        max_tokens: tokens to generate at most.
        opts: the request's sampling options.
        prompt_tokens / completion_tokens / finish_reason: filled in when it finishes.
    """

    def __init__(self, ids: list[int], max_tokens: int, opts: Sampling, deadline: float | None):
        self.ids, self.max_tokens, self.opts, self.deadline = ids, max_tokens, opts, deadline
        self.prompt_tokens, self.completion_tokens, self.finish_reason = len(ids), 0, "length"
        self.events: queue.Queue[str | RequestError | None] = queue.Queue()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the worker to drop this job (its client went away); harmless once finished."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def pieces(self) -> Iterator[str]:
        """Text deltas until the job ends (the first is :data:`STARTED`, empty).

        Raises:
            RequestError: the job failed (time limit 408, shutdown 503, model error 500).
        """
        while True:
            event = self.events.get()
            if event is None:
                return
            if isinstance(event, RequestError):
                raise event
            yield event


class _Row:
    """A running job's decoding state."""

    def __init__(self, job: Job, tokenizer: Tokenizer, device: torch.device):
        self.job = job
        self.text = TextStream(tokenizer, job.opts.stop, tokenizer.eos_id)
        seed = job.opts.config.seed
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.steps = 0


def _timeout_error(limit: float | None) -> RequestError:
    return RequestError(408, f"the request took longer than this server's limit of {limit} s; lower max_tokens "
                        "or retry later", code="request_timeout")


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
        self._running = 0
        self._closing = self._stopped = False
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
    def submit(self, ids: list[int], max_tokens: int, opts: Sampling) -> Job:
        """Queue a request; read its deltas with :meth:`Job.pieces`.

        Raises:
            RequestError: the server is at its concurrency limit (429) or shutting down (503).
        """
        limit = self.cfg.request_timeout
        job = Job(ids, max_tokens, opts, None if limit is None else time.monotonic() + limit)
        with self._cond:
            if self._closing:
                raise RequestError(503, "the server is shutting down; retry on another replica or later",
                                   code="shutting_down")
            if len(self._pending) + self._running >= self.cfg.max_concurrency:
                raise RequestError(429, f"the server is at its limit of {self.cfg.max_concurrency} concurrent "
                                   "requests; retry shortly", code="too_many_requests", kind="rate_limit_error")
            self._pending.append(job)
            self._cond.notify_all()
        return job

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
            while (self._pending or self._running) and time.monotonic() < end:
                self._cond.wait(min(0.1, max(end - time.monotonic(), 0.0)))
            drained = not (self._pending or self._running)
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=max(end - time.monotonic(), 0.0) + 10.0)
        return drained

    # --- the worker side ------------------------------------------------------------------
    def _finish(self, job: Job, error: RequestError | None = None) -> None:
        """Send the job's last event and count it (call with the lock held)."""
        if error is None:
            self.served += 1
        else:
            self.failed += 1
            job.events.put(error)
        job.events.put(None)

    def _drop_stale(self, now: float) -> None:
        """Fail queued jobs that ran out of time or were cancelled (lock held)."""
        for job in [j for j in self._pending if j.cancelled or j.expired(now)]:
            self._pending.remove(job)
            if job.cancelled:
                self.cancelled += 1
                job.events.put(None)
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
            self._running = len(batch)
            if batch:
                self.batches += 1
                self.max_batch_seen = max(self.max_batch_seen, len(batch))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if not batch:
                if self._stopped:
                    return
                continue
            rows = [_Row(job, self.tokenizer, self.device) for job in batch]
            try:
                self._decode(rows)
            except Exception:  # noqa: BLE001 — the worker must survive a failing batch
                traceback.print_exc(file=sys.stderr)
                with self._cond:
                    for row in rows:
                        self._finish(row.job, RequestError(500, "internal server error; see the server log",
                                                           code="internal_error"))
            finally:
                with self._cond:
                    self._running = 0
                    self._cond.notify_all()

    def _session(self, jobs: list[Job]) -> Session:
        """The left-padded batch of the jobs' prompts (no mask when all have the same length)."""
        ids, mask = pad_batch([j.ids for j in jobs], 0, side="left")  # (N, T) each
        padded = bool((mask == 0).any())
        return Session(self.model, ids.to(self.device), max(j.max_tokens for j in jobs),
                       attention_mask=mask.to(self.device) if padded else None)

    def _pick(self, rows: list[_Row], logits: torch.Tensor, session: Session) -> torch.Tensor:
        """(N,) next tokens, each row with its own penalty, temperature, top-p and generator."""
        picked = []
        for i, row in enumerate(rows):
            o = row.job.opts.config
            valid = None if session.padding is None else session.padding[i:i + 1]
            row_logits = apply_repetition_penalty(logits[i:i + 1], session.tokens[i:i + 1], o.repetition_penalty,
                                                  valid)  # (1, V)
            picked.append(next_token(row_logits, temperature=o.temperature, top_k=o.top_k, top_p=o.top_p,
                                     generator=row.generator))
        return torch.cat(picked)  # (N,)

    def _end_row(self, row: _Row, now: float) -> bool:
        """Finish ``row`` if it is done, cancelled or out of time (lock held); True if it ended."""
        job, text = row.job, row.text
        if job.cancelled:
            self.cancelled += 1
            job.events.put(None)
        elif self._stopped:
            self._finish(job, RequestError(503, "the server shut down while this request ran; retry",
                                           code="shutting_down"))
        elif job.expired(now):
            self._finish(job, _timeout_error(self.cfg.request_timeout))
        elif text.finished or row.steps >= job.max_tokens:
            rest = text.flush()
            if rest:
                job.events.put(rest)
            job.completion_tokens, job.finish_reason = text.n_tokens, text.finish_reason
            self._finish(job)
        else:
            return False
        return True

    def _joiners(self, rows: list[_Row], session: Session) -> list[Job]:
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
            self._running = len(rows) + len(taken)
            self.max_batch_seen = max(self.max_batch_seen, self._running)
        return taken

    def _admit(self, rows: list[_Row], session: Session, logits: torch.Tensor) -> torch.Tensor:
        """Let queued jobs join the batch (prefilled apart, then merged); (N, V) logits of all rows."""
        if not (self.cfg.join and self.paddable and session.can_join()) or len(rows) >= self.cfg.max_batch:
            return logits
        with self._cond:
            self._drop_stale(time.monotonic())
            # Each join costs a prefill call and a cache copy: under load, wait until half the batch is free.
            if self.cfg.max_batch - len(rows) < min(len(self._pending), max(1, self.cfg.max_batch // 2)):
                return logits
            jobs = self._joiners(rows, session)
        if not jobs:
            return logits
        rows.extend(_Row(job, self.tokenizer, self.device) for job in jobs)
        new = self._session(jobs)
        for job in jobs:
            job.events.put(STARTED)
        new_logits = new.next_logits()  # (n, V) the prefill of the new rows
        session.join(new)
        return torch.cat((logits, new_logits))  # (N + n, V)

    @torch.no_grad()
    def _decode(self, rows: list[_Row]) -> None:
        """Decode the batch until every row ended, dropping rows as they end and (with
        ``cfg.join``) taking queued jobs into the free places between steps."""
        with eval_mode(self.model):
            session = self._session([r.job for r in rows])
            for row in rows:
                row.job.events.put(STARTED)
            logits = session.next_logits()  # (N, V)
            while True:
                tokens = self._pick(rows, logits, session)
                session.append(tokens)
                keep = []
                with self._cond:
                    now = time.monotonic()
                    for i, row in enumerate(rows):
                        row.steps += 1
                        piece = row.text.push(int(tokens[i]))
                        if piece:
                            row.job.events.put(piece)
                        if not self._end_row(row, now):
                            keep.append(i)
                    self._drop_stale(now)
                    self._running = len(keep)
                    self._cond.notify_all()
                if len(keep) < len(rows):
                    rows[:] = [rows[i] for i in keep]  # in place: the caller fails what is left on an error
                    if not rows:
                        return
                    session.reorder(torch.tensor(keep, device=self.device))
                    session.trim()
                logits = self._admit(rows, session, session.next_logits())


__all__ = ["STARTED", "BatchConfig", "Batcher", "Job"]
