"""Key/value caches for incremental decoding.

During generation each layer's keys and values for past tokens are kept, so a new
token costs one query against the cache instead of a full forward pass.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


class LayerCache:
    """Keys and values of one attention layer: (B, Hkv, T, D) each."""

    def __init__(self) -> None:
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

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

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` in every layer."""
        for layer in self.layers:
            layer.reorder(index)

    def nbytes(self) -> int:
        """Memory held by the cached tensors."""
        return sum(layer.nbytes() for layer in self.layers)
