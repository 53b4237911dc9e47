"""Evaluating a trained model beyond its training length, with RoPE scaling chosen at load time.

RoPE, ALiBi, T5 relative bias, sinusoidal tables and NoPE have no weights that depend on the
context length: their tables are computed, so a checkpoint loads unchanged into a model built
for a longer ``block_size``. RoPE can also be rescaled when it is stretched
(:func:`~attnlab.attention.positions.rope_cos_sin`): ``linear`` interpolates positions,
``ntk`` raises the base. Learned positions have one trained vector per position and cannot
extend.

    model = extend_model(model, seq_len=512, scaling="ntk", factor=4.0)  # trained at 128
"""

from __future__ import annotations

import dataclasses

from torch import nn

from attnlab.attention.positions import ROPE_SCALINGS
from attnlab.config import ModelConfig
from attnlab.errors import AttnlabError, did_you_mean

SCALINGS = ("none", *ROPE_SCALINGS)
"""RoPE scalings a model can be evaluated with: ``none`` (plain extrapolation), ``linear``, ``ntk``."""


def extend_context(
    cfg: ModelConfig, seq_len: int, scaling: str | None = None, factor: float | None = None
) -> ModelConfig:
    """A copy of ``cfg`` that runs ``seq_len`` tokens, with its RoPE scaling replaced when ``scaling`` is given.

    ``block_size`` is raised to ``seq_len`` when it is shorter. That only lengthens computed
    position tables (their values at each position do not depend on their length), so the
    trained weights load unchanged; a learned-position model cannot be extended.

    Args:
        cfg: the trained model's architecture.
        seq_len: tokens per sequence to evaluate.
        scaling: ``None`` keeps the model's own RoPE scaling; ``"none"``, ``"linear"`` or
            ``"ntk"`` replaces it (RoPE models only).
        factor: how many times longer than the trained context RoPE should reach (>= 1);
            required by ``"linear"`` and ``"ntk"``, absent (or 1) with ``"none"``.

    Returns:
        The new config (``cfg`` itself when nothing changes).

    Raises:
        AttnlabError: a scaling on a model whose position is not ``rope``, an unknown scaling,
            a missing or invalid factor, or a learned-position model asked for more than
            ``block_size`` tokens.
    """
    if seq_len <= 0:
        raise AttnlabError(f"the sequence length must be positive, got {seq_len}")
    changes: dict = {}
    if scaling is not None:
        changes.update(_scaling_fields(cfg, scaling, factor))
    elif factor is not None:
        raise AttnlabError("a RoPE scaling factor needs a scaling kind; choose linear or ntk")
    if seq_len > cfg.block_size:
        if cfg.position == "learned":
            raise AttnlabError(
                f"learned positions cannot extend beyond the {cfg.block_size} positions the model was trained with "
                f"(asked for {seq_len}); lower the sequence length to <= {cfg.block_size}, or train a model with "
                "model.position=rope (or alibi) to evaluate longer contexts"
            )
        changes["block_size"] = seq_len
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _scaling_fields(cfg: ModelConfig, scaling: str, factor: float | None) -> dict:
    """``rope_scaling`` and ``rope_scaling_factor`` for a requested scaling, validated."""
    if cfg.position != "rope":
        raise AttnlabError(
            f"RoPE scaling applies to models with position 'rope', this one has position '{cfg.position}'; "
            "evaluate it without RoPE scaling"
        )
    if scaling not in SCALINGS:
        raise AttnlabError(f"unknown RoPE scaling '{scaling}'{did_you_mean(scaling, SCALINGS)}; "
                           f"use one of {', '.join(SCALINGS)}")
    if scaling == "none":
        if factor not in (None, 1, 1.0):
            raise AttnlabError(f"a RoPE factor ({factor}) needs scaling linear or ntk, not none; drop the factor")
        return {"rope_scaling": "none", "rope_scaling_factor": 1.0}
    if factor is None:
        raise AttnlabError(f"RoPE scaling '{scaling}' needs a factor (how many times longer than the trained "
                           "context RoPE should reach), e.g. 2")
    if not factor >= 1.0:  # also catches NaN
        raise AttnlabError(f"the RoPE scaling factor must be >= 1, got {factor}")
    return {"rope_scaling": scaling, "rope_scaling_factor": float(factor)}


def extend_model(
    model: nn.Module, seq_len: int, scaling: str | None = None, factor: float | None = None
) -> nn.Module:
    """``model``'s weights in a model built for ``seq_len`` tokens and the given RoPE scaling.

    See :func:`extend_context` for the rules. The weights are copied with the checkpoint's
    strict name and shape check (:func:`~attnlab.io.weights.load_weights`), so a
    scheme that had weights tied to the context length could not slip through.

    Args:
        model: a built model with a ``config`` (:class:`~attnlab.config.ModelConfig`).
        seq_len: tokens per sequence to evaluate.
        scaling: ``None`` (keep), ``"none"``, ``"linear"`` or ``"ntk"``.
        factor: the RoPE scaling factor (see :func:`extend_context`).

    Returns:
        ``model`` itself when its config already fits, else a new model on the same device,
        in the same train/eval mode.
    """
    from attnlab.io.weights import load_weights, weights_state_dict
    from attnlab.models import build  # local imports: models and checkpoints do not depend on eval

    cfg = extend_context(model.config, seq_len, scaling, factor)
    if cfg is model.config:
        return model
    device = next(model.parameters()).device
    new = build(cfg)
    load_weights(new, weights_state_dict(model), source="the trained model")
    return new.to(device).train(model.training)


def rope_label(cfg: ModelConfig) -> str | None:
    """How RoPE runs in ``cfg``: ``"none"``, ``"ntk x2"``, ...; ``None`` for a model without RoPE."""
    if cfg.position != "rope":
        return None
    if cfg.rope_scaling == "none":
        return "none"
    return f"{cfg.rope_scaling} x{cfg.rope_scaling_factor:g}"


__all__ = ["SCALINGS", "extend_context", "extend_model", "rope_label"]
