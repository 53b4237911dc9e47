"""Capture attention weights from a model without slowing the layers you do not look at.

Every :class:`~attnlab.attention.MultiHeadAttention` has a ``capture`` hook: when it is
set, that layer runs the weight-returning (eager) path and hands its weights to the
hook. :func:`capture_attention` sets the hook on the selected layers only and, for
those layers only, switches the backend to ``"eager"`` explicitly; every other layer
keeps its fused kernel. Everything is restored on exit, also after an exception::

    with capture_attention(model, layers=[0, 3], heads=[1]) as cap:
        model(input_ids)
    cap.weights[3]          # (B, 1, Tq, Tk): layer 3, head 1
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from attnlab.attention import MultiHeadAttention


def attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    """The model's attention modules in registration order; layer ``i`` is the i-th one."""
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


def check_indices(values: Sequence[int] | None, count: int, what: str) -> list[int]:
    """Validate layer/head indices against ``range(count)``.

    Args:
        values: the requested indices, or None for all of them.
        count: how many exist.
        what: ``"layer"`` or ``"head"``, for the message.

    Returns:
        The indices as a list (all of them for None), in the order given.

    Raises:
        ValueError: an index outside ``0..count-1``, a duplicate, or an empty selection.
    """
    if values is None:
        return list(range(count))
    values = [int(v) for v in values]
    if not values:
        raise ValueError(f"no {what}s selected; pick {what}s in 0..{count - 1} or leave the selection out for all")
    bad = [v for v in values if not 0 <= v < count]
    if bad:
        raise ValueError(f"{what} {bad[0]} is out of range: this model has {count} {what}s, "
                         f"valid {what}s are 0..{count - 1}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what}s {values} contain a duplicate; list each {what} once")
    return values


@dataclass
class AttentionCapture:
    """What :func:`capture_attention` collected.

    Attributes:
        layers: the selected layer indices.
        heads: the selected head indices (the same for every layer).
        weights: layer index → (B, H_sel, Tq, Tk) weights of that layer's latest forward.
        history: layer index → weights of every forward, in order (only if ``keep_history``).
        keep_history: whether :attr:`history` is filled (off by default: decoding many
            tokens would otherwise keep every step's weights).
    """

    layers: list[int]
    heads: list[int]
    weights: dict[int, torch.Tensor] = field(default_factory=dict)
    history: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    keep_history: bool = False

    def _hook(self, layer: int, previous: Callable[[torch.Tensor], None] | None) -> Callable[[torch.Tensor], None]:
        index = torch.tensor(self.heads)

        def record(w: torch.Tensor) -> None:  # w: (B, H, Tq, Tk)
            if previous is not None:  # an enclosing capture keeps working
                previous(w)
            sel = w.index_select(1, index.to(w.device))  # (B, H_sel, Tq, Tk)
            self.weights[layer] = sel
            if self.keep_history:
                self.history.setdefault(layer, []).append(sel)

        return record


@contextlib.contextmanager
def capture_attention(
    model: nn.Module,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    *,
    keep_history: bool = False,
) -> Iterator[AttentionCapture]:
    """Collect the attention weights of selected layers and heads during forwards.

    Only the selected layers run the eager (weight-returning) backend; the others keep
    their configured backend. The layers' ``backend`` and ``capture`` attributes are
    restored on exit, also when the body raises.

    Args:
        model: any module holding :class:`~attnlab.attention.MultiHeadAttention` layers;
            layer ``i`` is the i-th such module in ``model.modules()`` order.
        layers: layer indices to capture (default: all).
        heads: head indices to keep in each captured layer (default: all).
        keep_history: also keep the weights of every forward in ``cap.history``.

    Yields:
        An :class:`AttentionCapture` whose ``weights[layer]`` is (B, H_sel, Tq, Tk).

    Raises:
        ValueError: the model has no attention layers, or an index is out of range
            (the message names the valid range).
    """
    mods = attention_layers(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention layers to capture")
    layer_ids = check_indices(layers, len(mods), "layer")
    n_head = min(mods[i].n_head for i in layer_ids)
    head_ids = check_indices(heads, n_head, "head")
    cap = AttentionCapture(layers=layer_ids, heads=head_ids, keep_history=keep_history)
    saved = [(i, mods[i].backend, mods[i].capture) for i in layer_ids]
    try:
        for i, _, previous in saved:
            mods[i].backend = "eager"  # explicit: the only backend that returns weights
            mods[i].capture = cap._hook(i, previous)
        yield cap
    finally:
        for i, backend, previous in saved:
            mods[i].backend = backend
            mods[i].capture = previous
