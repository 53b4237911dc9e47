"""The server's web pages: the chat page at ``/`` and the attention explorer at ``/explorer``.

Routes of :func:`page_router`:

- ``GET /``: the chat page (``serve/static/chat.html``) when the server has a model to chat
  with; else a redirect to ``/explorer`` when there is an explorer; else a 404 JSON error.
- ``GET /explorer``: the explorer page (``viz/static/explorer.html``).
- ``GET /explorer/api/info``: the explorer's model name and config summary.
- ``POST /explorer/api/attention`` with ``{"text": "..."}``: tokens, attention weights and
  next-token distributions (:meth:`attnlab.viz.explorer.Explorer.analyze`).

Both pages are single self-contained HTML files (no external links), served with
``Cache-Control: no-cache``. A bad explorer request gets a 400 in the OpenAI error shape
``{"error": {"message", "type", "param", "code"}}``. The body is parsed here with pydantic
rather than as a FastAPI body parameter so that each mistake gets its own code
(``invalid_json``, ``invalid_text``, ``unknown_field``, ...) whether or not the app around
the router maps validation errors. The model runs off the event loop, one text at a time:
waiting requests queue on an ``asyncio.Lock`` (no thread held), the running one in the
thread pool under the explorer's own lock.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from attnlab.errors import AttnlabError
from attnlab.serve.job import RequestError
from attnlab.viz.explorer import PAGE_FILE as EXPLORER_PAGE
from attnlab.viz.explorer import STATIC_DIR as VIZ_STATIC_DIR
from attnlab.viz.explorer import ExplorerInputError

if TYPE_CHECKING:
    from attnlab.viz.explorer import Explorer

STATIC_DIR = Path(__file__).parent / "static"
CHAT_PAGE = "chat.html"
NO_CACHE = {"Cache-Control": "no-cache"}
PAGE_METHODS = ["GET", "HEAD"]


class AttentionRequest(BaseModel):
    """The body of ``POST /explorer/api/attention``."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr


def read_static(folder: Path, name: str) -> bytes:
    """A page shipped with the package (``serve/static/chat.html``, ``viz/static/explorer.html``).

    Raises:
        AttnlabError: the page is missing from the installed package.
    """
    path = folder / name
    if not path.is_file():
        raise AttnlabError(f"the page {path} is missing; reinstall attnlab (it ships "
                           f"{folder.parent.name}/static/*.html)")
    return path.read_bytes()


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _bad_body(e: ValidationError) -> RequestError:
    """The first problem of an explorer request body as a 400 that names it and the fix."""
    first = e.errors()[0]
    kind, loc = first["type"], first.get("loc", ())
    usage = 'send {"text": "..."}'
    if kind == "json_invalid":
        why = str(first["msg"]).removeprefix("Invalid JSON: ")
        return RequestError(400, f"the body is not valid JSON ({why}); {usage}", code="invalid_json")
    if kind == "extra_forbidden":
        field = str(loc[0]) if loc else "?"
        return RequestError(400, f"unknown field '{field}': the explorer takes only 'text'; {usage}", param=field,
                            code="unknown_field")
    if kind == "missing":
        return RequestError(400, f"'text' is missing; {usage}", param="text", code="invalid_text")
    if loc and loc[0] == "text":
        got = type(first.get("input")).__name__
        return RequestError(400, f"'text' must be a JSON string, got {got}; {usage}", param="text",
                            code="invalid_text")
    return RequestError(400, f"the body must be a JSON object; {usage}", code="invalid_json")


def _analyze_json(explorer: Explorer, text: str) -> bytes:
    """Run the explorer and serialize its answer (on a worker thread: both take time for long texts)."""
    return json.dumps(explorer.analyze(text), separators=(",", ":")).encode()


def _explorer_routes(router: APIRouter, explorer: Explorer) -> None:
    page, info = read_static(VIZ_STATIC_DIR, EXPLORER_PAGE), explorer.info()
    gate = asyncio.Lock()  # one analysis at a time; the others wait here, not in a thread

    @router.api_route("/explorer", methods=PAGE_METHODS, include_in_schema=False)
    async def explorer_page() -> Response:
        return HTMLResponse(page, headers=NO_CACHE)

    @router.get("/explorer/api/info", tags=["explorer"], summary="The explorer's model and its config")
    async def explorer_info() -> dict[str, Any]:
        return info

    @router.post(
        "/explorer/api/attention", tags=["explorer"], summary="Tokens, attention weights and next-token candidates",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": AttentionRequest.model_json_schema()}}}},
    )
    async def explorer_attention(request: Request) -> Response:
        try:
            text = AttentionRequest.model_validate_json(await request.body()).text
        except ValidationError as e:
            return _error(_bad_body(e))
        async with gate:
            if await request.is_disconnected():  # gave up while waiting: skip the model run
                return Response(status_code=499)
            try:
                payload = await run_in_threadpool(_analyze_json, explorer, text)
            except ExplorerInputError as e:
                return _error(RequestError(400, e.message, param=e.param, code=e.code))
        return Response(payload, media_type="application/json")


def page_router(*, chat: bool, explorer: Explorer | None = None) -> APIRouter:
    """Routes of the chat page (when ``chat``) and of the explorer (when given).

    Args:
        chat: the app serves a model at ``/v1/chat/completions``: ``GET /`` is the chat page.
        explorer: the attention explorer to serve at ``/explorer`` (None: no explorer routes).

    Raises:
        AttnlabError: a page is missing from the installed package.
    """
    router = APIRouter()
    if chat:
        chat_page = read_static(STATIC_DIR, CHAT_PAGE)

        @router.api_route("/", methods=PAGE_METHODS, include_in_schema=False)
        async def index() -> Response:
            return HTMLResponse(chat_page, headers=NO_CACHE)
    elif explorer is not None:
        @router.api_route("/", methods=PAGE_METHODS, include_in_schema=False)
        async def index() -> Response:
            return RedirectResponse("/explorer", status_code=307)
    else:
        @router.api_route("/", methods=PAGE_METHODS, include_in_schema=False)
        async def index() -> Response:
            return _error(RequestError(404, "no page at /: this server has no model to chat with and no explorer; "
                                       "see /docs for its API", code="not_found"))
    if explorer is not None:
        _explorer_routes(router, explorer)
    return router


__all__ = ["AttentionRequest", "page_router", "read_static"]
