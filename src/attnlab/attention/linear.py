"""Linear attention (Katharopoulos et al., 2020): softmax replaced by a kernel feature map.

With a feature map φ ≥ 0, attention becomes

    out_i = φ(q_i)ᵀ S_i / (φ(q_i)ᵀ z_i + eps),   S_i = Σ_j φ(k_j) v_jᵀ,   z_i = Σ_j φ(k_j)

where the sums run over all keys (non-causal) or keys ``j <= i`` (causal). Because the
sums do not depend on the query, the cost is O(T · F · Dv) instead of O(T²).

- Non-causal: one (F, Dv) state per head, shared by every query.
- Causal, chunked: the sequence is cut into chunks of ``chunk_size``; inside a chunk the
  exact quadratic form with a causal mask is used, across chunks a running (prefix-summed)
  state. Memory is O(T·C + T·F·Dv / C) per head instead of O(T²).
- Decoding: :class:`LinearState` carries (S, z) from step to step, so a token costs O(F·Dv)
  regardless of how many came before — linear attention is an RNN.

:func:`linear_attention_quadratic` materialises the (Tq, Tk) weight matrix; it is the
readable reference the chunked form is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnlab.attention.backends.dense import compute_dtype
from attnlab.attention.functional import check_qkv
from attnlab.attention.masks import Mask, is_kind
from attnlab.attention.positions import Rotary
from attnlab.attention.projections import HeadProjections

FeatureMap = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_CHUNK = 64


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1 > 0, the feature map of Katharopoulos et al."""
    return F.elu(x) + 1.0


def relu_features(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = relu(x) ≥ 0 (rows can be all zero; ``eps`` keeps the division finite)."""
    return F.relu(x)


FEATURE_MAPS: dict[str, FeatureMap] = {"elu+1": elu_plus_one, "relu": relu_features}


def _resolve_feature_map(feature_map: str | FeatureMap) -> FeatureMap:
    if isinstance(feature_map, str):
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map '{feature_map}'; choose one of {', '.join(FEATURE_MAPS)} "
                             "or pass a callable")
        return FEATURE_MAPS[feature_map]
    return feature_map


class LinearState:
    """The recurrent state of one linear-attention layer (its "KV cache").

    Attributes:
        S: (B, Hkv, F, Dv) running Σ φ(k) vᵀ, or None before the first step.
        z: (B, Hkv, F) running Σ φ(k), or None.
    """

    def __init__(self) -> None:
        self.S: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self._length = 0

    @property
    def length(self) -> int:
        """Number of tokens folded into the state (positions of new tokens start here)."""
        return self._length

    def update(self, S: torch.Tensor, z: torch.Tensor, n_new: int) -> None:
        """Replace the state after ``n_new`` more tokens."""
        self.S, self.z = S, z
        self._length += n_new

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (e.g. surviving beams)."""
        if self.S is not None:
            self.S, self.z = self.S[index], self.z[index]

    def nbytes(self) -> int:
        """Memory held by the state: constant in the sequence length."""
        return sum(t.numel() * t.element_size() for t in (self.S, self.z) if t is not None)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    check_qkv(q, k, v)
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq positions), "
                         f"got {q.shape[2]} > {k.shape[2]}")


