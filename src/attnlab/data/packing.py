"""Packed windows: which document each token of a window belongs to.

Pretraining data is one token stream of documents joined by ``<|endoftext|>``
(:mod:`attnlab.data.dataset`), and a training window usually spans several documents.
:func:`document_ids` numbers the documents inside each window so that attention can be
kept within a document (:func:`attnlab.attention.masks.document`, ``train.document_mask``)::

    x = [a a EOS b b b EOS c]        # one row of a window
    document_ids(x, eos) = [0 0 0 1 1 1 1 2]

The end-of-text token belongs to the document it closes; the token after it opens the
next one.
"""

from __future__ import annotations

import torch


def document_ids(x: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Document number of every position of packed windows.

    The id of position ``t`` is the number of ``eos_id`` tokens strictly before ``t`` in its
    row, so ids start at 0 in every row and grow by one after each end-of-text token.

    Args:
        x: (B, T) token ids.
        eos_id: the end-of-text id that separates documents.

    Returns:
        (B, T) long document ids, on ``x``'s device.

    Raises:
        ValueError: ``x`` is not 2-D.
    """
    if x.dim() != 2:
        raise ValueError(f"document_ids needs (B, T) token ids, got shape {tuple(x.shape)}")
    ends = (x == eos_id).long()  # (B, T): 1 where a document ends
    return ends.cumsum(dim=1) - ends  # (B, T): EOS tokens strictly before each position


__all__ = ["document_ids"]
