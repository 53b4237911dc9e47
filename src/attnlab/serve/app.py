"""The server as one FastAPI app: the OpenAI API, ``/health``, the pages, errors as OpenAI JSON.

Routes: ``GET /health`` (503 once the scheduler stopped), ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true``: server-sent events,
``data: {...}`` chunks ending with ``data: [DONE]``), the pages of :mod:`attnlab.serve.pages`,
``/metrics`` (:mod:`attnlab.serve.metrics`) and the OpenAPI schema at ``/docs``.

Handlers are coroutines: each submits its ``n`` jobs to the engine's worker thread with a
``sink`` that hands events to the event loop (``loop.call_soon_threadsafe``), so no thread
waits per request; a task watching for the client hanging up cancels the jobs, streaming or
not. A stream starts once every job has left the queue, so a queue time-out is still a plain
JSON error; an error after that is an ``{"error": ...}`` event, then ``[DONE]``.

Every error is ``{"error": {"message", "type", "param", "code"}}``: validation (400 naming
the field), unknown routes (404), wrong methods (405), bodies FastAPI cannot parse (400),
:class:`~attnlab.serve.job.RequestError` from the engine (4xx/5xx), anything unexpected
(500, traceback in the server log only). JSON answers are ASCII-escaped, so no input can
make an answer fail to encode.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from attnlab.serve import metrics as metrics_lib
from attnlab.serve import pages
from attnlab.serve import security as security_lib
from attnlab.serve.bridge import Run
from attnlab.serve.engine import Engine
from attnlab.serve.job import RequestError, TokenLogprob
from attnlab.serve.schemas import (
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    validation_error,
)

if TYPE_CHECKING:
    from attnlab.viz.explorer import Explorer

log = logging.getLogger("attnlab.serve")


class AsciiJSON(JSONResponse):
    """JSON escaped to ASCII: a lone surrogate echoed from a request cannot break the encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def error_response(err: RequestError, headers: dict[str, str] | None = None) -> Response:
    """The OpenAI error JSON of ``err`` with its status."""
    return AsciiJSON(err.body(), status_code=err.status, headers=headers)


# --------------------------------------------------------------------------- error handlers

def install_error_handlers(app: FastAPI) -> None:
    """Make every error the OpenAI error JSON (see the module docstring)."""

    async def on_request_error(request: Request, exc: RequestError) -> Response:
        return error_response(exc)

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc.errors()))

    async def on_http(request: Request, exc: HTTPException) -> Response:
        path = request.url.path[:200]
        if exc.status_code == 404:
            err = RequestError(404, f"no route {request.method} {path}; the API is GET /v1/models, POST "
                               "/v1/completions and POST /v1/chat/completions (schema at /docs)", code="not_found")
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err = RequestError(405, f"{request.method} is not allowed on {path}" + (f"; use {allow}" if allow else ""),
                               code="method_not_allowed")
        elif exc.status_code == 400:
            err = RequestError(400, "the request body could not be read as JSON (invalid UTF-8, or nested too "
                               "deep); send a JSON object", code="invalid_json")
        else:
            err = RequestError(exc.status_code, str(exc.detail).replace("\n", " ")[:500], code="http_error")
        return error_response(err, headers=exc.headers)

    async def on_crash(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        return error_response(RequestError(500, "internal server error; see the server log", code="internal_error"))

    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)


# --------------------------------------------------------------------------- answers

