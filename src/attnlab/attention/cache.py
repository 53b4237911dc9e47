"""Key/value caches for incremental decoding.

During generation each layer's keys and values for past tokens are kept, so a new
token costs one query against the cache instead of a full forward pass.

Two caches, one protocol. A model hands its new tokens to ``cache.place(...)``, which
says where they sit (their positions, the mask and score mod to attend with, and which keys
are real for the model's :func:`~attnlab.models.stack.forward_mask`) and makes room for their
keys and values; each layer then calls ``cache[i].append(k, v)``:

- :class:`KVCache` (dynamic) grows by concatenation: the key axis is ``cached + T``,
  positions are Python-side ``arange``s, the model's mask predicate is used as is
  (bottom-right aligned).
- :class:`StaticKVCache` preallocates (B, Hkv, Tmax, D) buffers and writes at a device-side
  offset, so a decode step has the same shapes at every position and reads nothing back
  to the host: a compiled step (CUDA graphs) runs it without recompiling. The key axis is
  always Tmax, so :meth:`StaticKVCache.place` rewrites the mask (and score mod) to absolute
  slots and hides the slots not written yet.

The dynamic cache also owns its time axis for iteration-level batching: two caches of
left-padded rows can be joined (:meth:`KVCache.join`) and leading columns dropped
(:meth:`KVCache.drop_left`); :attr:`KVCache.joinable` says whether a cache can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from attnlab.attention.masks import Mask
from attnlab.attention.score_mods import ScoreMod


class Placement(NamedTuple):
    """Where new tokens sit, as :meth:`KVCache.place` / :meth:`StaticKVCache.place` return it.

    Attributes:
        positions: (T,) or (B, T) position of each new token (for embeddings and RoPE).
        mask: the pattern to attend with (a Mask, or None for everything), before ``padding``.
        score_mod: the score mod to attend with (position bias, soft-capping), or None.
        padding: (B, cached + T) bool, True at real keys, or None: the model ANDs it into
            ``mask`` with :func:`attnlab.models.stack.forward_mask`.
    """

    positions: torch.Tensor
    mask: Mask | None
    score_mod: ScoreMod | None
    padding: torch.Tensor | None = None


def real_positions(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) positions of a padded batch that count each row's real tokens only.

    Args:
        valid: (B, T) bool, True on real tokens.

    Returns:
        (B, T) long: 0 for the first real token of a row (and for padding before it), then 1, 2, ...
    """
    return (valid.long().cumsum(dim=1) - 1).clamp_min(0)


def place_tokens(start: int, batch: int, t: int, mask: Mask | None, score_mod: ScoreMod | None,
                 attention_mask: torch.Tensor | None, device: torch.device | str) -> Placement:
    """Placement of ``t`` new tokens after ``start`` cached ones, keys = cached + new (no cache: ``start=0``).

    Args:
        start: tokens already cached.
        batch: rows B.
        t: new tokens.
        mask: the model's mask predicate (returned unchanged).
        score_mod: the model's score mod (returned unchanged).
        attention_mask: (B, start + t) 1/0 real-token mask of a left-padded batch, or None:
            each row's positions count its real tokens only, and the mask comes back as the
            placement's ``padding`` (the model hides those keys with ``forward_mask``).
        device: where the positions go.

    Raises:
        ValueError: a malformed ``attention_mask``.
    """
    if attention_mask is None:
        return Placement(torch.arange(start, start + t, device=device), mask, score_mod)  # (T,)
    if tuple(attention_mask.shape) != (batch, start + t):
        raise ValueError(f"attention_mask must be (B, cached + T) = {(batch, start + t)}, "
                         f"got {tuple(attention_mask.shape)}")
    valid = attention_mask.bool()  # (B, cached + T)
    positions = real_positions(valid)[:, start:]  # (B, T)
    return Placement(positions, mask, score_mod, valid)


