"""The server's web pages (STUB: the interface only; issue 17 fills it in).

``GET /``: the chat page (``static/chat.html``) when the server has a model to chat with,
else a redirect to the explorer; ``/explorer``: the attention explorer and its JSON API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from attnlab.viz.explorer import Explorer


def page_router(*, chat: bool, explorer: Explorer | None = None) -> APIRouter:
    """Routes of the chat page (when ``chat``) and of the explorer (when given). STUB: no routes yet."""
    return APIRouter()


__all__ = ["page_router"]
