"""The OpenAI request and response shapes the server speaks, as pydantic models.

FastAPI validates every request body against :class:`CompletionRequest` or
:class:`ChatRequest` before a handler runs, and publishes the models at ``/docs``. The
models are strict (``"8"`` is not an integer, ``true`` is not a number), refuse NaN and
infinities, lone surrogates in strings and unknown fields (``extra="forbid"``): a field this
server does not implement is a 400 naming it, never silently ignored. What pydantic cannot
say in a type (``best_of`` must equal ``n``, penalties other than 0 are unsupported,
``max_tokens`` and ``max_completion_tokens`` must agree) is checked in validators here, so
that every request that reaches a handler is one the engine can serve as asked.

The response models only document the answers (``responses=`` in the routes); handlers
build plain dicts, so that streaming a token does not validate a model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from attnlab.generate.config import SEED_MAX, SamplingConfig
from attnlab.serve.job import RequestError, Sampling

MAX_N = 8
"""The most choices one request may ask for (``n``)."""


def _no_surrogates(value: str) -> str:
    """Refuse a string holding a lone UTF-16 surrogate (JSON allows ``"\\ud800"``; UTF-8 cannot encode it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a lone surrogate (an unpaired \\ud800-\\udfff escape); send valid Unicode text") \
            from None
    return value


def _bad(param: str, problem: str, code: str = "invalid_value") -> RequestError:
    """A 400 naming ``param``; raised from a validator, it passes through pydantic to the app's handler."""
    return RequestError(400, f"'{param}' {problem}", param, code)


Text = Annotated[str, AfterValidator(_no_surrogates)]
"""A string that encodes to UTF-8 (no lone surrogates)."""

Stop = Annotated[Text, Field(min_length=1)]


class _Strict(BaseModel):
    """Strict types, no NaN/inf, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` ends a stream with a chunk holding the token counts."""

    include_usage: bool = False


class TextPart(_Strict):
    """A content part; only ``{"type": "text", "text": ...}`` is supported (a model of text only)."""

    type: Literal["text"]
    text: Text

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") != "text":
            raise ValueError(f"content parts of type {data.get('type')!r} are not supported; this model reads text "
                             "only: send {\"type\": \"text\", \"text\": ...} parts")
        return data


class ChatMessage(_Strict):
    """One message; ``developer`` is treated as ``system``; ``content`` is a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_template_message(self) -> dict[str, str]:
        """``{"role", "content"}`` as a chat template reads it (``developer`` → ``system``)."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class _Common(_Strict):
    """The fields completions and chat share."""

    model: Text | None = Field(None, description="must be the served model's id (GET /v1/models); omitted: that one")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="with n > 1, choice i uses seed + i")
    stop: Stop | Annotated[list[Stop], Field(min_length=1, max_length=4)] | None = Field(
        None, description="up to 4 strings that end the text (not included)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_N, description=f"choices to generate (1..{MAX_N})")
    user: Text | None = Field(None, description="an opaque end-user id; logged with the request")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0,
                                             description="extension (as in vLLM): CTRL penalty, 1 is off")
    frequency_penalty: float | None = Field(None, description="only 0 is supported")
    presence_penalty: float | None = Field(None, description="only 0 is supported")

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """``"n": null`` (any known field set to null) means the default, as in OpenAI's API."""
        if isinstance(data, dict) and any(v is None for v in data.values()):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data

    @model_validator(mode="after")
    def _check_common(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise _bad("stream_options", "is only allowed when 'stream' is true")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0):
                raise _bad(name, "is not supported (only 0); use 'repetition_penalty' (an extension, > 1 discourages "
                           "repeats)", "unsupported")
        return self

    def max_new_tokens(self) -> int | None:
        """Tokens to generate at most as the request asks (None: up to the cap / context)."""
        raise NotImplementedError

    def logprobs_k(self) -> int | None:
        """None: no log-probabilities; ``k``: the chosen token's and ``k`` alternatives."""
        raise NotImplementedError

    def sampling(self, stop_ids: list[int], choice: int = 0, stop_strings: list[str] = ()) -> Sampling:
        """The engine's options for choice ``choice`` (seed + choice when seeded); ``stop_ids`` and
        ``stop_strings`` (the template's end of turn) end the text besides the request's ``stop``.

        Raises:
            SamplingError: a value :class:`SamplingConfig` refuses (caught as a 400 by the app).
        """
        values: dict[str, Any] = {"max_new_tokens": self.max_new_tokens()}
        for name in ("temperature", "top_p", "repetition_penalty"):
            if getattr(self, name) is not None:
                values[name] = getattr(self, name)
        if self.seed is not None:
            values["seed"] = (self.seed + choice) % (SEED_MAX + 1)
        stops = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)
        stops += [s for s in stop_strings if s not in stops]
        return Sampling(config=SamplingConfig(**values), stop=stops, stop_ids=list(stop_ids), stream=self.stream,
                        include_usage=bool(self.stream_options and self.stream_options.include_usage),
                        logprobs=self.logprobs_k())


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)] = Field(
        description="a string (or a list of exactly one string)")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most (default: to the cap)")
    logprobs: int | None = Field(None, ge=0, le=5, description="the chosen token's log-probability and this many "
                                                              "alternatives")
    echo: bool = Field(False, description="prepend the prompt to the text")
    best_of: int | None = Field(None, ge=1, description="only unset or equal to n")

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise _bad("best_of", f"({self.best_of}) other than n ({self.n}) is not supported; drop it, or ask "
                       "for n choices and pick one yourself", "unsupported")
        if self.echo and self.logprobs is not None:
            raise _bad("echo", "with 'logprobs' is not supported (prompt log-probabilities are not computed); drop "
                       "one of them", "unsupported")
        return self

    def text(self) -> str:
        """The prompt string."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        return self.logprobs


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI; same as max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="tokens to generate at most")
    logprobs: bool = Field(False, description="return each generated token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="alternatives per token (needs logprobs)")

    @model_validator(mode="after")
    def _check_chat(self) -> ChatRequest:
        a, b = self.max_tokens, self.max_completion_tokens
        if a is not None and b is not None and a != b:
            raise _bad("max_completion_tokens", f"({b}) and 'max_tokens' ({a}) disagree; send one of them")
        if self.top_logprobs is not None and not self.logprobs:
            raise _bad("top_logprobs", "needs 'logprobs': true")
        return self

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# --------------------------------------------------------------------------- responses (documentation)

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    """A ``text_completion``; a stream sends chunks of the same shape (``finish_reason`` null until the last)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatChunk(BaseModel):
    """One server-sent event of a streamed chat answer (``data: {...}``; the stream ends with ``data: [DONE]``)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


__all__ = ["MAX_N", "ChatChunk", "ChatMessage", "ChatRequest", "ChatResponse", "CompletionRequest",
           "CompletionResponse", "ErrorResponse", "StreamOptions", "TextPart"]


# --------------------------------------------------------------------------- validation errors

UNION_HINTS = {
    "prompt": "must be a string (or a list of exactly one string)",
    "stop": "must be a non-empty string or a list of 1 to 4 non-empty strings",
    "content": "must be a string or a list of {\"type\": \"text\", \"text\": ...} parts",
}
"""Messages for fields whose type is a union, where pydantic reports one error per alternative."""


def _path(loc: tuple[Any, ...]) -> list[str | int]:
    """``loc`` without ``body`` and without pydantic's union tags (``function-after[...]``, ``list[...]``)."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    return [p for p in parts if isinstance(p, int) or "[" not in p]


