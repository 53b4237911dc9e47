"""Attention heatmaps: a PNG grid, one row per layer and one column per head.

    plot_attention(cap.weights, tokens, "attention.png", heads=cap.heads)
    attention_heatmap(model, tokenizer, "But soft, what light", "attention.png", layers=[0, 3])

Each panel shows which keys (columns) each query (rows) attends to, with the tokens
on both axes. The colour scale is shared by all panels and uses a square-root
stretch so that small weights stay visible next to a dominant one; entries a query
may not attend to (exact zeros, e.g. the causal future) are drawn grey.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.viz.capture import capture_attention

MAX_TOKENS = 40  # beyond this, only the last MAX_TOKENS queries and keys are drawn


def token_labels(pieces: Sequence[str], limit: int = 12) -> list[str]:
    """Make token pieces readable as tick labels.

    Leading/trailing spaces are dropped (a pure-space token shows as ``␣``), newlines
    and tabs become ``\\n`` / ``\\t``, and long pieces are cut to ``limit`` characters.
    """
    out = []
    for p in pieces:
        s = p.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").strip(" ")
        if not s:
            s = "␣"
        if len(s) > limit:
            s = s[: limit - 1] + "…"
        out.append(s)
    return out


def _as_grid(
    weights: Mapping[int, torch.Tensor] | torch.Tensor, layers: Sequence[int] | None
) -> tuple[list[int], list[torch.Tensor]]:
    """Normalise the input to (layer labels, [(H, Tq, Tk) float32 CPU tensors])."""
    if isinstance(weights, torch.Tensor):  # (L, H, Tq, Tk) or (H, Tq, Tk)
        w = weights if weights.dim() == 4 else weights.unsqueeze(0)
        weights = {i: w[i] for i in range(w.shape[0])}
    keys = list(layers) if layers is not None else sorted(weights)
    missing = [k for k in keys if k not in weights]
    if missing:
        raise ValueError(f"no weights for layer {missing[0]}; available layers: {sorted(weights)}")
    grid = []
    for k in keys:
        w = weights[k].detach()
        if w.dim() == 4:  # (B, H, Tq, Tk): plot the first sequence
            w = w[0]
        if w.dim() != 3:
            raise ValueError(f"layer {k} weights must be (B, H, Tq, Tk) or (H, Tq, Tk), got {tuple(weights[k].shape)}")
        grid.append(w.float().cpu())
    if not grid:
        raise ValueError("nothing to plot: no layers selected")
    shapes = {tuple(g.shape) for g in grid}
    if len(shapes) != 1:
        raise ValueError(f"all layers must have the same (H, Tq, Tk) to share a grid, got {sorted(shapes)}")
    return keys, grid


def plot_attention(
    weights: Mapping[int, torch.Tensor] | torch.Tensor,
    tokens: Sequence[str],
    path: str | Path,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    title: str | None = None,
    max_tokens: int = MAX_TOKENS,
) -> Path:
    """Draw a grid of attention heatmaps (rows = layers, columns = heads) to a PNG.

    Args:
        weights: layer index → (B, H, Tq, Tk) or (H, Tq, Tk) weights (batch row 0 is
            drawn), e.g. ``AttentionCapture.weights``; or one (L, H, Tq, Tk) tensor.
        tokens: the Tk key tokens (already readable strings); queries are the last Tq.
        path: the PNG to write (parent folders are created).
        layers: which layers of ``weights`` to draw, in order (default: all, sorted).
        heads: labels of the H columns, i.e. the original head indices (default 0..H-1).
        title: figure title (a note is appended when tokens were cut).
        max_tokens: draw at most this many of the last queries and keys.

    Returns:
        The path written.

    Raises:
        ValueError: inconsistent shapes, or as many token labels as keys are not given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import PowerNorm

    layer_ids, grid = _as_grid(weights, layers)
    n_head, tq, tk = grid[0].shape
    if len(tokens) != tk:
        raise ValueError(f"got {len(tokens)} token labels for {tk} keys; pass one label per key")
    head_ids = list(heads) if heads is not None else list(range(n_head))
    if len(head_ids) != n_head:
        raise ValueError(f"got {len(head_ids)} head labels for {n_head} heads")

    labels = token_labels(tokens)
    shown_k = min(tk, max_tokens)
    shown_q = min(tq, max_tokens)
    note = ""
    if shown_k < tk or shown_q < tq:
        note = f"showing the last {shown_k} of {tk} tokens (earlier keys not drawn)"
    k_labels = labels[tk - shown_k:]
    q_labels = labels[tk - tq:][tq - shown_q:]  # query i sits at position tk - tq + i

    n = max(shown_q, shown_k)
    font = 9 if n <= 16 else 7.5 if n <= 28 else 6
    panel = min(max(2.6, 0.16 * n + 1.0), 6.5)  # inches per panel
    n_rows, n_cols = len(grid), n_head
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(panel * n_cols + 1.6, panel * n_rows + 1.1), squeeze=False,
        constrained_layout=True,
    )
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = None
    for r, (layer, w) in enumerate(zip(layer_ids, grid, strict=False)):
        for c in range(n_head):
            ax = axes[r][c]
            a = w[c, tq - shown_q:, tk - shown_k:].numpy()  # (shown_q, shown_k)
            image = ax.imshow(np.ma.masked_equal(a, 0.0), cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
            ax.set_xticks(range(shown_k))
            ax.set_yticks(range(shown_q))
            ax.set_xticklabels(k_labels, rotation=90, fontsize=font)
            ax.set_yticklabels(q_labels, fontsize=font)
            ax.tick_params(length=2, pad=1)
            ax.set_title(f"layer {layer} · head {head_ids[c]}", fontsize=font + 2)
            if r == n_rows - 1:
                ax.set_xlabel("key (attended to)", fontsize=font + 1)
            if c == 0:
                ax.set_ylabel("query", fontsize=font + 1)
    bar = fig.colorbar(image, ax=axes, shrink=min(0.9, 4.0 / n_rows + 0.3), pad=0.01)
    bar.set_label("attention weight (√ scale; grey = masked)", fontsize=9)
    bar.set_ticks([0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
    bar.ax.tick_params(labelsize=8)
    heading = title or "attention weights"
    fig.suptitle(heading + (f"\n{note}" if note else ""), fontsize=12)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def attention_heatmap(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    path: str | Path,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    *,
    max_tokens: int = MAX_TOKENS,
    title: str | None = None,
) -> Path:
    """Run ``text`` through ``model`` and draw the selected layers' and heads' attention.

    Args:
        model: a language model whose ``forward(input_ids)`` runs its attention layers.
        tokenizer: anything with ``encode(text) -> list[int]``; its ``token_strings(ids)``
            is used for readable labels when present.
        text: the input text.
        path: the PNG to write.
        layers: layer indices (default: all).
        heads: head indices (default: all).
        max_tokens: draw at most the last ``max_tokens`` tokens.
        title: figure title (default: the text, shortened).

    Returns:
        The path written.

    Raises:
        ValueError: empty text, text longer than the model's context, or a layer/head
            out of range.
    """
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text encodes to no tokens; pass a non-empty text")
    limit = getattr(model, "max_context", None) or getattr(getattr(model, "config", None), "block_size", None)
    if limit is not None and len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens but the model's context is {limit}; shorten it")
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)  # (1, T)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_attention(model, layers, heads) as cap:
            model(x)
    finally:
        model.train(was_training)
    strings = tokenizer.token_strings(ids) if hasattr(tokenizer, "token_strings") else [str(i) for i in ids]
    if title is None:
        short = text if len(text) <= 70 else text[:67] + "..."
        title = f"attention of {short!r} ({len(ids)} tokens)"
    return plot_attention(cap.weights, strings, path, layers=cap.layers, heads=cap.heads,
                          title=title, max_tokens=max_tokens)
