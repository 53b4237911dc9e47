"""MultiHeadAttention against a manual computation, and the KV caches."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import KVCache, LayerCache, MultiHeadAttention, RotaryPositions, causal, key_padding


def split_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, w = x.shape
    return x.reshape(b, t, n, w // n).permute(0, 2, 1, 3)  # (B, n, T, hd)


def manual(layer: MultiHeadAttention, reference, x, context=None, allowed=None, rotary=None, bias=None):
    """The module's forward written out with its own weights and the float64 reference."""
    lin = lambda m, t: t.double() @ m.weight.double().T + (m.bias.double() if m.bias is not None else 0)  # noqa: E731
    src = x if context is None else context
    q = split_heads(lin(layer.q_proj, x), layer.n_head)
    k = split_heads(lin(layer.k_proj, src), layer.n_kv_head)
    v = split_heads(lin(layer.v_proj, src), layer.n_kv_head)
    if rotary is not None:
        q, k = rotary(q, k)
    out, w = reference(q, k, v, allowed, bias)
    b, h, t, hd = out.shape
    return lin(layer.o_proj, out.permute(0, 2, 1, 3).reshape(b, t, h * hd)), w


def tril(tq, tk):
    return torch.tensor([[j <= tk - tq + i for j in range(tk)] for i in range(tq)])


@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
@pytest.mark.parametrize("n_head,n_kv_head", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_self_attention_matches_manual(n_head, n_kv_head, backend, reference):
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, n_head, n_kv_head, backend=backend).double()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    out = layer(x, mask=causal())
    want, _ = manual(layer, reference, x, allowed=tril(6, 6))
    assert out.shape == (2, 6, 32)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    # no mask → bidirectional, a different answer
    out_full = layer(x)
    want_full, _ = manual(layer, reference, x)
    torch.testing.assert_close(out_full, want_full, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out_full, out)


def test_self_attention_with_rope_and_bias_matches_manual(reference):
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, 2, bias=False).double()
    rope = RotaryPositions(16, 8)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    bias = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    rot = rope.rotary(torch.arange(5))
    out = layer(x, mask=causal(), rotary=rot, bias=bias)
    want, _ = manual(layer, reference, x, allowed=tril(5, 5), rotary=rot, bias=bias)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, layer(x, mask=causal(), bias=bias))  # RoPE did something


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_parameter_shapes(n_kv_head):
    layer = MultiHeadAttention(64, 4, n_kv_head)
    hd = 16
    assert layer.head_dim == hd and layer.n_kv_head == n_kv_head
    assert layer.q_proj.weight.shape == (4 * hd, 64)
    assert layer.k_proj.weight.shape == (n_kv_head * hd, 64)
    assert layer.v_proj.weight.shape == (n_kv_head * hd, 64)
    assert layer.k_proj.bias.shape == (n_kv_head * hd,)
    assert layer.o_proj.weight.shape == (64, 4 * hd)
    n = sum(p.numel() for p in layer.parameters())
    assert n == (64 * 64 + 64) * 2 + (64 * n_kv_head * hd + n_kv_head * hd) * 2


def test_no_bias_and_default_kv_heads():
    layer = MultiHeadAttention(32, 4, bias=False, d_context=12)
    assert layer.n_kv_head == 4
    assert all(m.bias is None for m in (layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj))
    assert layer.k_proj.weight.shape == (32, 12) and layer.v_proj.weight.shape == (32, 12)


@pytest.mark.parametrize("args", [(30, 4, None), (32, 4, 3)])
def test_bad_head_config_raises(args):
    with pytest.raises(ValueError):
        MultiHeadAttention(*args[:2], args[2])


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_cross_attention_matches_manual(backend, reference):
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, 2, d_context=20, backend=backend).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    ctx = torch.randn(2, 9, 20, dtype=torch.float64)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    out = layer(x, ctx, mask=key_padding(valid))
    want, _ = manual(layer, reference, x, context=ctx, allowed=valid.view(2, 1, 1, 9))
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    # padding in the context really is ignored: changing padded positions changes nothing
    ctx2 = ctx.clone()
    ctx2[1, 6:] = 100.0
    torch.testing.assert_close(layer(x, ctx2, mask=key_padding(valid)), out, rtol=1e-12, atol=1e-12)


# -- KV cache -----------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 2, 1]], ids=["token-by-token", "prefill+chunks"])
def test_kv_cache_incremental_equals_full_pass(chunks, backend, dtype, tol):
    torch.manual_seed(0)
    d, n_head, n_kv, t = 32, 4, 2, sum(chunks)
    layers = [MultiHeadAttention(d, n_head, n_kv, backend=backend).to(dtype) for _ in range(2)]
    rope = RotaryPositions(32, d // n_head)
    x = torch.randn(2, t, d, dtype=dtype)

    def stack(inp, rot, cache=None, mask=None):
        h = inp
        for i, layer in enumerate(layers):
            h = h + layer(h, mask=mask, rotary=rot, cache=None if cache is None else cache[i])
        return h

    full = stack(x, rope.rotary(torch.arange(t)), mask=causal())
    cache = KVCache(2)
    assert len(cache) == 2 and cache.length == 0
    outs, start = [], 0
    for n in chunks:
        pos = torch.arange(start, start + n)
        outs.append(stack(x[:, start:start + n], rope.rotary(pos), cache=cache, mask=causal()))
        start += n
        assert cache.length == start
        assert cache[0].k.shape == (2, n_kv, start, d // n_head)
    inc = torch.cat(outs, dim=1)
    torch.testing.assert_close(inc, full, rtol=tol, atol=tol)


def test_kv_cache_without_positions_is_wrong():
    # Guard against a vacuous parity test: decoding every step at position 0 must NOT match.
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4).double()
    rope = RotaryPositions(32, 8)
    x = torch.randn(1, 4, 32, dtype=torch.float64)
    full = layer(x, mask=causal(), rotary=rope.rotary(torch.arange(4)))
    cache = LayerCache()
    outs = [layer(x[:, i:i + 1], mask=causal(), rotary=rope.rotary(torch.tensor([0])), cache=cache) for i in range(4)]
    assert not torch.allclose(torch.cat(outs, 1), full)


def test_kv_cache_reorder_then_continue_matches_full_pass():
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, 2).double()
    rope = RotaryPositions(32, 8)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    index = torch.tensor([2, 0, 0])
    full = layer(x[index], mask=causal(), rotary=rope.rotary(torch.arange(5)))
    cache = KVCache(1)
    layer(x[:, :4], mask=causal(), rotary=rope.rotary(torch.arange(4)), cache=cache[0])
    cache.reorder(index)
    step = layer(x[index, 4:], mask=causal(), rotary=rope.rotary(torch.tensor([4])), cache=cache[0])
    torch.testing.assert_close(step, full[:, 4:], rtol=1e-10, atol=1e-10)