def _kv_sums(phk: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Hkv, T, F), (B, Hkv, T, Dv) → S (B, Hkv, F, Dv), z (B, Hkv, F)."""
    return phk.transpose(-2, -1) @ v, phk.sum(-2)


def _causal_chunked(
    phq: torch.Tensor, phk: torch.Tensor, v: torch.Tensor, chunk: int,
    S0: torch.Tensor | None, z0: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal numerator/denominator by chunks, starting from state (S0, z0).

    Args:
        phq: (B, Hkv, G, T, F) query features, G query heads per kv head.
        phk: (B, Hkv, T, F) key features; v: (B, Hkv, T, Dv).

    Returns:
        ``(num (B, Hkv, G, T, Dv), den (B, Hkv, G, T), S_end, z_end)``.
    """
    b, hkv, g, t, f = phq.shape
    dv = v.shape[-1]
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:  # zero keys after the end contribute nothing; padded query rows are dropped
        phq = F.pad(phq, (0, 0, 0, pad))
        phk = F.pad(phk, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
    qc = phq.reshape(b, hkv, g, n, chunk, f)  # (B, Hkv, G, N, C, F)
    kc = phk.reshape(b, hkv, n, chunk, f)  # (B, Hkv, N, C, F)
    vc = v.reshape(b, hkv, n, chunk, dv)  # (B, Hkv, N, C, Dv)
    # Within a chunk: the exact quadratic form under a causal mask.
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=phq.device).tril()
    a = torch.einsum("bhgncf,bhnmf->bhgncm", qc, kc).masked_fill(~tril, 0.0)  # (B, Hkv, G, N, C, C)
    num = torch.einsum("bhgncm,bhnmd->bhgncd", a, vc)  # (B, Hkv, G, N, C, Dv)
    den = a.sum(-1)  # (B, Hkv, G, N, C)
    # Across chunks: the state summed over all earlier chunks (exclusive prefix sum).
    s_chunk = torch.einsum("bhncf,bhncd->bhnfd", kc, vc)  # (B, Hkv, N, F, Dv)
    z_chunk = kc.sum(-2)  # (B, Hkv, N, F)
    s_incl, z_incl = s_chunk.cumsum(2), z_chunk.cumsum(2)
    s_prev = torch.cat((torch.zeros_like(s_incl[:, :, :1]), s_incl[:, :, :-1]), dim=2)
    z_prev = torch.cat((torch.zeros_like(z_incl[:, :, :1]), z_incl[:, :, :-1]), dim=2)
    s_end, z_end = s_incl[:, :, -1], z_incl[:, :, -1]  # (B, Hkv, F, Dv), (B, Hkv, F)
    if S0 is not None:
        s_prev = s_prev + S0.unsqueeze(2)
        z_prev = z_prev + z0.unsqueeze(2)
        s_end, z_end = s_end + S0, z_end + z0
    num = num + torch.einsum("bhgncf,bhnfd->bhgncd", qc, s_prev)
    den = den + torch.einsum("bhgncf,bhnf->bhgnc", qc, z_prev)
    num = num.reshape(b, hkv, g, n * chunk, dv)[..., :t, :]
    den = den.reshape(b, hkv, g, n * chunk)[..., :t]
    return num, den, s_end, z_end