class LayerCache:
    """Keys and values of one attention layer: (B, Hkv, T, D) each."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add new (B, Hkv, Tnew, D) keys/values; return all cached so far."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat((self.k, k), dim=-2)
            self.v = torch.cat((self.v, v), dim=-2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (e.g. surviving beams)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]

    def nbytes(self) -> int:
        """Memory held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)

    def padded_left(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values left-padded with zeros to ``width`` time steps (the cache is unchanged).

        Args:
            width: the time length of the result, at least :attr:`length`.

        Returns:
            (B, Hkv, width, D) keys and values.

        Raises:
            ValueError: the cache is empty (no shape to pad) or longer than ``width``.
        """
        if self.k is None:
            raise ValueError(f"cannot left-pad an empty layer cache to {width} steps: it has no keys to take the "
                             f"shape from; prefill it first")
        extra = width - self.length
        if extra < 0:
            raise ValueError(f"cannot left-pad a layer cache of {self.length} steps to {width}; width must be >= "
                             f"its length")
        if extra == 0:
            return self.k, self.v
        pad = (0, 0, extra, 0)  # (left, right) of D, then of T
        return F.pad(self.k, pad), F.pad(self.v, pad)  # (B, Hkv, width, D) each

    def pad_left(self, width: int) -> None:
        """Left-pad the keys and values with zeros to ``width`` time steps, in place.

        The new columns must be hidden from attention (a padding mask), as a left-padded
        prompt's are.

        Args:
            width: the time length afterwards, at least :attr:`length`.

        Raises:
            ValueError: the cache is empty or longer than ``width``.
        """
        self.k, self.v = self.padded_left(width)  # (B, Hkv, width, D)

    def drop_left(self, n: int) -> None:
        """Drop the first ``n`` time steps of the keys and values, in place.

        Args:
            n: steps to drop, from 0 to :attr:`length`.

        Raises:
            ValueError: ``n`` is negative or more than the cache holds.
        """
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot drop {n} steps from a layer cache of {self.length}; drop 0 to {self.length}")
        if n == 0:
            return
        self.k, self.v = self.k[..., n:, :], self.v[..., n:, :]  # (B, Hkv, T - n, D)


class KVCache:
    """A dynamic cache: one :class:`LayerCache` per layer, growing by concatenation.

    Args:
        n_layers: number of attention layers that will use it.
        layer_factory: makes one layer's cache (``LayerCache``; linear attention uses its
            recurrent ``LinearState``).
    """

    def __init__(self, n_layers: int, layer_factory: Callable[[], object] = LayerCache):
        self.layers = [layer_factory() for _ in range(n_layers)]

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        """Number of tokens already cached (positions of new tokens start here)."""
        return self.layers[0].length

    def length_after(self, t: int) -> int | None:
        """Tokens cached once ``t`` more are added (always known here; see :class:`StaticKVCache`)."""
        return self.length + t

    def place(self, batch: int, t: int, mask: Mask | None, score_mod: ScoreMod | None,
              attention_mask: torch.Tensor | None, device: torch.device | str) -> Placement:
        """Where ``t`` new tokens of ``batch`` rows go: after the cached ones (see :func:`place_tokens`)."""
        return place_tokens(self.length, batch, t, mask, score_mod, attention_mask, device)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` in every layer."""
        for layer in self.layers:
            layer.reorder(index)

    @property
    def joinable(self) -> bool:
        """Whether the cache can be padded, joined and trimmed along time (:meth:`join`,
        :meth:`drop_left`): True when it has layers and all are :class:`LayerCache` (keys and
        values), False for recurrent layers (linear attention's ``LinearState``)."""
        return bool(self.layers) and all(isinstance(layer, LayerCache) for layer in self.layers)

    @property
    def description(self) -> str:
        """What the cache holds, for messages: ``"KVCache of LayerCache layers"``, ``"empty KVCache"``."""
        return f"KVCache of {type(self.layers[0]).__name__} layers" if self.layers else "empty KVCache"

    def _check_joinable(self, what: str) -> None:
        if not self.joinable:
            raise ValueError(f"{what} needs a KVCache of LayerCache layers, got a {self.description}")

    def join(self, other: KVCache, width: int | None = None) -> None:
        """Append ``other``'s batch rows to this cache's, in place (iteration-level batching).

        Every layer of both caches is left-padded with zeros to ``width`` time steps, then
        the two are concatenated along the batch: (N, Hkv, T, D) and (n, Hkv, t, D) become
        (N + n, Hkv, width, D). The padding must be hidden by the joined batch's padding
        mask. ``other`` is left unchanged.

        Args:
            other: a joinable cache with as many layers (same heads, head dim, dtype, device).
            width: time steps afterwards; default: the longest layer of the two caches.

        Raises:
            ValueError: either cache is not :attr:`joinable`, the layer counts differ, a layer
                is empty (not prefilled) or ``width`` is shorter than a cache.
        """
        self._check_joinable("join()")
        other._check_joinable("join()")
        if len(other) != len(self):
            raise ValueError(f"join() needs caches with the same number of layers, got {len(self)} and {len(other)}")
        if width is None:
            width = max(layer.length for cache in (self, other) for layer in cache.layers)
        padded = [(mine.padded_left(width), theirs.padded_left(width))  # checks every layer before changing any
                  for mine, theirs in zip(self.layers, other.layers, strict=False)]
        for layer, ((k, v), (k2, v2)) in zip(self.layers, padded, strict=False):
            layer.k, layer.v = torch.cat((k, k2)), torch.cat((v, v2))  # (N + n, Hkv, W, D)

    def drop_left(self, n: int) -> None:
        """Drop the first ``n`` time steps of every layer, in place (columns no row attends to).

        Args:
            n: steps to drop, from 0 to the cached length.

        Raises:
            ValueError: the cache is not :attr:`joinable` or holds fewer than ``n`` steps.
        """
        self._check_joinable("drop_left()")
        for layer in self.layers:
            layer.drop_left(n)

    def nbytes(self) -> int:
        """Memory held by the cached tensors."""
        return sum(layer.nbytes() for layer in self.layers)


