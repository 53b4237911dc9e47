"""Chat templates: render a conversation the Hugging Face way, tokenize it with an assistant mask.

A chat template is a Jinja program that turns ``messages`` (``[{"role", "content"}, ...]``)
into the text a chat model was trained on. Hugging Face keeps it in ``tokenizer_config.json``
(``chat_template``, beside ``bos_token`` / ``eos_token``); so do we, so a model exported from
attnlab chats in ``transformers`` and an imported one keeps its own format::

    tpl = ChatTemplate.default()                       # ChatML: <|im_start|>role\\ncontent<|im_end|>\\n
    tok = add_chat_tokens(tok, tpl)                    # <|im_start|>, <|im_end|> become special tokens
    text = tpl.render(messages, add_generation_prompt=True)
    ids, assistant = encode_conversation(tok, tpl, messages)   # assistant[i]: token i is the model's to learn

Rendering uses jinja2's immutable sandbox with the same settings, globals and filters as
``transformers``' ``apply_chat_template`` (``trim_blocks``, ``lstrip_blocks``, loop controls,
``raise_exception``, ``strftime_now``, ``tojson``), so for the same template and messages the
text, hence the token ids, are the same (tests/data/test_chat_template.py checks it). It is
written here rather than called from ``transformers`` because attnlab's tokenizer is not a
``PreTrainedTokenizer`` and chat must work without ``transformers`` installed.

The assistant mask comes from rendering the conversation turn by turn: assistant message ``i``
spans the characters between ``render(messages[:i], add_generation_prompt=True)`` and
``render(messages[:i + 1])`` (its content and end-of-turn marker). A token belongs to the
assistant when its first character does. A template that does not render conversations
incrementally (a prefix is not a prefix of the whole) is refused with the turn named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError
from attnlab.io.durable import atomic_write_text

ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOKENIZER_CONFIG = "tokenizer_config.json"

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, the default template of models trained here (``<|im_start|>`` / ``<|im_end|>`` are special tokens)."""

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""Plain text (``User: ...`` / ``Assistant: ...``, a line each) for a model that has no chat tokens:
a pretrained-only model is prompted with it; a reply ends at the first newline."""

Message = dict[str, str]


def _environment():
    """The sandboxed Jinja environment chat templates run in (settings as in ``transformers``)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special tokens it refers to.

    Attributes:
        source: the Jinja text (``chat_template`` in ``tokenizer_config.json``).
        bos_token: beginning-of-sequence token string the template may use (``bos_token``), or ``None``.
        eos_token: end-of-sequence token string (``eos_token``), or ``None``.
        end_of_turn: strings that end an assistant turn when generating (ChatML: ``<|im_end|>``; else ``eos_token``).
    """

    source: str
    bos_token: str | None = None
    eos_token: str | None = None
    end_of_turn: tuple[str, ...] = ()
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        import jinja2

        try:
            object.__setattr__(self, "_compiled", _environment().from_string(self.source))
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise AttnlabError(f"chat template does not parse (line {e.lineno}: {e.message}); fix the "
                               "chat_template in tokenizer_config.json") from None
        if not self.end_of_turn:
            stops = (IM_END,) if IM_END in self.source else ()
            stops += (self.eos_token,) if self.eos_token else ()
            object.__setattr__(self, "end_of_turn", stops)

    @classmethod
    def default(cls) -> ChatTemplate:
        """The ChatML template models trained here get (``<|im_end|>`` ends a turn and a reply)."""
        return cls(DEFAULT_TEMPLATE, bos_token=None, eos_token=IM_END)

    @classmethod
    def plain(cls) -> ChatTemplate:
        """:data:`PLAIN_TEMPLATE`: needs no special token (a reply ends at a newline)."""
        return cls(PLAIN_TEMPLATE, end_of_turn=("\n",))

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, folder: str | Path) -> ChatTemplate | None:
        """The template in ``folder/tokenizer_config.json``, or ``None`` when the folder has none.

        Raises:
            AttnlabError: the file is not valid JSON, or its template does not parse.
        """
        path = Path(folder) / TOKENIZER_CONFIG
        if not path.is_file():
            return None
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AttnlabError(f"'{path}' is not valid JSON ({e}); fix or remove it") from None
        tpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(tpl, list):  # several named templates: the "default" one
            tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
        if not tpl:
            return None
        if not isinstance(tpl, str):
            raise AttnlabError(f"'{path}': chat_template must be a string, got {type(tpl).__name__}")
        return cls(tpl, bos_token=_token_text(cfg.get("bos_token")), eos_token=_token_text(cfg.get("eos_token")))

    def save(self, folder: str | Path) -> Path:
        """Write (or update) ``folder/tokenizer_config.json`` with this template and its tokens."""
        path = Path(folder) / TOKENIZER_CONFIG
        cfg: dict[str, Any] = {}
        if path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                cfg = {}
        cfg.update({"chat_template": self.source, "bos_token": self.bos_token, "eos_token": self.eos_token})
        if "tokenizer_class" not in cfg:
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cfg, indent=1, ensure_ascii=False) + "\n")
        return path

    # ------------------------------------------------------------------ rendering

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The text of ``messages`` (and the assistant's opening when ``add_generation_prompt``).

        Raises:
            AttnlabError: the template raised or failed to render these messages.
        """
        import jinja2

        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except jinja2.exceptions.TemplateError as e:
            raise AttnlabError(f"chat template failed to render: {e}; check the messages' roles and order, "
                               "or fix the template") from None
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise AttnlabError(f"chat template failed to render ({type(e).__name__}: {e}); "
                               "check the messages or fix the template") from None

    def cut_reply(self, text: str) -> str:
        """``text`` up to its first end-of-turn string (a generated reply without its end marker)."""
        cut = min((i for i in (text.find(t) for t in self.end_of_turn) if i >= 0), default=len(text))
        return text[:cut]

    def stop_ids(self, tokenizer: Tokenizer) -> list[int]:
        """Token ids that end an assistant reply (end-of-turn markers found in the vocabulary)."""
        ids = [tokenizer.token_id(t) for t in self.end_of_turn]
        return sorted({int(i) for i in ids if i is not None})


