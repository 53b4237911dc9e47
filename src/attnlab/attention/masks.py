"""Attention masks as composable predicates.

A mask answers "may query ``q_idx`` attend to key ``kv_idx``?" for batch row ``b`` and
head ``h``. Masks combine with ``&``, ``|`` and ``~``. Indices are *absolute positions*:
when there are fewer queries than keys (decoding with a KV cache) query ``i`` sits at
position ``Tk - Tq + i`` (bottom-right alignment, as in FlashAttention >= 2.1).

One definition serves every backend: the eager and SDPA backends call
:meth:`Mask.dense` to materialise a boolean tensor; a backend that knows a mask kind
natively (SDPA's ``is_causal``) asks :attr:`Mask.kind`; a backend that compiles or caches
per mask (FlexAttention block masks) uses :attr:`Mask.key`, a hashable identity of the
mask's semantics, or None when the mask captures data tensors and must not be cached.

Predicates are written with tensor operations only (no Python branching on index
values), so they work both on broadcast index grids (:meth:`Mask.dense`) and on the 0-d
index tensors FlexAttention feeds them under ``torch.vmap``.

Patterns: :func:`causal`, :func:`full`, :func:`padding`, :func:`key_padding`,
:func:`document`, :func:`sliding_window`, :func:`local_global`, :func:`block_sparse`,
:func:`strided`, :func:`prefix_lm`, :func:`adjacency`.

Example::

    mask = causal() & padding(lengths)           # (B,) valid lengths
    allowed = mask.dense(B, H, Tq, Tk, device)   # (B, 1, Tq, Tk) bool
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

Predicate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Mask:
    """A boolean predicate ``(b, h, q_idx, kv_idx) -> allowed``.

    Args:
        fn: the predicate; it receives broadcastable integer tensors and returns a
            broadcastable bool tensor.
        kind: a short name backends can recognise (``"causal"``, ``"padding"``, ...;
            combinations are named like ``"causal&padding"``).
        per_batch: whether the predicate depends on ``b`` (materialise per batch row).
        per_head: whether it depends on ``h``.
        key: hashable identity of the semantics (equal keys = equal masks), used to cache
            compiled block masks; None (the default) means "not cacheable", which every
            mask that captures a data tensor (lengths, ids, adjacency) must use.
    """

    def __init__(self, fn: Predicate, kind: str, *, per_batch: bool = False, per_head: bool = False,
                 key: Hashable | None = None):
        self.fn = fn
        self.kind = kind
        self.per_batch = per_batch
        self.per_head = per_head
        self.key = key

    def __call__(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __and__(self, other: Mask) -> Mask:
        return Mask(
            lambda b, h, q, k: self.fn(b, h, q, k) & other.fn(b, h, q, k),
            f"{self.kind}&{other.kind}",
            per_batch=self.per_batch or other.per_batch,
            per_head=self.per_head or other.per_head,
            key=_combine_keys("&", self.key, other.key),
        )

    def __or__(self, other: Mask) -> Mask:
        return Mask(
            lambda b, h, q, k: self.fn(b, h, q, k) | other.fn(b, h, q, k),
            f"({self.kind}|{other.kind})",
            per_batch=self.per_batch or other.per_batch,
            per_head=self.per_head or other.per_head,
            key=_combine_keys("|", self.key, other.key),
        )

    def __invert__(self) -> Mask:
        return Mask(lambda b, h, q, k: ~self.fn(b, h, q, k), f"~{self.kind}",
                    per_batch=self.per_batch, per_head=self.per_head,
                    key=None if self.key is None else ("~", self.key))

    def __repr__(self) -> str:
        return f"Mask({self.kind})"

    def dense(self, batch: int, heads: int, tq: int, tk: int, device: torch.device | str) -> torch.Tensor:
        """Materialise the mask as a bool tensor.

        Args:
            batch: batch size B.
            heads: number of query heads H.
            tq: number of queries; they sit at positions ``tk - tq .. tk - 1``.
            tk: number of keys.
            device: where to build it.

        Returns:
            Bool tensor of shape (B or 1, H or 1, Tq, Tk); True means "may attend".
        """
        nb = batch if self.per_batch else 1
        nh = heads if self.per_head else 1
        b = torch.arange(nb, device=device).view(nb, 1, 1, 1)
        h = torch.arange(nh, device=device).view(1, nh, 1, 1)
        q = torch.arange(tk - tq, tk, device=device).view(1, 1, tq, 1)
        k = torch.arange(tk, device=device).view(1, 1, 1, tk)
        out = self.fn(b, h, q, k)
        return out.expand(nb, nh, tq, tk)


def _combine_keys(op: str, a: Hashable | None, b: Hashable | None) -> Hashable | None:
    """The key of ``a op b``: None as soon as either side is not cacheable."""
    return None if a is None or b is None else (op, a, b)


def causal() -> Mask:
    """Each query sees itself and earlier positions."""
    return Mask(lambda b, h, q, k: q >= k, "causal", key=("causal",))


def full() -> Mask:
    """Every query sees every key."""
    return Mask(lambda b, h, q, k: torch.ones_like(q >= k), "full", key=("full",))


def padding(lengths: torch.Tensor) -> Mask:
    """Keys at positions ``>= lengths[b]`` are padding (right-padded batch).

    Args:
        lengths: (B,) number of valid tokens per sequence.
    """
    lengths = lengths.long()
    return Mask(lambda b, h, q, k: k < lengths.to(k.device)[b], "padding", per_batch=True, key=None)


def key_padding(valid: torch.Tensor) -> Mask:
    """Keys where ``valid[b, kv] is False`` are padding (any padding side).

    Args:
        valid: (B, Tk) bool, True for real tokens.
    """
    valid = valid.bool()
    return Mask(lambda b, h, q, k: valid.to(k.device)[b, k], "key_padding", per_batch=True, key=None)


def document(doc_ids: torch.Tensor) -> Mask:
    """Packed sequences: a query only sees keys of the same document.

    Args:
        doc_ids: (B, Tk) integer document id of every position. Combine with
            :func:`causal` for causal packed training.
    """
    doc_ids = doc_ids.long()
    return Mask(
        lambda b, h, q, k: doc_ids.to(k.device)[b, q] == doc_ids.to(k.device)[b, k],
        "document",
        per_batch=True,
        key=None,
    )


# -- sparse and local patterns ---------------------------------------------------------


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def sliding_window(window: int, causal: bool = True) -> Mask:
    """Local attention to the nearest ``window`` positions.

    Convention: ``window`` counts the query itself. Causal: key ``kv`` is visible when
    ``0 <= q - kv < window`` (the query and the ``window - 1`` tokens before it, as in
    Mistral's ``sliding_window``; FlashAttention's ``window_size=(window - 1, 0)``).
    Bidirectional: ``|q - kv| < window`` (``2 · window - 1`` keys). A causal window of at
    least the sequence length is plain causal attention.

    Args:
        window: window size, >= 1.
        causal: one-sided (default) or symmetric window.
    """
    _check_positive("window", window)
    if causal:
        fn = lambda b, h, q, k: (q >= k) & (q - k < window)  # noqa: E731
    else:
        fn = lambda b, h, q, k: (q - k).abs() < window  # noqa: E731
    return Mask(fn, "sliding_window", key=("sliding_window", window, causal))


def _position_table(positions: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A bool lookup table over positions (True = member) and the sorted members."""
    members = sorted({int(p) for p in
                      (positions.flatten().tolist() if isinstance(positions, torch.Tensor) else positions)})
    if members and members[0] < 0:
        raise ValueError(f"positions must be >= 0, got {members[0]}")
    table = torch.zeros(members[-1] + 1 if members else 0, dtype=torch.bool)
    table[list(members)] = True
    return table, tuple(members)


