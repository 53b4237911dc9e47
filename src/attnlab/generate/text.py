"""Generated token ids → text pieces that are safe to show as they arrive.

Decoding token by token can end in half a multi-byte character, and the text may be on
its way to a stop string. :class:`TextStream` only releases text that can no longer
change or turn out to be part of a stop string, and ends at EOS, at any of ``stop_ids``
(a chat template's end-of-turn token, every EOS id) or at the first stop string (none of
which is shown)::

    ts = TextStream(tokenizer, stops=["\\n\\n"], eos_id=tokenizer.eos_id)
    for tok in stream(model, ids, 100):
        print(ts.push(int(tok[0])), end="")
        if ts.finished:
            break
    print(ts.flush())
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` might begin a stop string or be an unfinished character."""
    hold = 1 if text.endswith("\ufffd") else 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class TextStream:
    """Incremental detokenizer with stop strings.

    Args:
        tokenizer: has ``decode(ids) -> str``.
        stops: texts that end the generation (not included in the output).
        eos_id: the token that ends the generation (not included).
        prefix_ids: tokens decoded together with the generated ones but never released (a
            prompt being echoed), so the first generated characters join it correctly.
        stop_ids: more tokens that end the generation like ``eos_id`` (not included, not counted).

    Attributes:
        finished: EOS, a stop id or a stop string was reached.
        stopped_by_text: it was a stop string.
        n_tokens: generated tokens pushed (the EOS / stop id that ended it not counted).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = (), eos_id: int | None = None,
                 prefix_ids: Sequence[int] = (), stop_ids: Iterable[int] = ()) -> None:
        if any(not isinstance(s, str) for s in stops):
            raise ValueError(f"stop strings must be text, got {list(stops)!r}")
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.tok, self.stops, self.eos_id = tokenizer, list(stops), eos_id
        self.stop_ids = frozenset(stop_ids) | ({eos_id} if eos_id is not None else frozenset())
        self.ids = list(prefix_ids)
        self.start = self.sent = len(tokenizer.decode(self.ids)) if self.ids else 0
        self.finished = self.stopped_by_text = False
        self.n_tokens = 0

    @property
    def finish_reason(self) -> str:
        """``"stop"`` (EOS, a stop id or a stop string) or ``"length"`` (it ran out of tokens)."""
        return "stop" if self.finished else "length"

    def push(self, token: int) -> str:
        """Add one generated token; return the text that became safe to show (may be empty)."""
        if self.finished:
            return ""
        if token in self.stop_ids:
            self.finished = True
            return ""
        self.ids.append(token)
        self.n_tokens += 1
        text = self.tok.decode(self.ids)
        hits = [i for i in (text.find(s, self.start) for s in self.stops) if i >= 0]
        if hits:
            self.finished = self.stopped_by_text = True
            return self._release(text, min(hits))
        return self._release(text, len(text) - held_back(text[self.start:], self.stops))

    def flush(self) -> str:
        """The text still held back (nothing after a stop string)."""
        if self.stopped_by_text:
            return ""
        text = self.tok.decode(self.ids)
        return self._release(text, len(text))

    def _release(self, text: str, end: int) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent:end], end
        return piece