def test_cross_attention_cache_computes_context_once():
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, 2, d_context=20).double()
    calls = []
    layer.k_proj.register_forward_hook(lambda m, i, o: calls.append("k"))
    layer.v_proj.register_forward_hook(lambda m, i, o: calls.append("v"))
    ctx = torch.randn(2, 7, 20, dtype=torch.float64)
    other = torch.randn(2, 7, 20, dtype=torch.float64)
    x1, x2 = torch.randn(2, 1, 32, dtype=torch.float64), torch.randn(2, 1, 32, dtype=torch.float64)
    cache = LayerCache()
    o1 = layer(x1, ctx, cache=cache)
    assert calls == ["k", "v"] and cache.length == 7
    k_cached = cache.k
    # Documented: the context is projected once and then reused, so a second call with a
    # different context object still attends to the first context's keys/values.
    o2 = layer(x2, other, cache=cache)
    assert calls == ["k", "v"]
    assert cache.length == 7 and cache.k is k_cached  # not appended to
    calls.clear()
    torch.testing.assert_close(o1, layer(x1, ctx), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(o2, layer(x2, ctx), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(o2, layer(x2, other))


def test_layer_cache_append_and_length():
    c = LayerCache()
    assert c.length == 0 and c.k is None
    k1, v1 = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    k, v = c.append(k1, v1)
    assert torch.equal(k, k1) and torch.equal(v, v1) and c.length == 3
    k2, v2 = torch.randn(2, 1, 2, 4), torch.randn(2, 1, 2, 4)
    k, v = c.append(k2, v2)
    assert c.length == 5
    assert torch.equal(k, torch.cat([k1, k2], dim=2)) and torch.equal(v, torch.cat([v1, v2], dim=2))
    assert torch.equal(c.k, k) and torch.equal(c.v, v)


def test_kv_cache_reorder_and_nbytes():
    cache = KVCache(3)
    assert cache.nbytes() == 0 and cache.length == 0
    ks = [torch.arange(3 * 2 * 4 * 8, dtype=torch.float32).view(3, 2, 4, 8) + 1000 * i for i in range(2)]
    vs = [-k for k in ks]
    for i in range(2):  # layer 2 stays empty
        cache[i].append(ks[i], vs[i])
    assert cache.nbytes() == 2 * 2 * (3 * 2 * 4 * 8) * 4
    assert cache.length == 4  # read from the first layer
    cache[2].append(ks[0].double()[:, :1], vs[0].double()[:, :1])
    assert cache.nbytes() == 2 * 2 * (3 * 2 * 4 * 8) * 4 + 2 * (3 * 1 * 4 * 8) * 8
    index = torch.tensor([2, 0])
    cache.reorder(index)
    for i in range(2):
        assert torch.equal(cache[i].k, ks[i][index]) and torch.equal(cache[i].v, vs[i][index])
    assert cache[2].k.shape[0] == 2
    assert cache.length == 4
    assert cache.nbytes() == 2 * 2 * (2 * 2 * 4 * 8) * 4 + 2 * (2 * 1 * 4 * 8) * 8
    LayerCache().reorder(index)  # reordering an empty layer is a no-op, not an error


# -- weights and dropout through the module --------------------------------------


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_module_return_weights(backend, reference):
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, 2, backend=backend).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    out, w = layer(x, mask=causal(), return_weights=True)
    want, want_w = manual(layer, reference, x, allowed=tril(5, 5))
    assert w.shape == (2, 4, 5, 5)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w, want_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, layer(x, mask=causal()), rtol=1e-12, atol=1e-12)


def test_module_return_weights_with_sdpa_raises():
    layer = MultiHeadAttention(32, 4, backend="sdpa")
    with pytest.raises(ValueError, match="weights"):
        layer(torch.randn(1, 3, 32), return_weights=True)


def test_module_dropout_only_in_training(reference):
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, dropout=0.5).double()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    want, _ = manual(layer, reference, x, allowed=tril(6, 6))
    layer.eval()
    torch.testing.assert_close(layer(x, mask=causal()), want, rtol=1e-10, atol=1e-10)
    layer.train()
    torch.manual_seed(1)
    a = layer(x, mask=causal())
    torch.manual_seed(1)
    b = layer(x, mask=causal())
    assert not torch.allclose(a, want, atol=1e-6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_module_gradients_flow_to_all_projections():
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, 2, d_context=16)
    x, ctx = torch.randn(2, 3, 32), torch.randn(2, 5, 16)
    layer(x, ctx).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
