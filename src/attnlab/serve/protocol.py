"""The OpenAI request/response shapes of the old stdlib server (``server.py``; goes away with it).

Requests are checked here, before any model call: every problem becomes a
:class:`RequestError` carrying the HTTP status and an OpenAI-style error body.
Chat messages become one plain-text prompt (our tokenizers have no chat template)::

    system: You are terse.
    user: Hello
    assistant:

i.e. one ``role: content`` line per message, then ``assistant:``; the model's
continuation is the reply.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from attnlab.generate.config import SamplingConfig, SamplingError
from attnlab.serve.job import RequestError, Sampling

CHAT_ROLES = ("system", "user", "assistant")


SAMPLING_FIELDS = {"max_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
                   "repetition_penalty": "repetition_penalty"}
"""Request field → :class:`~attnlab.generate.SamplingConfig` field; the config checks the values."""

UPPER_BOUNDS = {"temperature": 2.0, "repetition_penalty": 10.0}
"""This server's own upper bounds (OpenAI's range for temperature), on top of the config's checks."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(param: str, message: str) -> RequestError:
    return RequestError(400, f"'{param}': {message}", param=param, code="invalid_value")


def _config(body: dict[str, Any]) -> SamplingConfig:
    """The request's :class:`~attnlab.generate.SamplingConfig`; a bad value is a 400 naming its field."""
    values = {}
    for param, name in SAMPLING_FIELDS.items():
        v = body.get(param)
        if v is None:
            continue
        bound = UPPER_BOUNDS.get(param)
        if bound is not None and _is_number(v) and v > bound:
            raise _bad(param, f"must be at most {bound}, got {v!r}")
        values[name] = v
    try:
        return SamplingConfig(**values)
    except SamplingError as e:
        param = next(p for p, name in SAMPLING_FIELDS.items() if name == e.field)
        raise _bad(param, e.problem) from None


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """Read the shared generation options of a completion or chat request.

    Raises:
        RequestError: a field of the wrong type or out of range (400).
    """
    s = Sampling(config=_config(body))
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops) or len(stops) > 4:
            raise _bad("stop", "must be a non-empty string or a list of at most 4 non-empty strings")
        s.stop = list(stops)
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise _bad("stream", f"must be true or false, got {body['stream']!r}")
        s.stream = body["stream"]
    options = body.get("stream_options")
    if options is not None:
        if not s.stream:
            raise _bad("stream_options", "is only allowed when 'stream' is true")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise _bad("stream_options", "must be an object like {\"include_usage\": true}")
        s.include_usage = options.get("include_usage", False)
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("n", "only n=1 is supported; send several requests for several completions")
    return s


def completion_prompt(body: dict[str, Any]) -> str:
    """The ``prompt`` string of a ``/v1/completions`` request.

    Raises:
        RequestError: missing or not a string (400).
    """
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError(400, f"'prompt' must be a string, got {type(prompt).__name__}", "prompt", "invalid_type")
    return prompt


def chat_prompt(body: dict[str, Any]) -> str:
    """The plain-text prompt of a ``/v1/chat/completions`` request (see the module docstring).

    Raises:
        RequestError: ``messages`` missing, empty, or a message without a known role and string content (400).
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects", "messages",
                           "invalid_type")
    lines = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}] must be an object with 'role' in {list(CHAT_ROLES)} and a "
                               f"string 'content'", f"messages[{i}]", "invalid_value")
        lines.append(f"{m['role']}: {m['content']}\n")
    return "".join(lines) + "assistant:"


def new_id(prefix: str) -> str:
    """A fresh response id such as ``cmpl-1f3a...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(rid: str, obj: str, model: str, choice: dict[str, Any]) -> dict[str, Any]:
    """A response or chunk with one choice (index 0)."""
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [{"index": 0, **choice}]}


__all__ = ["CHAT_ROLES", "RequestError", "Sampling", "chat_prompt", "completion_prompt", "envelope", "new_id",
           "parse_sampling", "usage"]
