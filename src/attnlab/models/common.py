"""Pieces every model shares: BERT's initialisation and the :class:`Model` base.

The pieces of the transformer stack (positions, score mods, the self-attention pattern,
the final norm) live in :mod:`attnlab.models.stack` and are re-exported here.
"""

from __future__ import annotations

from torch import nn

from attnlab.models.stack import (  # re-exported: they used to live here
    add_position_embedding,
    final_norm_for,
    positions_for,
    score_mod_for,
    self_attention_mask,
)


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation, in place, of every parameter of ``module``.

    Matrices and embeddings (any parameter with 2+ dims) ~ N(0, ``std``), biases zero,
    other 1-D weights (norm gains) one.

    Args:
        module: the module to initialise (a whole model or one head).
        std: standard deviation of the normal init.
    """
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        elif name.endswith("weight"):  # norm gains
            nn.init.ones_(p)


__all__ = [
    "add_position_embedding", "final_norm_for", "init_bert_weights", "positions_for", "score_mod_for",
    "self_attention_mask",
]


class Model(nn.Module):
    """Base of attnlab's top-level models: what every model answers the same way."""

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameter count (tied weights counted once: ``parameters()`` yields a shared tensor once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
