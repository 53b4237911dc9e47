"""Task heads on top of an encoder: extractive question answering (span start / end).

    qa = EncoderForQuestionAnswering(encoder)
    start, end = qa(input_ids, attention_mask, token_type_ids)     # (B, T), (B, T)
    loss = span_loss(start, end, start_pos, end_pos, allowed)       # allowed: (B, T) bool
    score, s, e = best_spans(start, end, allowed, max_answer_length=30)

As in BERT's SQuAD recipe, one linear layer maps each token's hidden state to a start and
an end logit; an answer is the span (s, e), s ≤ e, maximising ``start[s] + end[e]``.
"""

from __future__ import annotations

import torch
from torch import nn

from attnlab.models.encoder import EncoderModel, EncoderWithHead


class SpanHead(nn.Module):
    """Per-token start and end logits: one linear layer ``d_model → 2``.

    Args:
        d_model: width of the hidden states.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 2)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) hidden states → (B, T) start logits, (B, T) end logits."""
        start, end = self.proj(hidden).unbind(-1)  # (B, T) each
        return start, end


class EncoderForQuestionAnswering(EncoderWithHead):
    """An :class:`~attnlab.models.EncoderModel` with a :class:`SpanHead` (module name ``qa_head``).

    Args:
        encoder: the encoder to fine-tune.
    """

    def __init__(self, encoder: EncoderModel):
        super().__init__()
        self.encoder = encoder
        self.qa_head = SpanHead(encoder.config.d_model)

    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(B, T, D) → (B, T) start logits and (B, T) end logits (float32)."""
        start, end = self.qa_head(hidden)
        return start.float(), end.float()


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy over the allowed positions only (label smoothing spread over them too)."""
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # (B, T)
    nll = -logp.gather(1, target[:, None]).squeeze(1)  # (B,)
    if smoothing == 0.0:
        return nll.mean()
    uniform = -torch.where(allowed, logp, torch.zeros_like(logp)).sum(1) / allowed.sum(1)  # (B,)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


def span_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    allowed: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean of the start and end cross-entropies, over the positions an answer may take.

    Args:
        start_logits: (B, T).
        end_logits: (B, T).
        start_positions: (B,) target start token (0, the [CLS] token, when the answer is elsewhere).
        end_positions: (B,) target end token.
        allowed: (B, T) bool, True where a span may start or end (the targets must be allowed).
        label_smoothing: share of the target mass spread uniformly over the allowed positions.

    Raises:
        ValueError: a target at a position that is not allowed.
    """
    for name, pos in (("start", start_positions), ("end", end_positions)):
        if not bool(allowed.gather(1, pos[:, None]).all()):
            raise ValueError(f"a {name} target lies outside the allowed positions")
    return 0.5 * (_masked_ce(start_logits, start_positions, allowed, label_smoothing)
                  + _masked_ce(end_logits, end_positions, allowed, label_smoothing))


def best_spans(
    start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor, max_answer_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The highest-scoring span of each row: ``start[s] + end[e]`` with s ≤ e < s + ``max_answer_length``.

    Args:
        start_logits: (B, T).
        end_logits: (B, T).
        allowed: (B, T) bool, positions a span may start and end at (each row needs one).
        max_answer_length: longest span in tokens.

    Returns:
        ``(score (B,), start (B,), end (B,))``; the score is ``-inf`` for a row with nothing allowed.
    """
    b, t = start_logits.shape
    idx = torch.arange(t, device=start_logits.device)
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_answer_length)  # (T, T) e ≥ s, short
    ok = band[None] & allowed[:, :, None] & allowed[:, None, :]  # (B, T, T)
    scores = (start_logits[:, :, None] + end_logits[:, None, :]).masked_fill(~ok, float("-inf"))  # (B, T, T)
    best, flat = scores.view(b, -1).max(dim=1)  # (B,)
    return best, flat // t, flat % t
