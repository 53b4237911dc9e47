"""Multi-turn chat with a decoder-only LM: the conversation rendered through a chat template, one reply at a time.

A :class:`ChatSession` keeps the turns so far. Each :meth:`~ChatSession.reply` renders the
system prompt, the history and the new user turn with the template's generation prompt
(:meth:`~attnlab.data.chat.ChatTemplate.render`), encodes that text and decodes on the usual
path (:func:`~attnlab.generate.stream`, pieces made safe to show by
:class:`~attnlab.generate.text.TextStream`) until a token that ends a turn (the template's
:meth:`~attnlab.data.chat.ChatTemplate.stop_ids`, or ``<|endoftext|>``), an end-of-turn string
(the plain ``User:/Assistant:`` template ends a reply at a newline, as
:meth:`~attnlab.data.chat.ChatTemplate.cut_reply` does), or ``max_new_tokens``::

    chat = ChatSession(model, tok, template_for(folder, tok), SamplingConfig(temperature=0.7, seed=0),
                       system="You are terse.")
    chat.reply("Hi!", on_text=lambda piece: print(piece, end="", flush=True))
    chat.reply("And again?")                 # sees the first turn
    chat.reset()                             # forget the turns, keep the system prompt

The history is kept as text and rendered again each turn (no ids or KV cache kept between
turns). When the prompt would not leave ``max_new_tokens`` of room in the model's context, the
oldest user/assistant pairs are dropped (never the system prompt) and a notice says so; a
latest turn that does not fit alone is a one-line :class:`~attnlab.errors.AttnlabError`.
A reply's leading whitespace is dropped (the template puts its own separator before it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from attnlab.data.chat import ChatTemplate, Message
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ContextOverflowError
from attnlab.generate.config import SamplingConfig
from attnlab.generate.sampling import stream
from attnlab.generate.session import context_limit
from attnlab.generate.text import TextStream
from attnlab.models.protocols import is_encoder_decoder

DEFAULT_REPLY_TOKENS = 200
"""The most tokens of a reply when ``sampling.max_new_tokens`` is None (at most half the model's context)."""

Notice = Callable[[str], None]


def _device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are (an int8 model may have buffers only in some layers)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


class ChatSession:
    """A conversation with a decoder-only LM through a chat template.

    Args:
        model: a decoder-only LM (``max_context``; :class:`~attnlab.models.protocols.CausalLM`).
        tokenizer: its tokenizer (the template's special tokens in its vocabulary, if any).
        template: how turns are written (:func:`~attnlab.data.chat.template_for`).
        sampling: decoding options; ``max_new_tokens`` is the most tokens of one reply (None:
            :data:`DEFAULT_REPLY_TOKENS`, at most half the context). With a ``seed``, reply k
            (0-based, counted from the start or the last :meth:`reset`) samples with ``seed + k``.
        system: the system prompt, kept first in every prompt; None or empty: none.
        on_notice: called with a one-line notice when the history is trimmed; every notice is
            also kept in :attr:`notices`.

    Attributes:
        history: the user and assistant messages so far (without the system prompt).
        last_prompt_ids: the token ids the last reply continued (rendered conversation + generation prompt).
        notices: the notices so far, oldest first.
        context: the model's context in tokens.

    Raises:
        AttnlabError: an encoder–decoder or a model without a context limit, beam search in
            ``sampling``, or a ``max_new_tokens`` that leaves no room for a prompt.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, template: ChatTemplate,
                 sampling: SamplingConfig | None = None, system: str | None = None,
                 on_notice: Notice | None = None) -> None:
        limit = context_limit(model)
        if is_encoder_decoder(model) or limit is None:
            raise AttnlabError(f"chat needs a decoder-only language model, got {type(model).__name__}; "
                               "use a run of attnlab train (model.arch=decoder) or an lm/sft fine-tuned model")
        sampling = sampling or SamplingConfig()
        if sampling.num_beams != 1:
            raise AttnlabError(f"chat streams sampled or greedy replies and cannot run beam search "
                               f"(num_beams={sampling.num_beams}); use num_beams=1")
        self.context = int(limit)
        n = sampling.max_new_tokens
        if n is None:
            n = min(DEFAULT_REPLY_TOKENS, max(self.context // 2, 1))
        elif n >= self.context:
            raise AttnlabError(f"max_new_tokens {n} leaves no room for the conversation in the model's context of "
                               f"{self.context} tokens; lower it below {self.context}")
        self.sampling = dataclasses.replace(sampling, max_new_tokens=n)
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = system or None
        self.on_notice = on_notice
        stops = set(template.stop_ids(tokenizer))
        if tokenizer.eos_id is not None:
            stops.add(int(tokenizer.eos_id))
        self.stop_ids = frozenset(stops)
        self.history: list[Message] = []
        self.notices: list[str] = []
        self.last_prompt_ids: list[int] = []
        self._replies = 0

    @property
    def max_new_tokens(self) -> int:
        """The most tokens of one reply."""
        return int(self.sampling.max_new_tokens)  # type: ignore[arg-type]

    def messages(self, user_text: str | None = None) -> list[Message]:
        """The system prompt (if any), the history and, when given, a new user turn."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        tail = [{"role": "user", "content": user_text}] if user_text is not None else []
        return head + self.history + tail

    def reset(self) -> None:
        """Forget the turns (the system prompt stays); seeds restart as in a new session."""
        self.history = []
        self.last_prompt_ids = []
        self._replies = 0

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        if self.on_notice is not None:
            self.on_notice(text)

    def _prompt(self, user_text: str) -> list[int]:
        """Ids of the conversation + ``user_text`` + the generation prompt, dropping the oldest pairs to fit.

        Raises:
            AttnlabError: the system prompt and the latest turn alone leave no room for the reply.
        """
        budget = self.context - self.max_new_tokens
        pairs = len(self.history) // 2
        for dropped in range(pairs + 1):
            kept = self.history[2 * dropped:]
            msgs = ([{"role": "system", "content": self.system}] if self.system else []) + kept
            ids = self.tokenizer.encode(self.template.render(msgs + [{"role": "user", "content": user_text}],
                                                             add_generation_prompt=True))
            if len(ids) <= budget:
                if dropped:
                    self.history = kept
                    self._notice(f"history trimmed: dropped {dropped} oldest turn{'s' if dropped > 1 else ''} "
                                 f"to fit {budget} tokens (context {self.context} - {self.max_new_tokens} "
                                 "for the reply)")
                return ids
        what = "the system prompt and your message are" if self.system else "your message is"
        raise ContextOverflowError(f"{what} {len(ids)} tokens with the template, but the model's context of "
                                   f"{self.context} leaves {budget} after {self.max_new_tokens} for the reply; "
                                   "shorten it or lower max_new_tokens")

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The assistant's answer to ``user_text``, after the turns so far; both are added to the history.

        Args:
            user_text: the user's message.
            on_text: called with each piece of the reply as it becomes safe to show; the pieces
                join to the returned text.

        Returns:
            The reply, without its end-of-turn marker and leading whitespace.

        Raises:
            AttnlabError: the latest turn does not fit the context (the history is left as it was).
        """
        ids = self._prompt(user_text)
        self.last_prompt_ids = ids
        cfg = self.sampling
        if cfg.seed is not None:
            cfg = dataclasses.replace(cfg, seed=(cfg.seed + self._replies) % (2**63))
        x = torch.tensor([ids], device=_device(self.model))  # (1, T)
        text = TextStream(self.tokenizer, stops=self.template.end_of_turn, prefix_ids=ids)
        pieces: list[str] = []

        def emit(piece: str) -> None:
            if not pieces:  # nothing shown yet: drop leading whitespace
                piece = piece.lstrip()
            if piece:
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)

        for tok in stream(self.model, x, sampling=cfg):  # (1,) per step
            t = int(tok[0])
            if t in self.stop_ids:
                break
            emit(text.push(t))
            if text.finished:
                break
        emit(text.flush())
        answer = "".join(pieces)
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
        self._replies += 1
        return answer


__all__ = ["DEFAULT_REPLY_TOKENS", "ChatSession"]