def _member(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` that is False past the end of the table (branch-free, vmap-safe)."""
    n = table.shape[0]
    if n == 0:
        return torch.zeros_like(idx, dtype=torch.bool)
    return table.to(idx.device)[idx.clamp(0, n - 1)] & (idx < n)


def local_global(window: int, global_tokens: int | Sequence[int] | torch.Tensor, *, causal: bool = False) -> Mask:
    """Longformer / BigBird-style local window plus global tokens.

    Every query sees a :func:`sliding_window` of ``window`` around itself. A global token
    attends to every position and every position attends to it. With ``causal=True``
    everything is additionally restricted to ``kv <= q`` (global tokens then see their
    whole past and are seen by every later token).

    Args:
        window: local window size (see :func:`sliding_window` for the convention).
        global_tokens: an int ``n`` (the first ``n`` positions are global, e.g. [CLS]) or
            the global positions as a list / 1-D tensor.
        causal: also apply the causal constraint.
    """
    _check_positive("window", window)
    local = sliding_window(window, causal=False).fn
    if isinstance(global_tokens, int):
        if global_tokens < 0:
            raise ValueError(f"global_tokens must be >= 0, got {global_tokens}")
        n = global_tokens
        is_global = lambda i: i < n  # noqa: E731
        gkey: tuple = ("first", n)
    else:
        table, members = _position_table(global_tokens)
        is_global = lambda i: _member(table, i)  # noqa: E731
        gkey = ("positions", members)

    def fn(b, h, q, k):
        allowed = local(b, h, q, k) | is_global(q) | is_global(k)
        return allowed & (q >= k) if causal else allowed

    return Mask(fn, "local_global", key=("local_global", window, gkey, causal))


def block_sparse(layout: torch.Tensor, block_size: int) -> Mask:
    """A fixed block pattern: query block ``q // block_size`` sees key block ``kv // block_size``
    when the layout says so.

    Positions past the layout's extent are not allowed.

    Args:
        layout: bool (nQB, nKB), or (H, nQB, nKB) for a different pattern per head.
        block_size: positions per block, >= 1.
    """
    _check_positive("block_size", block_size)
    if layout.dim() not in (2, 3):
        raise ValueError(f"layout must be (nQB, nKB) or (H, nQB, nKB), got shape {tuple(layout.shape)}")
    layout = layout.bool()
    nqb, nkb = layout.shape[-2:]
    per_head = layout.dim() == 3
    key = ("block_sparse", block_size, tuple(layout.shape), tuple(layout.flatten().tolist()))

    def fn(b, h, q, k):
        qb, kb = q // block_size, k // block_size
        grid = layout.to(q.device)
        qc, kc = qb.clamp(0, nqb - 1), kb.clamp(0, nkb - 1)
        hit = grid[h, qc, kc] if per_head else grid[qc, kc]
        return hit & (qb < nqb) & (kb < nkb)

    return Mask(fn, "block_sparse", per_head=per_head, key=key)


def strided(stride: int, *, local: bool = False) -> Mask:
    """The Sparse Transformer strided pattern: attend when ``(q - kv) % stride == 0``.

    Not causal by itself; combine as needed, e.g. ``strided(s) & causal()``.

    Args:
        stride: the stride, >= 1 (``1`` allows everything).
        local: also allow ``|q - kv| < stride``, the union of the paper's two strided
            heads (a local band plus every ``stride``-th position).
    """
    _check_positive("stride", stride)

    def fn(b, h, q, k):
        d = q - k
        allowed = d % stride == 0
        return allowed | (d.abs() < stride) if local else allowed

    return Mask(fn, "strided", key=("strided", stride, local))


def prefix_lm(prefix_lengths: int | torch.Tensor) -> Mask:
    """Prefix LM (T5 / UniLM): bidirectional within the prefix, causal after it.

    Key ``kv`` is visible when ``kv <= q`` or ``kv < prefix``: every query sees the whole
    prefix, prefix queries see nothing past the prefix, later tokens are causal.

    Args:
        prefix_lengths: one prefix length for all rows (int), or a (B,) tensor.
    """
    if isinstance(prefix_lengths, int):
        if prefix_lengths < 0:
            raise ValueError(f"prefix_lengths must be >= 0, got {prefix_lengths}")
        n = prefix_lengths
        return Mask(lambda b, h, q, k: (k <= q) | (k < n), "prefix_lm", key=("prefix_lm", n))
    lengths = prefix_lengths.long().flatten()
    return Mask(lambda b, h, q, k: (k <= q) | (k < lengths.to(k.device)[b]), "prefix_lm", per_batch=True, key=None)


def adjacency(adj: torch.Tensor) -> Mask:
    """Graph attention: node ``q`` may attend to node ``kv`` when ``adj[b, q, kv]``.

    Positions are node indices (use with Tq == Tk == number of nodes).

    Args:
        adj: bool (N, N) shared by the batch, or (B, N, N).
    """
    if adj.dim() not in (2, 3) or adj.shape[-1] != adj.shape[-2]:
        raise ValueError(f"adj must be (N, N) or (B, N, N), got shape {tuple(adj.shape)}")
    adj = adj.bool()
    if adj.dim() == 2:
        return Mask(lambda b, h, q, k: adj.to(k.device)[q, k], "adjacency", key=None)
    return Mask(lambda b, h, q, k: adj.to(k.device)[b, q, k], "adjacency", per_batch=True, key=None)


def is_kind(mask: Mask | torch.Tensor | None, kind: str) -> bool:
    """True when ``mask`` is exactly the named single kind (e.g. plain ``"causal"``).

    A dense tensor mask (or None) is never a named kind.
    """
    return isinstance(mask, Mask) and mask.kind == kind