def _linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, feature_map: FeatureMap,
    chunk_size: int | None, eps: float,
    S0: torch.Tensor | None = None, z0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`linear_attention` that also takes and returns the state (S, z)."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, h, tq, _ = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    work = compute_dtype(q.dtype)
    phq = feature_map(q).to(work)  # (B, H, Tq, F)
    phk = feature_map(k).to(work)  # (B, Hkv, Tk, F)
    vw = v.to(work)
    phq = phq.reshape(b, hkv, h // hkv, tq, phq.shape[-1])  # (B, Hkv, G, Tq, F): head h reads kv head h // G
    if not causal:
        S, z = _kv_sums(phk, vw)
        if S0 is not None:
            S, z = S + S0, z + z0
        num = phq @ S.unsqueeze(2)  # (B, Hkv, G, Tq, Dv)
        den = (phq @ z.unsqueeze(2).unsqueeze(-1)).squeeze(-1)  # (B, Hkv, G, Tq)
    else:
        if tk > tq:  # the first Tk - Tq keys precede every query: fold them into the state
            S, z = _kv_sums(phk[:, :, : tk - tq], vw[:, :, : tk - tq])
            S0, z0 = (S, z) if S0 is None else (S0 + S, z0 + z)
            phk, vw = phk[:, :, tk - tq:], vw[:, :, tk - tq:]
        chunk = min(chunk_size or DEFAULT_CHUNK, tq)
        num, den, S, z = _causal_chunked(phq, phk, vw, chunk, S0, z0)
    out = num / (den.unsqueeze(-1) + eps)  # (B, Hkv, G, Tq, Dv)
    return out.reshape(b, h, tq, -1).to(q.dtype), S, z


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    feature_map: FeatureMap = elu_plus_one,
    chunk_size: int | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Linear attention φ(Q)(φ(K)ᵀV) / (φ(Q)Σφ(K) + eps), in O(T) memory.

    Args:
        q: (B, H, Tq, D) queries.
        k: (B, Hkv, Tk, D) keys; H must be a multiple of Hkv (GQA / MQA).
        v: (B, Hkv, Tk, Dv) values.
        causal: query i (at position Tk - Tq + i) sees only keys up to its position.
        feature_map: φ, applied to q and k (``(..., D) -> (..., F)``, non-negative).
        chunk_size: chunk length of the causal form (default 64); ignored when not causal.
        eps: added to the normaliser.

    Returns:
        (B, H, Tq, Dv).
    """
    _check(q, k, v, causal)
    return _linear_attention(q, k, v, causal=causal, feature_map=feature_map, chunk_size=chunk_size, eps=eps)[0]


def linear_attention_quadratic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    feature_map: FeatureMap = elu_plus_one,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The same function through the explicit (Tq, Tk) weight matrix: the readable reference.

    Weights are ``A_ij = φ(q_i)·φ(k_j)`` (zero where masked), output ``A v / (Σ_j A_ij + eps)``.
    Arguments and result as in :func:`linear_attention`; memory is O(Tq · Tk).
    """
    _check(q, k, v, causal)
    h, hkv = q.shape[1], k.shape[1]
    tq, tk = q.shape[2], k.shape[2]
    work = compute_dtype(q.dtype)
    phq = feature_map(q).to(work)  # (B, H, Tq, F)
    phk = feature_map(k).to(work).repeat_interleave(h // hkv, dim=1)  # (B, H, Tk, F)
    vw = v.to(work).repeat_interleave(h // hkv, dim=1)  # (B, H, Tk, Dv)
    a = phq @ phk.transpose(-2, -1)  # (B, H, Tq, Tk)
    if causal:
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        a = a.masked_fill(~allowed, 0.0)
    out = (a @ vw) / (a.sum(-1, keepdim=True) + eps)  # (B, H, Tq, Dv)
    return out.to(q.dtype)


class LinearAttention(HeadProjections):
    """A drop-in replacement for :class:`~attnlab.attention.MultiHeadAttention` with linear cost.

    Same projections, heads and GQA grouping; the mixer is :func:`linear_attention`. Only
    two masks exist for it: ``None`` (bidirectional) and ``causal()``. Decoding keeps a
    :class:`LinearState` instead of keys and values.

    Args:
        d_model: input (and output) width.
        n_head: query heads.
        n_kv_head: key/value heads (default ``n_head``).
        d_context: width of the cross-attention context (default ``d_model``).
        bias: biases on the projections.
        dropout: must be 0: there is no weight matrix to drop from.
        backend: must be ``"auto"``: linear attention has its own kernel.
        feature_map: φ, a callable (an ``nn.Module`` is registered as a submodule) or a
            name from :data:`FEATURE_MAPS`.
        chunk_size: chunk length of the causal form.
        eps: added to the normaliser.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int | None = None,
        *,
        d_context: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        feature_map: str | FeatureMap = elu_plus_one,
        chunk_size: int = DEFAULT_CHUNK,
        eps: float = 1e-6,
    ):
        if dropout:
            raise ValueError(f"linear attention has no attention weights to drop out; pass dropout=0.0, got {dropout}")
        if backend != "auto":
            raise ValueError(f"linear attention runs its own kernel; pass backend='auto', got '{backend}'")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        super().__init__(d_model, n_head, n_kv_head, d_context=d_context, bias=bias)
        self.feature_map = _resolve_feature_map(feature_map)
        self.chunk_size, self.eps = chunk_size, eps

    @staticmethod
    def _validate(mask, bias, return_weights, score_mod, topk, context, rotary, cache) -> bool:
        """Validate the arguments MultiHeadAttention takes but linear attention cannot honour; return causal."""
        if bias is not None:
            raise ValueError("linear attention has no score matrix to add a bias to; pass bias=None")
        if score_mod is not None:
            raise ValueError("linear attention has no score matrix for a score_mod; pass score_mod=None")
        if topk is not None:
            raise ValueError("top-k needs the full score matrix, which linear attention never forms; pass topk=None")
        if return_weights:
            raise ValueError("linear attention does not form attention weights; pass return_weights=False "
                             "(linear_attention_quadratic shows them)")
        causal = is_kind(mask, "causal")
        if mask is not None and not causal:
            what = mask.kind if isinstance(mask, Mask) else "a dense tensor"
            raise ValueError(f"linear attention supports only mask=None or causal(), got {what}")
        if context is not None and (causal or rotary is not None):
            raise ValueError("cross attention in linear attention is bidirectional and unrotated; "
                             "pass mask=None, rotary=None")
        if cache is not None and not isinstance(cache, LinearState):
            raise ValueError(f"linear attention keeps a recurrent state, not keys/values: pass a LinearState, "
                             f"got {type(cache).__name__}")
        if cache is not None and context is None and not causal:
            raise ValueError("decoding with a LinearState needs mask=causal() (a bidirectional layer cannot decode)")
        return causal

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: Mask | torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        rotary: Rotary | None = None,
        cache: LinearState | None = None,
        return_weights: bool = False,
        score_mod=None,
        topk: int | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to itself (or to ``context``).

        Args:
            x: (B, Tq, d_model).
            context: (B, Tk, d_context) for (bidirectional) cross attention, else None.
            mask: None (bidirectional) or ``causal()``.
            bias, score_mod, topk, return_weights: not supported (ValueError); present so
                the signature matches :class:`~attnlab.attention.MultiHeadAttention`.
            rotary: RoPE rotation for this step's positions, applied to q and k before φ.
            cache: a :class:`LinearState`, updated in place. Self attention folds the new
                tokens into it; cross attention computes the context's state once.

        Returns:
            (B, Tq, d_model).
        """
        causal = self._validate(mask, bias, return_weights, score_mod, topk, context, rotary, cache)
        b, tq, _ = x.shape
        q = self.project_q(x)  # (B, H, Tq, D)
        S0 = z0 = None
        if cache is not None and cache.S is not None:
            S0, z0 = cache.S, cache.z
        if context is not None and S0 is not None:  # cross attention: context's state is cached
            phq = self.feature_map(q).to(compute_dtype(q.dtype))  # (B, H, Tq, F)
            phq = phq.reshape(b, self.n_kv_head, -1, tq, phq.shape[-1])  # (B, Hkv, G, Tq, F)
            num = phq @ S0.unsqueeze(2)  # (B, Hkv, G, Tq, Dv)
            den = phq @ z0.unsqueeze(2).unsqueeze(-1)  # (B, Hkv, G, Tq, 1)
            out = (num / (den + self.eps)).reshape(b, self.n_head, tq, -1).to(q.dtype)
        else:
            src = x if context is None else context
            k, v = self.project_kv(src)  # (B, Hkv, Tk, D)
            if rotary is not None:
                q, k = rotary(q, k)
            out, S, z = _linear_attention(q, k, v, causal=causal, feature_map=self.feature_map,
                                          chunk_size=self.chunk_size, eps=self.eps, S0=S0, z0=z0)
            if cache is not None:
                cache.update(S, z, k.shape[2])
        return self.project_out(out)  # (B, Tq, d_model)


__all__ = [
    "FEATURE_MAPS", "FeatureMap", "LinearAttention", "LinearState", "elu_plus_one",
    "linear_attention", "linear_attention_quadratic", "relu_features",
]
