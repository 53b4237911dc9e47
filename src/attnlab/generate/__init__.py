"""Text generation for decoder-only LMs and encoder–decoders: ``generate(model, input_ids, max_new_tokens, ...)``
(greedy, sampling, beam search) and ``stream`` (token by token), their options one :class:`SamplingConfig`;
``fast_generate`` / ``FastDecoder``: the static-KV-cache, compiled decode path for decoder-only transformers."""

from attnlab.generate.beam import beam_search
from attnlab.generate.config import SamplingConfig, SamplingError
from attnlab.generate.fast import FastDecoder, fast_generate
from attnlab.generate.processors import apply_repetition_penalty, ends_with_stop
from attnlab.generate.sampling import filter_logits, generate, next_token, stream
from attnlab.generate.session import Session, is_encoder_decoder

__all__ = [
    "FastDecoder", "SamplingConfig", "SamplingError", "Session", "apply_repetition_penalty", "beam_search",
    "ends_with_stop", "fast_generate", "filter_logits", "generate", "is_encoder_decoder", "next_token", "stream",
]
