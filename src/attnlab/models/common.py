"""Pieces every model builds from its config the same way: positions and score mods."""

from __future__ import annotations

from typing import Optional

from attnlab.attention import PositionEncoding, build_positions
from attnlab.attention.score_mods import ScoreMod, softcap
from attnlab.config import ModelConfig


def positions_for(cfg: ModelConfig, *, bidirectional: bool) -> PositionEncoding:
    """The position scheme of ``cfg`` (relative bias is one-sided in decoders, two-sided in encoders)."""
    scaling = None
    if cfg.rope_scaling != "none":
        scaling = {"type": cfg.rope_scaling, "factor": cfg.rope_scaling_factor}
    return build_positions(
        cfg.position, cfg.block_size, cfg.d_model, cfg.head_dim, cfg.rope_theta, n_head=cfg.n_head,
        rope_scaling=scaling, num_buckets=cfg.relative_buckets, max_distance=cfg.relative_max_distance,
        bidirectional=bidirectional,
    )


def score_mod_for(pos: PositionEncoding, cfg: ModelConfig) -> Optional[ScoreMod]:
    """Position bias (ALiBi, relative) and soft-capping, as one score modification."""
    mod = pos.score_mod()
    if cfg.attention.softcap:
        cap = softcap(cfg.attention.softcap)
        mod = cap if mod is None else mod.then(cap)
    return mod