def _lp(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # as OpenAI: JSON has no -Infinity


def chat_logprobs(engine: Engine, tokens: list[TokenLogprob]) -> dict[str, Any]:
    """``logprobs`` of a chat choice: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    return {"content": [{
        "token": t.text, "logprob": _lp(t.logprob), "bytes": engine.token_bytes(t.id),
        "top_logprobs": [{"token": s, "logprob": _lp(lp), "bytes": engine.token_bytes(i)} for i, s, lp in t.top]}
        for t in tokens]}


def completion_logprobs(tokens: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """``logprobs`` of a completion choice; ``offset``: characters of the choice's text before these tokens."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [_lp(t.logprob) for t in tokens],
            "top_logprobs": [{s: _lp(lp) for _, s, lp in t.top} for t in tokens], "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Answer:
    """Builds one request's response or chunks (ids, timestamps, the choices' text offsets)."""

    def __init__(self, engine: Engine, body: CompletionRequest | ChatRequest, chat: bool, n_prompt: int):
        self.engine, self.body, self.chat, self.n_prompt = engine, body, chat, n_prompt
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.echo = body.text() if not chat and body.echo else ""
        self.offsets = [len(self.echo)] * body.n  # completions' text_offset
        self.k = body.logprobs_k()

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.engine.name, "choices": choices}

    def _logprobs(self, i: int, tokens: list[TokenLogprob]) -> dict[str, Any] | None:
        if self.k is None:
            return None
        if self.chat:
            return chat_logprobs(self.engine, tokens)
        out = completion_logprobs(tokens, self.offsets[i])
        self.offsets[i] += sum(len(t.text) for t in tokens)
        return out

    def whole(self, texts: list[str], tokens: list[list[TokenLogprob]], finish: list[str],
              completion_tokens: int) -> dict[str, Any]:
        """The non-streamed answer."""
        choices = []
        for i, (text, toks, why) in enumerate(zip(texts, tokens, finish, strict=True)):
            lp = self._logprobs(i, toks)
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                                "finish_reason": why})
            else:
                choices.append({"index": i, "text": self.echo + text, "logprobs": lp, "finish_reason": why})
        return {**self._envelope("chat.completion" if self.chat else "text_completion", choices),
                "usage": usage(self.n_prompt, completion_tokens)}

    def chunk(self, i: int, text: str | None, tokens: list[TokenLogprob], finish: str | None = None,
              role: bool = False) -> str:
        """One SSE event for choice ``i``: new text (and its tokens' logprobs), or its end (``finish``)."""
        lp = self._logprobs(i, tokens) if tokens else None
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                ({} if text is None else {"content": text})
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
            obj = self._envelope("chat.completion.chunk", [choice])
        else:
            choice = {"index": i, "text": text or "", "logprobs": lp, "finish_reason": finish}
            obj = self._envelope("text_completion", [choice])
        if self.body.stream_options and self.body.stream_options.include_usage:
            obj["usage"] = None
        return f"data: {_dumps(obj)}\n\n"

    def usage_chunk(self, completion_tokens: int) -> str:
        """The last chunk of ``stream_options.include_usage``: no choices, the usage."""
        obj = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        obj["usage"] = usage(self.n_prompt, completion_tokens)
        return f"data: {_dumps(obj)}\n\n"


# --------------------------------------------------------------------------- routes

def api_router(engine: Engine, metrics: metrics_lib.Metrics) -> APIRouter:
    """``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` on ``engine``."""
    router = APIRouter()
    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 404, 408, 429, 503)}

    @router.get("/v1/models", summary="The served model")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "attnlab",
                                            "context_length": engine.context,
                                            "max_tokens_cap": engine.max_tokens_cap}]}

    @router.post("/v1/completions", summary="Continue a prompt",
                 responses={200: {"model": CompletionResponse,
                                  "description": "JSON, or with stream: server-sent events of the same shape"},
                            **errors})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _serve(engine, metrics, request, body, chat=False)

    @router.post("/v1/chat/completions", summary="Answer a conversation (rendered with the model's chat template)",
                 responses={200: {"model": ChatResponse,
                                  "description": "JSON, or with stream: server-sent events of chat chunks"},
                            **errors})
    async def chat(body: ChatRequest, request: Request) -> Response:
        return await _serve(engine, metrics, request, body, chat=True)

    return router


def _unavailable(engine: Engine) -> RequestError:
    if engine.closing:
        return RequestError(503, "the server is shutting down; retry on another replica or later", code="shutting_down")
    return RequestError(503, "the model's worker has stopped; this server cannot answer, restart it",
                        code="unavailable")