class StaticLayerCache:
    """One layer's preallocated keys and values: (B, Hkv, Tmax, D) buffers written in place.

    The slots to write are those :meth:`StaticKVCache.place` reserved for the current
    forward pass; :meth:`append` returns the whole buffers (unwritten slots are masked).
    """

    def __init__(self, owner: StaticKVCache, shape: tuple[int, int, int, int], dtype: torch.dtype,
                 device: torch.device | str):
        self.owner = owner
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (B, Hkv, Tmax, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        for buf in (self.k, self.v):  # same address every step: CUDA graphs need no copy
            torch._dynamo.mark_static_address(buf)

    @property
    def length(self) -> int:
        return self.owner.length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, Hkv, Tnew, D) keys/values at the reserved slots; return the (B, Hkv, Tmax, D) buffers."""
        slots = self.owner.slots  # (Tnew,) device tensor
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v

    def nbytes(self) -> int:
        """Memory held by the buffers (all of it, written or not)."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v))


class StaticKVCache:
    """A preallocated KV cache whose write offset lives on the device (for compiled decoding).

    Every forward pass sees keys over all ``max_len`` slots; :meth:`place` reserves the next
    ``t`` slots, advances the offset in place and gives the model a mask that allows only
    written slots (and real tokens, after a padded prefill), evaluated at absolute slot
    positions. Nothing in a step reads the offset back to the host, so a decode step has
    static shapes and no host sync: ``torch.compile`` builds it once and CUDA graphs can
    replay it. Build one with :meth:`~attnlab.models.DecoderLM.make_static_cache`.

    Args:
        n_layers: attention layers.
        batch_size: B, fixed.
        n_kv_head: key/value heads per layer.
        max_len: Tmax, slots per row (prompt + generated tokens).
        head_dim: D.
        dtype: buffer dtype (the model's).
        device: buffer device.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"a static cache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # next free slot
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)  # (B, Tmax) real tokens
        self.slots = torch.zeros(0, dtype=torch.long, device=device)  # (T,) slots of the current forward
        for buf in (self.pos, self.valid):
            torch._dynamo.mark_static_address(buf)
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.layers = [StaticLayerCache(self, shape, dtype, device) for _ in range(n_layers)]

    def __getitem__(self, i: int) -> StaticLayerCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        """Slots written so far (reads the device offset: a host sync)."""
        return int(self.pos)

    @property
    def joinable(self) -> bool:
        """Always False: the buffers have a fixed batch and time axis (see :attr:`KVCache.joinable`)."""
        return False

    def length_after(self, t: int) -> int | None:
        """Slots written once ``t`` more are added; None while compiling (not known without a sync)."""
        return None if torch.compiler.is_compiling() else self.length + t

    def reset(self) -> None:
        """Forget everything (the buffers are reused, not cleared: unwritten slots are masked)."""
        self.pos.zero_()
        self.valid.fill_(True)

    def place(self, batch: int, t: int, mask: Mask | None, score_mod: ScoreMod | None,
              attention_mask: torch.Tensor | None, device: torch.device | str) -> Placement:
        """Reserve the next ``t`` slots for new tokens and say how they attend.

        Args:
            batch: rows B (must be the cache's).
            t: new tokens.
            mask: the model's mask predicate (bottom-right aligned, as for a dynamic cache).
            score_mod: the model's score mod.
            attention_mask: (B, cached + t) 1/0 real-token mask (a left-padded prompt, given
                at prefill), or None: the new tokens are real.
            device: unused (positions live with the cache).

        Returns:
            (B, T) positions (each row counts its real tokens), a mask over the Tmax slots and
            the score mod, both seeing absolute slot positions.

        Raises:
            ValueError: (outside compilation) the tokens do not fit or the mask is malformed.
        """
        if not torch.compiler.is_compiling():
            if batch != self.batch_size:
                raise ValueError(f"static cache was built for batch_size={self.batch_size}, got {batch} rows")
            have = self.length
            if have + t > self.max_len:
                raise ValueError(f"static cache holds {self.max_len} tokens per row; {have} cached + {t} new do not "
                                 f"fit: build it with a larger max_len")
            if attention_mask is not None and tuple(attention_mask.shape) != (self.batch_size, have + t):
                raise ValueError(f"attention_mask must be (B, cached + T) = {(self.batch_size, have + t)}, "
                                 f"got {tuple(attention_mask.shape)}")
        slots = self.pos + torch.arange(t, device=self.pos.device)  # (T,)
        self.slots = slots
        if attention_mask is not None:
            self.valid[:, :attention_mask.shape[1]] = attention_mask.bool()
        self.pos.add_(t)
        positions = real_positions(self.valid).index_select(1, slots)  # (B, T)
        # The backends put query i at Tmax - t + i (bottom-right); it really sits at slots[i].
        shift = slots[0] - (self.max_len - t)  # 0-d
        return Placement(positions, self._mask(mask, shift, slots[-1] + 1), _shifted(score_mod, shift))

    def _mask(self, mask: Mask | None, shift: torch.Tensor, end: torch.Tensor) -> Mask:
        """``mask`` at absolute slots, restricted to written slots (< ``end``) of real tokens."""
        valid = self.valid
        inner = None if mask is None else mask.fn

        def fn(b, h, q, k):
            allowed = (k < end) & valid[b, k]
            return allowed if inner is None else allowed & inner(b, h, q + shift, k)

        kind = "full" if mask is None else mask.kind
        return Mask(fn, f"static({kind})", per_batch=True, per_head=mask is not None and mask.per_head, key=None)

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row ``index[i]`` (beam search); the batch size cannot change.

        Raises:
            ValueError: ``index`` does not have ``batch_size`` entries.
        """
        if index.numel() != self.batch_size:
            raise ValueError(f"a static cache keeps its {self.batch_size} rows; reorder got {index.numel()} indices "
                             "(use the dynamic KVCache to grow or shrink the batch)")
        for layer in self.layers:
            layer.k.copy_(layer.k.index_select(0, index))
            layer.v.copy_(layer.v.index_select(0, index))
        self.valid.copy_(self.valid.index_select(0, index))

    def nbytes(self) -> int:
        """Memory held by the buffers."""
        return sum(layer.nbytes() for layer in self.layers)


def _shifted(mod: ScoreMod | None, shift: torch.Tensor) -> ScoreMod | None:
    """``mod`` seeing query index ``q + shift`` (absolute slots under a static cache)."""
    if mod is None:
        return None
    fn = mod.fn
    return ScoreMod(lambda s, b, h, q, k: fn(s, b, h, q + shift, k), mod.kind, additive=mod.additive,
                    per_batch=mod.per_batch, key=None)
