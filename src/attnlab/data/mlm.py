"""Masked-language-modelling objective (BERT): dynamic masking and its loss.

    inputs, labels = mask_tokens(ids, mask_token_id=103, vocab_size=30522,
                                 special_ids=[0, 101, 102], generator=g)
    loss = mlm_loss(model(inputs, attention_mask), labels)

Masking is *dynamic*: a fresh pattern is drawn every time a batch is seen.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (as ``F.cross_entropy``'s default)."""

MASK_TOKEN = "<|mask|>"
"""The special token an encoder's masked positions read (added to the tokenizer by the MLM objective)."""


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    attention_mask: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick MLM targets and corrupt the inputs, BERT style.

    Each non-special token is selected with probability ``mlm_probability``. A selected
    token becomes ``[MASK]`` with probability ``mask_fraction``, a random non-special
    token with probability ``random_fraction``, and stays unchanged otherwise (80/10/10 by
    default). Special tokens ([CLS], [SEP], [PAD], ...) and padding positions are never selected.

    Args:
        input_ids: (B, T) token ids (not modified).
        mask_token_id: id of ``[MASK]``.
        vocab_size: random replacements are drawn from ``[0, vocab_size)`` minus ``special_ids``.
        special_ids: ids that are never selected nor used as random replacements
            (include the pad id and ``mask_token_id``).
        attention_mask: (B, T) 1/0; positions with 0 are never selected.
        mlm_probability: share of eligible tokens selected.
        mask_fraction: share of selected tokens replaced by ``[MASK]``.
        random_fraction: share of selected tokens replaced by a random token.
        generator: makes the draw reproducible.

    Returns:
        ``(inputs, labels)``, both (B, T) int64: the corrupted ids, and the original id at
        selected positions with :data:`IGNORE_INDEX` (-100) elsewhere.

    Raises:
        ValueError: probabilities outside [0, 1], or ``mask_fraction + random_fraction > 1``.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1.0:
        raise ValueError(
            f"need mask_fraction, random_fraction >= 0 with sum <= 1, got {mask_fraction}, {random_fraction}"
        )
    device = input_ids.device
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long, device=device)
    eligible = ~torch.isin(input_ids, special)  # (B, T)
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    draw = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T)
    selected = eligible & (draw < mlm_probability)
    action = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T)
    to_mask = selected & (action < mask_fraction)
    to_random = selected & (action >= mask_fraction) & (action < mask_fraction + random_fraction)

    pool = torch.ones(vocab_size, dtype=torch.bool, device=device)
    pool[special[special < vocab_size]] = False
    pool = pool.nonzero().squeeze(1)  # (n_allowed,)
    if pool.numel() == 0:
        raise ValueError("every id is special; no token left to draw random replacements from")
    pick = torch.randint(pool.numel(), input_ids.shape, generator=generator, device=device)  # (B, T)

    inputs = input_ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = pool[pick][to_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX)).long()
    return inputs.long(), labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the selected positions.

    Args:
        logits: (B, T, V).
        labels: (B, T) from :func:`mask_tokens` (-100 = not a target).

    Returns:
        Scalar loss (NaN when no position is a target).
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