async def _serve(engine: Engine, metrics: metrics_lib.Metrics, request: Request,
                 body: CompletionRequest | ChatRequest, *, chat: bool) -> Response:
    """Validate against the engine, submit ``n`` jobs, answer as JSON or as a stream."""
    start = time.monotonic()
    if body.model is not None and body.model != engine.name:
        raise RequestError(404, f"model {body.model!r} is not served here; this server serves {engine.name!r} "
                           "(GET /v1/models)", "model", "model_not_found")
    if not engine.healthy:
        raise _unavailable(engine)
    if chat:  # rendering and tokenizing a long prompt on a pool thread keeps the event loop answering
        ids = await run_in_threadpool(engine.chat_ids, [m.as_template_message() for m in body.messages])
        param, stop_ids, stop_strings = "messages", engine.chat_stop_ids, engine.chat_stop_strings
    else:
        ids = await run_in_threadpool(engine.completion_ids, body.text())
        param, stop_ids, stop_strings = "prompt", engine.completion_stop_ids, []
    opts = [body.sampling(stop_ids, i, stop_strings) for i in range(body.n)]
    max_tokens = engine.prepare(ids, opts[0], param)
    answer = _Answer(engine, body, chat, len(ids))
    log.info("%s %s n=%d prompt_tokens=%d max_tokens=%d user=%s", answer.id, request.url.path, body.n, len(ids),
             max_tokens, ascii(body.user) if body.user is not None else "-")
    run = Run(engine, ids, max_tokens, opts, request, on_text=lambda: metrics.observe_ttft(time.monotonic() - start),
              lstrip=chat)
    if not body.stream:
        try:
            texts, tokens, finish = await run.collect()
        finally:
            run.close()
        metrics.observe_tokens(len(ids), run.completion_tokens)
        return AsciiJSON(answer.whole(texts, tokens, finish, run.completion_tokens))
    try:
        await run.started()
    except BaseException:
        run.close()
        raise

    async def events():
        try:
            for i in range(body.n):
                if chat:
                    yield answer.chunk(i, None, [], role=True)
                elif answer.echo:
                    yield answer.chunk(i, answer.echo, [])
            async for i, delta, job in run.events():
                if job is not None:
                    yield answer.chunk(i, None if chat else "", [], finish=job.finish_reason)
                elif delta.text or delta.tokens:
                    yield answer.chunk(i, delta.text, delta.tokens)
            if body.stream_options and body.stream_options.include_usage:
                yield answer.usage_chunk(run.completion_tokens)
            metrics.observe_tokens(len(ids), run.completion_tokens)
        except RequestError as e:
            yield f"data: {_dumps(e.body())}\n\n"
        finally:
            run.close()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(engine: Engine | None = None, *, explorer: Explorer | None = None,
               security: security_lib.SecurityConfig | None = None,
               metrics: metrics_lib.Metrics | None = None) -> FastAPI:
    """The ASGI app of ``attnlab serve`` (``engine``) and ``attnlab viz serve`` (``explorer``), or both.

    Args:
        engine: the model to serve over the OpenAI API (None: no ``/v1`` routes, no chat page).
        explorer: the attention explorer to serve at ``/explorer`` (None: none).
        security: API key, CORS origins, bind host and body limit (default: no key, CORS off, loopback).
        metrics: the Prometheus counters (default: new ones reading ``engine.stats``).
    """
    app = FastAPI(title="attnlab", summary="An OpenAI-compatible server for attnlab checkpoints",
                  docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    metrics = metrics or metrics_lib.Metrics(engine.stats if engine is not None else None)

    @app.get("/health", summary="Liveness and the scheduler's counters")
    async def health() -> Response:
        if engine is None:
            return AsciiJSON({"status": "ok"})
        body = {"status": "ok" if engine.healthy else "unavailable", "model": engine.name, "stats": engine.stats()}
        if not engine.healthy:
            body.update(_unavailable(engine).body())
        return AsciiJSON(body, status_code=200 if engine.healthy else 503)

    if engine is not None:
        app.include_router(api_router(engine, metrics))
    app.include_router(pages.page_router(chat=engine is not None, explorer=explorer))
    # Starlette runs the middleware added last first: metrics wrap the security checks, so refusals count too.
    security_lib.install(app, security or security_lib.SecurityConfig())
    metrics_lib.install(app, metrics)
    return app


__all__ = ["create_app", "error_response", "install_error_handlers"]
