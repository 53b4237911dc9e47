"""Score modifications: changes to the attention scores before the softmax.

A :class:`ScoreMod` maps ``(score, b, h, q_idx, kv_idx) -> new score`` with the same
broadcastable index tensors as :class:`~attnlab.attention.masks.Mask` (FlexAttention's
``score_mod`` convention). Position schemes that bias the scores (ALiBi, T5 relative
bias) and tricks like soft-capping are score mods. One definition, several executions:

- eager applies it to the dense score matrix;
- SDPA can only add a tensor, so an *additive* mod is materialised as a dense bias
  (``dense_bias``); a non-additive one (soft-capping) is not supported there;
- Flex passes the function itself as ``score_mod``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ScoreMod:
    """A function ``(score, b, h, q_idx, kv_idx) -> score``.

    Args:
        fn: the function; index tensors broadcast against ``score``.
        kind: short name (``"alibi"``, ``"relative_bias"``, ``"softcap"``; chains join with ``+``).
        additive: True when ``fn(s, ...) == s + g(b, h, q, kv)`` (then SDPA can run it as a bias).
        per_batch: whether it depends on ``b``.
        key: hashable identity used to cache compiled kernels (defaults to ``kind``).
    """

    def __init__(self, fn: ScoreFn, kind: str, *, additive: bool, per_batch: bool = False,
                 key: Hashable | None = None):
        self.fn = fn
        self.kind = kind
        self.additive = additive
        self.per_batch = per_batch
        self.key = key if key is not None else kind

    def __call__(self, score, b, h, q_idx, kv_idx):
        return self.fn(score, b, h, q_idx, kv_idx)

    def then(self, other: ScoreMod) -> ScoreMod:
        """Apply ``self``, then ``other``."""
        return ScoreMod(
            lambda s, b, h, q, k: other.fn(self.fn(s, b, h, q, k), b, h, q, k),
            f"{self.kind}+{other.kind}",
            additive=self.additive and other.additive,
            per_batch=self.per_batch or other.per_batch,
            key=(self.key, other.key),
        )

    def __repr__(self) -> str:
        return f"ScoreMod({self.kind})"

    @staticmethod
    def _indices(batch: int, heads: int, tq: int, tk: int, device) -> tuple[torch.Tensor, ...]:
        b = torch.arange(batch, device=device).view(batch, 1, 1, 1)
        h = torch.arange(heads, device=device).view(1, heads, 1, 1)
        q = torch.arange(tk - tq, tk, device=device).view(1, 1, tq, 1)  # bottom-right aligned
        k = torch.arange(tk, device=device).view(1, 1, 1, tk)
        return b, h, q, k

    def apply_dense(self, scores: torch.Tensor) -> torch.Tensor:
        """Apply to a dense (B, H, Tq, Tk) score tensor (the eager path)."""
        bsz, heads, tq, tk = scores.shape
        return self.fn(scores, *self._indices(bsz, heads, tq, tk, scores.device))

    def dense_bias(self, batch: int, heads: int, tq: int, tk: int, device, dtype) -> torch.Tensor:
        """The additive bias as a (B|1, H, Tq, Tk) tensor (for SDPA).

        Raises:
            ValueError: when the mod is not additive.
        """
        if not self.additive:
            raise ValueError(f"score mod '{self.kind}' is not additive and cannot become a bias tensor")
        nb = batch if self.per_batch else 1
        # Computed in float32 at least (float64 stays float64), then cast.
        zero = torch.zeros((), device=device, dtype=torch.promote_types(dtype, torch.float32))
        out = self.fn(zero, *self._indices(nb, heads, tq, tk, device))
        return out.expand(nb, heads, tq, tk).to(dtype)


def softcap(cap: float) -> ScoreMod:
    """Soft-capping ``cap · tanh(score / cap)`` (Gemma 2, Grok): bounds the logits smoothly."""
    if cap <= 0:
        raise ValueError(f"softcap needs cap > 0, got {cap}")
    return ScoreMod(lambda s, b, h, q, k: cap * torch.tanh(s / cap), "softcap", additive=False, key=("softcap", cap))


def alibi(slopes: torch.Tensor, *, symmetric: bool = False) -> ScoreMod:
    """ALiBi (Press et al. 2022): head h adds ``-slopes[h] · (q_idx - kv_idx)`` to its scores.

    Args:
        slopes: (H,) per-head slopes, e.g. :func:`~attnlab.attention.positions.alibi_slopes`.
        symmetric: use the distance ``|q_idx - kv_idx|`` (for bidirectional attention);
            the default is the causal form, meant to be used with a causal mask.
    """
    if slopes.dim() != 1:
        raise ValueError(f"alibi needs a 1-D tensor of per-head slopes, got shape {tuple(slopes.shape)}")

    def fn(s, b, h, q, k):
        dist = (q - k).abs() if symmetric else q - k  # (.., Tq, Tk)
        return s - slopes.to(s.dtype)[h] * dist.to(s.dtype)

    return ScoreMod(fn, "alibi", additive=True, key=("alibi", slopes.numel(), symmetric))
