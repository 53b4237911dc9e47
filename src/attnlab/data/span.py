"""Span corruption (T5): hide random spans of a sequence behind sentinels, predict them.

The noise layout follows T5. For a row of T tokens:

* ``n_noise = round(T · noise_density)`` tokens are hidden (at least 1, at most T − 1);
* they form ``n_spans = round(n_noise / mean_span_length)`` spans (at least 1, at most
  ``T − n_noise``);
* the noise tokens and the kept tokens are each cut into ``n_spans`` non-empty pieces by a
  uniformly random segmentation, and the pieces interleave as
  ``kept₀ noise₀ kept₁ noise₁ … kept₍ₙ₋₁₎ noise₍ₙ₋₁₎`` (so a row starts with kept tokens and
  ends with a hidden span, as in T5).

The encoder input replaces noise span ``i`` by ``sentinel_ids[i]``; the target lists each
sentinel followed by the tokens it hides, then the closing sentinel ``sentinel_ids[n_spans]``;
both end with ``eos_id`` when one is given. With T = 10, noise_density = 0.5 and
mean_span_length = 2.5 (5 hidden tokens in 2 spans), one draw is::

    ids     = a b c d e f g h i j
    inputs  = a b <0> e f g <1> </s>                    (kept: "a b", "e f g")
    targets = <0> c d <1> h i j <2> </s>                (hidden: "c d", "h i j")

Every row of a batch has the same counts, so inputs are ``T − n_noise + n_spans (+1)``
tokens and targets ``n_noise + n_spans + 1 (+1)`` tokens long, with no padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """Noise tokens and noise spans of a row of ``length`` tokens (T5's rounding rules).

    Raises:
        ValueError: ``length < 2``, ``noise_density`` outside (0, 1) or ``mean_span_length < 1``.
    """
    if length < 2:
        raise ValueError(f"span corruption needs sequences of at least 2 tokens, got {length}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span_length < 1.0:
        raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length}")
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = min(max(round(n_noise / mean_span_length), 1), length - n_noise)
    return n_noise, n_spans


def span_lengths(batch: int, total: int, pieces: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut ``total`` items into ``pieces`` non-empty parts, uniformly at random, per row.

    Returns:
        (batch, pieces) int64 lengths, each row summing to ``total``.
    """
    # Choose pieces-1 distinct cut points among the total-1 gaps: every segmentation is equally likely.
    order = torch.rand(batch, total - 1, generator=generator).argsort(dim=1)  # (B, total-1)
    starts = torch.zeros(batch, total, dtype=torch.long)  # (B, total): 1 where a piece starts
    starts[:, 0] = 1
    starts.scatter_(1, order[:, : pieces - 1] + 1, 1)
    piece = starts.cumsum(dim=1) - 1  # (B, total): piece index of each item
    return torch.zeros(batch, pieces, dtype=torch.long).scatter_add_(1, piece, torch.ones_like(piece))


def span_corrupt(
    ids: torch.Tensor,
    *,
    noise_density: float,
    mean_span_length: float,
    sentinel_ids: Sequence[int],
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch with T5 span corruption (see the module docstring for the format).

    Args:
        ids: (B, T) token ids (not modified); must not contain any sentinel id.
        noise_density: share of tokens hidden.
        mean_span_length: mean length of a hidden span.
        sentinel_ids: sentinel tokens in order of use (T5: ``<extra_id_0>``, ``<extra_id_1>``, ...);
            ``n_spans + 1`` are needed.
        eos_id: appended to inputs and targets when given.
        generator: makes the draw reproducible (the same generator state gives the same spans).

    Returns:
        ``(inputs, targets)``: (B, S) encoder inputs and (B, L) decoder targets, int64 on ``ids``'s
        device, with ``S = T − n_noise + n_spans (+1)`` and ``L = n_noise + n_spans + 1 (+1)``.

    Raises:
        ValueError: a non-2-D batch, bad density or mean length, too few sentinels, or
            sentinel ids inside ``ids``.
    """
    if ids.dim() != 2:
        raise ValueError(f"span_corrupt takes a (B, T) batch, got shape {tuple(ids.shape)}")
    b, t = ids.shape
    n_noise, n_spans = span_counts(t, noise_density, mean_span_length)
    if len(sentinel_ids) < n_spans + 1:
        raise ValueError(
            f"{n_spans} spans need {n_spans + 1} sentinel ids, got {len(sentinel_ids)}; "
            "lower noise_density, raise mean_span_length or shorten the sequences"
        )
    sentinels = torch.tensor(list(sentinel_ids[: n_spans + 1]), dtype=torch.long)  # (n_spans+1,)
    if torch.isin(ids.cpu(), sentinels).any():
        raise ValueError("the batch already contains sentinel ids; sentinels must lie outside the text's ids")

    noise = span_lengths(b, n_noise, n_spans, generator)  # (B, n)
    kept = span_lengths(b, t - n_noise, n_spans, generator)  # (B, n)
    lengths = torch.stack([kept, noise], dim=2).view(b, 2 * n_spans)  # (B, 2n): kept₀ noise₀ kept₁ ...
    ends = lengths.cumsum(dim=1)  # (B, 2n)
    pos = torch.arange(t).expand(b, t).contiguous()  # (B, T)
    span = torch.searchsorted(ends, pos, right=True)  # (B, T): index of the piece holding each token
    is_noise = span % 2 == 1  # (B, T)
    first = torch.ones(b, t, dtype=torch.bool)  # (B, T): first token of its piece
    first[:, 1:] = span[:, 1:] != span[:, :-1]
    sentinel_of = sentinels[span // 2]  # (B, T): noise piece 2i+1 and kept piece 2i both map to sentinel i

    x = ids.cpu().long()
    inputs = torch.where(is_noise, sentinel_of, x)[~is_noise | first].view(b, -1)  # (B, T - n_noise + n)
    targets = torch.where(is_noise, x, sentinel_of)[is_noise | first].view(b, -1)  # (B, n_noise + n)
    tail_in = [] if eos_id is None else [eos_id]
    tail_out = [int(sentinels[n_spans])] + tail_in
    inputs = torch.cat([inputs, torch.tensor(tail_in, dtype=torch.long).expand(b, len(tail_in))], dim=1)
    targets = torch.cat([targets, torch.tensor(tail_out, dtype=torch.long).expand(b, len(tail_out))], dim=1)
    return inputs.to(ids.device), targets.to(ids.device)
