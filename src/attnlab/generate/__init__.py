"""Text generation: ``generate(model, input_ids, max_new_tokens, ...)`` and streaming."""

from attnlab.generate.sampling import filter_logits, generate, next_token, stream

__all__ = ["filter_logits", "generate", "next_token", "stream"]
