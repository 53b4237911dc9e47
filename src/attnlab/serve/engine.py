"""One loaded decoder-only model behind a lock: prompt text in, text pieces out.

:meth:`Engine.run` yields the continuation as text deltas, trimmed at the first stop
string; text that could still grow into a stop string (or an unfinished multi-byte
character) is held back until it cannot, so streamed pieces concatenate to exactly the
non-streamed text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.data import Tokenizer
from attnlab.errors import AttnlabError
from attnlab.generate import is_encoder_decoder, stream
from attnlab.generate.text import TextStream
from attnlab.serve.protocol import RequestError, Sampling


@dataclass
class Result:
    """What a finished run produced (filled in while :meth:`Engine.run` iterates).

    Attributes:
        prompt_tokens: tokens in the prompt.
        completion_tokens: tokens generated (EOS not counted).
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"``.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"


class Engine:
    """A decoder-only LM and its tokenizer, used by one request at a time.

    Args:
        model: a decoder-only LM in eval mode (``max_context`` attribute).
        tokenizer: its tokenizer.
        device: where the model lives.
        name: the model id reported by the API.
        max_tokens_cap: the most tokens one request may ask for.

    Raises:
        AttnlabError: the model is not a decoder-only LM.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, device: torch.device, name: str,
                 max_tokens_cap: int = 512):
        if is_encoder_decoder(model) or not hasattr(model, "max_context"):
            raise AttnlabError(f"attnlab serve needs a decoder-only LM, got {type(model).__name__}; "
                               "serve a checkpoint trained with model.arch=decoder")
        if max_tokens_cap < 1:
            raise AttnlabError(f"--max-tokens-cap must be positive, got {max_tokens_cap}")
        self.model, self.tokenizer, self.device, self.name = model, tokenizer, device, name
        self.max_tokens_cap = max_tokens_cap
        self.context = int(model.max_context)
        self.lock = threading.Lock()

    def prepare(self, prompt: str, opts: Sampling) -> tuple[list[int], int]:
        """Prompt ids and the number of tokens to generate, checked against the cap and the context.

        Raises:
            RequestError: empty prompt, ``max_tokens`` over the cap, or prompt + ``max_tokens`` over the context (400).
        """
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise RequestError(400, "the prompt encodes to no tokens; send a non-empty prompt", "prompt",
                               "empty_prompt")
        if opts.max_tokens is not None and opts.max_tokens > self.max_tokens_cap:
            raise RequestError(400, f"'max_tokens' is {opts.max_tokens} but this server allows at most "
                               f"{self.max_tokens_cap}; lower it", "max_tokens", "max_tokens_exceeded")
        room = self.context - len(ids)
        want = opts.max_tokens if opts.max_tokens is not None else min(self.max_tokens_cap, room)
        if want < 1 or want > room:
            raise RequestError(400, f"the prompt is {len(ids)} tokens and max_tokens is {want}, but the model's "
                               f"context is {self.context} tokens; shorten the prompt or lower max_tokens to "
                               f"{max(room, 0)}", "max_tokens", "context_length_exceeded")
        return ids, want

    def run(self, ids: list[int], max_tokens: int, opts: Sampling, result: Result) -> Iterator[str]:
        """Generate from ``ids`` and yield text deltas; ``result`` is complete once the iterator ends.

        The model lock is held from the first ``next()`` until the iterator ends or is closed.
        """
        tok, eos = self.tokenizer, self.tokenizer.eos_id
        result.prompt_tokens = len(ids)
        with self.lock:
            x = torch.tensor([ids], device=self.device)  # (1, T)
            steps = stream(self.model, x, max_tokens, temperature=opts.temperature, top_p=opts.top_p,
                           eos_token_id=eos, seed=opts.seed, repetition_penalty=opts.repetition_penalty)
            text = TextStream(tok, opts.stop, eos)
            for t in steps:
                piece = text.push(int(t[0]))
                if piece:
                    yield piece
                if text.finished:
                    break
            rest = text.flush()
            if rest:
                yield rest
            result.completion_tokens = text.n_tokens
            result.finish_reason = text.finish_reason


__all__ = ["Engine", "Result"]
