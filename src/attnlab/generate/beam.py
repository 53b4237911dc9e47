"""Beam search over any model a :class:`~attnlab.generate.session.Session` can drive.

Each input row keeps ``num_beams`` running sequences ranked by the sum of their token
log-probabilities. Every step extends each beam by every token, keeps the best
``2 · num_beams`` candidates (so ``num_beams`` survive even if some of them end in EOS),
offers those among the best ``num_beams`` that end in EOS (at the last step: all of the best
``num_beams``, EOS or not) to the row's finished hypotheses and moves the best non-EOS ones into the next beams; the
cache follows with ``reorder``. Finished hypotheses are ranked by
``sum log p / n ** length_penalty``, n being the generated length (EOS included).

The search follows ``transformers``' ``generate(num_beams=...)`` (checked against v5.23) step for step,
stopping rules included, so both return the same sequences for the same model:

- ``early_stopping=True``: a row stops once it has ``num_beams`` finished hypotheses;
- ``False``: it stops once the best running beam, normalised by its *current* length,
  scores no better than the worst finished hypothesis (a heuristic: with
  ``length_penalty > 0`` a longer continuation could still have won);
- ``"never"``: as ``False`` but with the most favourable length (``max_new_tokens`` when
  ``length_penalty > 0``): with ``"never"``, or any mode and ``length_penalty <= 0``, stopping
  never loses a better hypothesis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.generate.config import EarlyStopping, SamplingConfig
from attnlab.generate.processors import apply_repetition_penalty
from attnlab.generate.session import Session, eval_mode


class Hypotheses:
    """The best finished sequences of one input row, at most ``num_beams``, best first.

    Args:
        num_beams: how many to keep.
        length_penalty: exponent of the length normalisation.
    """

    def __init__(self, num_beams: int, length_penalty: float):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.items: list[tuple[float, torch.Tensor]] = []  # (score, generated tokens), best first

    def score(self, sum_logprobs: float, length: int) -> float:
        """Length-normalised score of a sequence of ``length`` generated tokens."""
        return sum_logprobs / length**self.length_penalty

    def add(self, tokens: torch.Tensor, sum_logprobs: float) -> None:
        """Offer a finished (n,) sequence of generated tokens with its total log-probability."""
        score = self.score(sum_logprobs, tokens.numel())
        if len(self.items) < self.num_beams or score > self.items[-1][0]:
            self.items.append((score, tokens))
            self.items.sort(key=lambda item: item[0], reverse=True)  # stable: earlier wins ties
            del self.items[self.num_beams:]

    def is_done(self, best_running: float, length: int, max_length: int, early_stopping: EarlyStopping) -> bool:
        """Whether the row stops: no running beam (best total log-prob ``best_running`` after
        ``length`` tokens, at most ``max_length``) is expected to enter the list any more."""
        if len(self.items) < self.num_beams:
            return False
        if early_stopping is True or best_running == -math.inf:
            return True
        # Log-probs only fall as a beam grows; with a penalty > 0 the normalisation may still
        # lift a longer beam's score, which only "never" waits for (up to the longest length).
        best_length = max_length if early_stopping == "never" and self.length_penalty > 0 else length
        return self.score(best_running, best_length) <= self.items[-1][0]


@torch.no_grad()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    num_beams: int,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = True,
    num_return_sequences: int = 1,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    attention_mask: torch.Tensor | None = None,
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic beam search (see the module docstring and :func:`~attnlab.generate.generate`).

    An EOS candidate is finished only if it ranks among the row's best ``num_beams``
    candidates of its step. At the ``max_new_tokens``-th step the best ``num_beams``
    candidates are all finished, EOS or not.

    Args:
        model: a decoder-only LM or an encoder–decoder.
        input_ids: (B, T) prompt or source ids.
        max_new_tokens: longest generated part.
        num_beams: beams per input row.
        length_penalty: exponent of the length normalisation (0: rank by total log-prob).
        early_stopping: ``True``: a row stops once it has ``num_beams`` finished sequences;
            ``False``: once the best running beam, scored at its current length, cannot beat
            the worst of them (transformers' heuristic); ``"never"``: once no running beam can.
        num_return_sequences: sequences returned per row, best first.
        eos_token_id: the token that finishes a beam (also pads shorter outputs).
        use_cache: reorder a cache, or recompute every step (same result).
        attention_mask: (B, S) source padding mask (encoder–decoders) or (B, T) left-padded
            prompt mask (decoder-only, see :func:`~attnlab.generate.generate`).
        repetition_penalty: CTRL penalty on tokens already in the beam (1 is off, must be
            > 0), applied to the log-probabilities as transformers' beam search does: they are
            all negative, so a repeated token's log-probability is multiplied by the penalty.

    Returns:
        ``(sequences, scores)``: (B · num_return_sequences, prefix + n) ids (prompt or start
        token included, padded with EOS) and their (B · num_return_sequences,) scores.
    Raises:
        SamplingError: a bad beam option (see :class:`~attnlab.generate.config.SamplingConfig`).
    """
    SamplingConfig(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=num_return_sequences, repetition_penalty=repetition_penalty)  # validates
    k = num_beams
    with eval_mode(model):
        session = Session(model, input_ids, max_new_tokens, attention_mask=attention_mask, use_cache=use_cache)
        b = session.tokens.size(0)
        device = session.tokens.device
        hyps = [Hypotheses(k, length_penalty) for _ in range(b)]
        done = [False] * b
        beam_scores = torch.full((b, k), -math.inf, dtype=torch.float64, device=device)  # (B, K) total log-probs
        beam_scores[:, 0] = 0.0  # start from one beam per row so the first step has no duplicates
        offsets = torch.arange(b, device=device)[:, None] * k  # (B, 1)
        steps = 0
        for step in range(max_new_tokens):
            logits = session.next_logits()  # (N, V)
            logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            logp = apply_repetition_penalty(logp, session.tokens, repetition_penalty, session.padding)
            if step == 0:
                session.reorder(torch.arange(b, device=device).repeat_interleave(k))
                logp = logp.repeat_interleave(k, dim=0)  # (B*K, V)
            vocab = logp.size(-1)
            cand = (beam_scores[:, :, None] + logp.view(b, k, vocab)).view(b, k * vocab)  # (B, K*V)
            top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (B, 2K), best first
            next_scores = beam_scores.clone()
            next_tokens = torch.full((b, k), 0 if eos_token_id is None else eos_token_id, dtype=torch.long,
                                     device=device)
            next_beams = torch.arange(k, device=device).repeat(b, 1)  # (B, K)
            generated = session.generated
            last = step == max_new_tokens - 1
            for row in range(b):
                if done[row]:
                    continue  # keep its beams idle
                next_scores[row] = -math.inf
                kept = 0
                for rank, (score, idx) in enumerate(zip(top_scores[row].tolist(), top_idx[row].tolist(), strict=False)):
                    beam, token = divmod(idx, vocab)
                    ends = eos_token_id is not None and token == eos_token_id
                    if (ends or last) and rank < k and score > -math.inf:
                        finished = torch.cat((generated[row * k + beam], generated.new_tensor([token])))
                        hyps[row].add(finished, score)
                    if not ends and kept < k:
                        next_scores[row, kept], next_tokens[row, kept], next_beams[row, kept] = score, token, beam
                        kept += 1
                done[row] = hyps[row].is_done(float(next_scores[row].max()), step + 1, max_new_tokens, early_stopping)
            steps = step + 1
            if last or all(done):
                break
            session.reorder((next_beams + offsets).view(-1))
            session.append(next_tokens.view(-1))
            beam_scores = next_scores
        return _collect(session, hyps, num_return_sequences, eos_token_id, steps)


def _collect(session: Session, hyps: list[Hypotheses], n: int, eos_token_id: int | None,
             steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the best ``n`` hypotheses of each row behind its prefix, padded with EOS."""
    stride = session.tokens.size(0) // len(hyps)  # 1 before the first step, K after
    prefix = session.tokens[::stride, : session.prefix_len]  # (B, T0)
    if steps == 0:
        zeros = torch.zeros(prefix.size(0) * n, dtype=torch.float64, device=prefix.device)
        return prefix.repeat_interleave(n, dim=0), zeros
    best = [row.items[:n] for row in hyps]
    width = max(tokens.numel() for row in best for _, tokens in row)
    pad = 0 if eos_token_id is None else eos_token_id
    out = torch.full((len(hyps) * n, session.prefix_len + width), pad, dtype=torch.long, device=prefix.device)
    scores = torch.empty(len(hyps) * n, dtype=torch.float64, device=prefix.device)
    for row, items in enumerate(best):
        for j, (score, tokens) in enumerate(items):
            out[row * n + j, : session.prefix_len] = prefix[row]
            out[row * n + j, session.prefix_len : session.prefix_len + tokens.numel()] = tokens
            scores[row * n + j] = score
    return out, scores
