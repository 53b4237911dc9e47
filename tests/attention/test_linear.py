"""Linear attention: chunked == quadratic == a plain loop, gradients, GQA, the module and its state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import causal, padding
from attnlab.attention.cache import LayerCache
from attnlab.attention.linear import (
    LinearAttention,
    LinearState,
    elu_plus_one,
    linear_attention,
    linear_attention_quadratic,
    relu_features,
)
from attnlab.attention.masks import sliding_window
from attnlab.attention.positions import RotaryPositions


def loop_reference(q, k, v, *, causal, phi=lambda x: F.elu(x) + 1, eps=1e-6):
    """Katharopoulos et al. eq. (2)/(3) one query at a time, float64, written from the paper."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, tq, _ = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.zeros(b, h, tq, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // hkv)
            for i in range(tq):
                pos = tk - tq + i
                fq = phi(q[bi, hi, i])
                num = torch.zeros(v.shape[-1], dtype=torch.float64)
                den = torch.zeros((), dtype=torch.float64)
                for j in range(tk):
                    if causal and j > pos:
                        continue
                    w = fq @ phi(k[bi, kh, j])
                    num += w * v[bi, kh, j]
                    den += w
                out[bi, hi, i] = num / (den + eps)
    return out


def qkv(b=2, h=4, hkv=2, tq=13, tk=13, d=6, dv=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, tq, d, generator=g, dtype=dtype), torch.randn(b, hkv, tk, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, tk, dv, generator=g, dtype=dtype))


@pytest.mark.parametrize("causal_", [False, True])
@pytest.mark.parametrize("tq,tk", [(5, 5), (2, 5)])
def test_quadratic_reference_matches_loop(causal_, tq, tk):
    q, k, v = qkv(b=1, h=2, hkv=1, tq=tq, tk=tk)
    want = loop_reference(q, k, v, causal=causal_)
    assert torch.allclose(linear_attention_quadratic(q, k, v, causal=causal_), want, atol=1e-12)
    assert torch.allclose(linear_attention(q, k, v, causal=causal_, chunk_size=2), want, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 3, 4, 8, 13, 64, None])
@pytest.mark.parametrize("h,hkv", [(4, 4), (4, 2), (4, 1)])
def test_causal_chunked_matches_quadratic(chunk, h, hkv):
    q, k, v = qkv(h=h, hkv=hkv, tq=13, tk=13)  # 13 is divisible by none of the chunk sizes but 1 and 13
    want = linear_attention_quadratic(q, k, v, causal=True)
    got = linear_attention(q, k, v, causal=True, chunk_size=chunk)
    assert got.shape == (2, h, 13, 5)
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_causal_fewer_queries_than_keys_is_bottom_right(chunk):
    q, k, v = qkv(tq=5, tk=11)
    want = linear_attention_quadratic(q, k, v, causal=True)
    assert torch.allclose(linear_attention(q, k, v, causal=True, chunk_size=chunk), want, atol=1e-12)
    full_q = torch.cat((torch.randn(2, 4, 6, 6, dtype=torch.float64), q), dim=2)  # same queries at the end
    assert torch.allclose(linear_attention(full_q, k, v, causal=True)[:, :, -5:], want, atol=1e-12)


@pytest.mark.parametrize("tq,tk", [(7, 7), (3, 10), (10, 4)])
def test_noncausal_matches_quadratic(tq, tk):
    q, k, v = qkv(tq=tq, tk=tk)
    want = linear_attention_quadratic(q, k, v, causal=False)
    assert torch.allclose(linear_attention(q, k, v, causal=False), want, atol=1e-12)


def test_feature_map_is_pluggable():
    q, k, v = qkv()
    both = lambda x: torch.cat((F.relu(x), F.relu(-x)), dim=-1)  # noqa: E731  F = 2·D features
    for phi in (relu_features, both, lambda x: x.exp()):
        want = loop_reference(q[:1, :2], k[:1, :1], v[:1, :1], causal=True, phi=phi)
        got = linear_attention(q[:1, :2], k[:1, :1], v[:1, :1], causal=True, feature_map=phi, chunk_size=4)
        assert torch.allclose(got, want, atol=1e-10)
    assert not torch.allclose(linear_attention(q, k, v, causal=True, feature_map=relu_features),
                              linear_attention(q, k, v, causal=True, feature_map=elu_plus_one))


