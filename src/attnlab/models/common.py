"""Pieces every model builds from its config the same way: positions, score mods, norms, init, counts.

The self-attention pattern lives in :mod:`attnlab.models.masking` (re-exported here).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from attnlab.attention import PositionEncoding, build_positions
from attnlab.attention.score_mods import ScoreMod, softcap
from attnlab.config import ModelConfig
from attnlab.layers import build_norm
from attnlab.models.masking import self_attention_mask  # re-exported: the pattern lives with the forward mask


def positions_for(cfg: ModelConfig, *, bidirectional: bool) -> PositionEncoding:
    """The position scheme of ``cfg``, one-sided in decoders and two-sided in encoders.

    ``bidirectional`` matters to the schemes that see the direction of a key: T5 relative
    bias (separate buckets for keys after the query) and ALiBi (``-slope·|i - j|`` instead
    of the causal ``-slope·(i - j)``).
    """
    scaling = None
    if cfg.rope_scaling != "none":
        scaling = {"type": cfg.rope_scaling, "factor": cfg.rope_scaling_factor}
    return build_positions(
        cfg.position, cfg.block_size, cfg.d_model, cfg.head_dim, cfg.rope_theta, n_head=cfg.n_head,
        rope_scaling=scaling, num_buckets=cfg.relative_buckets, max_distance=cfg.relative_max_distance,
        bidirectional=bidirectional,
    )


def add_position_embedding(pos: PositionEncoding, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x + pos.embed(positions)`` for schemes that add vectors (learned, sinusoidal), else ``x``.

    Args:
        pos: the model's position scheme.
        x: (B, T, D) embedded tokens.
        positions: (T,) absolute positions of those tokens.
    """
    pe = pos.embed(positions)  # (T, D) or None
    return x if pe is None else x + pe.to(x.dtype)


def score_mod_for(pos: PositionEncoding, cfg: ModelConfig) -> Optional[ScoreMod]:
    """Position bias (ALiBi, relative) and soft-capping, as one score modification."""
    mod = pos.score_mod()
    if cfg.attention.softcap:
        cap = softcap(cfg.attention.softcap)
        mod = cap if mod is None else mod.then(cap)
    return mod


def final_norm_for(cfg: ModelConfig) -> nn.Module:
    """The norm after the last block: pre-norm blocks leave their output unnormalised, so a
    norm follows them; post-norm blocks already end in one (``nn.Identity``)."""
    if cfg.norm_placement == "pre":
        return build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
    return nn.Identity()


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