def _param(path: list[str | int]) -> str | None:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or None


def _got(value: Any) -> str:
    """``, got X`` for a scalar input (never a container: it may be nested 100,000 deep)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = ascii(value) if not isinstance(value, int) or abs(value) < 10**30 else f"{str(value)[:12]}..."
        return f", got {text[:60]}"
    return f", got {type(value).__name__}"


def validation_error(errors: list[dict[str, Any]]) -> RequestError:
    """The 400 for pydantic/FastAPI validation ``errors``: the most specific error, its field as ``param``.

    Among several errors (one per alternative of a union) the deepest that is not a plain type
    error wins: ``[{"type": "image_url"}]`` as content names the part, not "not a string".
    """
    if not errors:
        return RequestError(400, "the request is not valid; see /docs", code="invalid_request")
    e = min(errors, key=lambda x: (x.get("type", "").endswith("_type"), -len(_path(x.get("loc", ())))))
    kind, loc = e.get("type", ""), tuple(e.get("loc", ()))
    if kind == "json_invalid":
        ctx = e.get("ctx") or {}
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        return RequestError(400, f"the request body is not valid JSON ({ctx.get('error', 'decode error')}{where}); "
                            "send a JSON object", code="invalid_json")
    path = _path(loc)
    param = _param(path)
    if param is None and kind == "string_unicode":  # a key (field name) that is not valid Unicode
        return RequestError(400, "a field name in the request body holds a lone surrogate (an unpaired "
                            "\\ud800-\\udfff escape); send valid Unicode", code="invalid_value")
    if param is None:
        what = "missing" if kind == "missing" else f"a {type(e.get('input')).__name__}"
        return RequestError(400, f"the request body must be a JSON object (it is {what}); see /docs for the fields",
                            code="invalid_json")
    if kind == "extra_forbidden":
        return RequestError(400, f"unknown field '{param}': this server does not implement it; remove it (see /docs "
                            "for the fields it takes)", param, "unknown_field")
    if kind == "missing":
        return RequestError(400, f"'{param}' is required", param, "missing_field")
    msg = str(e.get("msg", "is not valid"))
    msg = msg.removeprefix("Value error, ")
    last = next((p for p in reversed(path) if isinstance(p, str)), None)
    if kind.endswith("_type") and last in UNION_HINTS and isinstance(path[-1], str):
        msg = UNION_HINTS[last]
    elif kind == "value_error":
        msg = msg[0].lower() + msg[1:] if msg else msg
    else:
        msg = (msg[0].lower() + msg[1:] if msg else msg) + _got(e.get("input"))
    return RequestError(400, f"'{param}': {msg}".replace("\n", " "), param, "invalid_value")


__all__ += ["validation_error"]