def _token_text(value: Any) -> str | None:
    """A special token as written in ``tokenizer_config.json``: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def template_for(folder: str | Path | None, tokenizer: Tokenizer) -> ChatTemplate:
    """The template a model folder chats with.

    ``folder/tokenizer_config.json``'s ``chat_template`` when there is one (a model fine-tuned
    here, or imported from Hugging Face); else ChatML when the tokenizer has its tokens; else
    :meth:`ChatTemplate.plain` (a pretrained-only model). Callers say which one they use.
    """
    tpl = ChatTemplate.load(folder) if folder is not None and Path(folder).is_dir() else None
    if tpl is not None:
        return tpl
    if tokenizer.token_id(IM_START) is not None and tokenizer.token_id(IM_END) is not None:
        return ChatTemplate.default()
    return ChatTemplate.plain()


def template_name(template: ChatTemplate) -> str:
    """A short description for log lines: ``ChatML (default)``, ``plain text`` or ``the model's own``."""
    if template.source == DEFAULT_TEMPLATE:
        return "ChatML (default)"
    if template.source == PLAIN_TEMPLATE:
        return "plain text (User:/Assistant:, no chat tokens)"
    return "the model's own (tokenizer_config.json)"


def add_chat_tokens(tokenizer: Tokenizer, template: ChatTemplate) -> Tokenizer:
    """``tokenizer`` with the template's markers as special tokens (a copy when any is new).

    For the default template, ``<|im_start|>`` and ``<|im_end|>`` (and ``<|endoftext|>``) get ids
    after the existing vocabulary, so a pretrained model's embeddings must grow by the new count.
    Imported templates (Llama, ...) use tokens their tokenizer already has; nothing changes then.
    """
    wanted = [t for t in (IM_START, IM_END) if t in template.source]
    wanted += [t for t in (template.bos_token, template.eos_token) if t]
    missing = [t for t in dict.fromkeys(wanted) if tokenizer.token_id(t) is None]
    return tokenizer.with_special_tokens(missing) if missing else tokenizer


def check_conversation(messages: Any, where: str) -> list[Message]:
    """``messages`` checked: a list of ``{"role", "content"}`` with known roles and string contents.

    Args:
        messages: the value to check.
        where: ``"FILE line N"`` for the error message.

    Raises:
        AttnlabError: not a list, an unknown role, a non-string content, or an empty conversation.
    """
    if not isinstance(messages, list) or not messages:
        raise AttnlabError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for j, m in enumerate(messages, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise AttnlabError(f"{where}: message {j} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise AttnlabError(f"{where}: message {j} has unknown role '{m['role']}'; roles are {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise AttnlabError(f"{where}: message {j} content must be a string, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def assistant_spans(template: ChatTemplate, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text of ``messages`` and the character span ``[start, end)`` of every assistant turn.

    Raises:
        AttnlabError: the template does not render the conversation incrementally.
    """
    text = template.render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True) if i else \
            template.render([], add_generation_prompt=True)
        upto = template.render(messages[:i + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise AttnlabError(f"the chat template does not render turn by turn (message {i + 1}: the text before "
                               "an assistant reply is not a prefix of the whole); use a template that appends turns")
        spans.append((len(before), len(upto)))
    return text, spans


def encode_conversation(tokenizer: Tokenizer, template: ChatTemplate, messages: list[Message],
                        where: str = "") -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and, per token, whether it is the assistant's.

    Assistant tokens are each assistant message's content and its end-of-turn marker: the
    tokens a supervised fine-tuning loss trains on.

    Args:
        tokenizer: the model's tokenizer (chat tokens included).
        template: the chat template.
        messages: the conversation.
        where: ``"FILE line N"``: prefixed to an error, so a bad record is named.

    Raises:
        AttnlabError: the template fails, or does not render turn by turn.
    """
    try:
        text, spans = assistant_spans(template, messages)
    except AttnlabError as e:
        raise AttnlabError(f"{where}: {e}" if where else str(e)) from None
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    mask = []
    for start, _ in enc.offsets:
        mask.append(any(a <= start < b for a, b in spans))
    return list(enc.ids), mask


def encode_prompt(tokenizer: Tokenizer, template: ChatTemplate, messages: list[Message]) -> list[int]:
    """Token ids of ``messages`` followed by the assistant's opening: what a chat model continues."""
    return tokenizer.encode(template.render(messages, add_generation_prompt=True))