@pytest.mark.parametrize("causal_", [False, True])
def test_gradients_match_quadratic(causal_):
    tensors = qkv(tq=11, tk=11)
    grads = []
    for fn in (lambda *t: linear_attention(*t, causal=causal_, chunk_size=4),
               lambda *t: linear_attention_quadratic(*t, causal=causal_)):
        leaves = [t.clone().requires_grad_() for t in tensors]
        out = fn(*leaves)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_half_precision_accumulates_in_float32():
    """bf16 in and out, sums in float32: each output is the exact answer rounded once to bf16.

    The reference applies φ in the input dtype (as the kernel does) and sums in float64, so the
    only error left in a float32-accumulating kernel is the final rounding (<= 0.51 ulp measured);
    accumulating in bf16 is off by hundreds of ulps.
    """
    q, k, v = (t.bfloat16() for t in qkv(tq=64, tk=64, dtype=torch.float32))
    got = linear_attention(q, k, v, causal=True, chunk_size=16)
    assert got.dtype == torch.bfloat16
    phq = elu_plus_one(q).double()  # (B, H, T, F): φ in bf16, like the kernel
    phk = elu_plus_one(k).double().repeat_interleave(2, dim=1)  # (B, H, T, F)
    a = (phq @ phk.transpose(-2, -1)).tril()  # (B, H, T, T) causal weights
    exact = (a @ v.double().repeat_interleave(2, dim=1)) / (a.sum(-1, keepdim=True) + 1e-6)  # (B, H, T, Dv)
    ulp = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 7)  # bf16 spacing at each value
    err_ulps = ((got.double() - exact).abs() / ulp).max().item()
    assert err_ulps <= 0.75, f"bf16 output is {err_ulps:.1f} ulp from the exact answer: not accumulated in float32?"


def test_functional_rejects_bad_shapes():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="multiple"):
        linear_attention(q[:, :3], k, v, causal=True)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        linear_attention(*qkv(tq=6, tk=4), causal=True)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, causal=True, chunk_size=0)


# -- the module ----------------------------------------------------------------------


def make_layer(seed=0, **kw):
    torch.manual_seed(seed)
    return LinearAttention(32, 4, 2, **kw).double()


def test_module_full_pass_matches_loop_reference():
    layer = make_layer()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    heads = lambda t, n: t.view(2, 9, n, 8).transpose(1, 2)  # noqa: E731
    q, k, v = heads(layer.q_proj(x), 4), heads(layer.k_proj(x), 2), heads(layer.v_proj(x), 2)
    for mask, causal_ in ((causal(), True), (None, False)):
        att = loop_reference(q, k, v, causal=causal_)
        want = layer.o_proj(att.transpose(1, 2).reshape(2, 9, 32))
        assert torch.allclose(layer(x, mask=mask), want, atol=1e-10), mask


@pytest.mark.parametrize("with_rotary", [False, True])
def test_decode_with_state_equals_full_pass(with_rotary):
    layer = make_layer(chunk_size=4)
    rope = RotaryPositions(64, 8).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)

    def rot(start, n):
        return rope.rotary(torch.arange(start, start + n)) if with_rotary else None

    full = layer(x, mask=causal(), rotary=rot(0, 11))
    state = LinearState()
    parts = [layer(x[:, :5], mask=causal(), rotary=rot(0, 5), cache=state)]  # prefill
    assert state.length == 5
    nbytes = state.nbytes()
    for t in range(5, 11):  # then token by token
        parts.append(layer(x[:, t:t + 1], mask=causal(), rotary=rot(t, 1), cache=state))
    assert state.length == 11 and state.nbytes() == nbytes  # constant-size state
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-10)


def test_state_reorder_keeps_rows():
    layer = make_layer()
    x = torch.randn(3, 6, 32, dtype=torch.float64)
    state = LinearState()
    layer(x[:, :5], mask=causal(), cache=state)
    state.reorder(torch.tensor([2, 0]))
    out = layer(x[[2, 0], 5:], mask=causal(), cache=state)
    assert torch.allclose(out, layer(x[[2, 0]], mask=causal())[:, 5:], atol=1e-10)


def test_cross_attention_state_is_computed_once():
    layer = make_layer()
    x, ctx = torch.randn(2, 4, 32, dtype=torch.float64), torch.randn(2, 7, 32, dtype=torch.float64)
    want = layer(x, ctx)
    state = LinearState()
    assert torch.allclose(layer(x[:, :2], ctx, cache=state), want[:, :2], atol=1e-10)
    assert state.length == 7
    # the context is not read again: a different one passed now must not change the result
    assert torch.allclose(layer(x[:, 2:], torch.zeros_like(ctx), cache=state), want[:, 2:], atol=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(bias=torch.zeros(1)), "bias"),
    (dict(score_mod=object()), "score_mod"),
    (dict(topk=2), "topk"),
    (dict(return_weights=True), "return_weights"),
    (dict(mask=sliding_window(3)), "sliding_window"),
    (dict(mask=padding(torch.tensor([2, 3]))), "padding"),
    (dict(mask=torch.ones(4, 4, dtype=torch.bool)), "dense tensor"),
    (dict(mask=causal(), cache=LayerCache()), "LinearState"),
    (dict(cache=LinearState()), "causal"),
])
def test_module_rejects_what_it_cannot_compute(kwargs, match):
    layer = make_layer()
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(2, 4, 32, dtype=torch.float64), **kwargs)


def test_module_constructor_validation():
    with pytest.raises(ValueError, match="dropout"):
        LinearAttention(32, 4, dropout=0.1)
    with pytest.raises(ValueError, match="backend"):
        LinearAttention(32, 4, backend="sdpa")
    with pytest.raises(ValueError, match="feature map"):
        LinearAttention(32, 4, feature_map="softmax")
    assert LinearAttention(32, 4, feature_map="relu").feature_map is relu_features


def test_module_trains():
    layer = LinearAttention(16, 2)
    x = torch.randn(4, 10, 16)
    out = layer(x, mask=causal())
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
