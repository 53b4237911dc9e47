"""The dynamic KV cache owns its time axis: LayerCache.pad_left/padded_left/drop_left and
KVCache.join/drop_left/joinable pad, join and trim keys and values so that attention with a
padding mask sees exactly what each row saw alone; caches that cannot do it say so."""

import pytest
import torch

from attnlab.attention import KVCache, LayerCache, LinearState, StaticKVCache, attention
from attnlab.attention.masks import key_padding

HKV, D = 2, 4


def layer(batch: int, t: int, seed: int) -> LayerCache:
    """A layer cache holding random (batch, HKV, t, D) keys and values."""
    g = torch.Generator().manual_seed(seed)
    cache = LayerCache()
    cache.append(torch.randn(batch, HKV, t, D, generator=g, dtype=torch.float64),
                 torch.randn(batch, HKV, t, D, generator=g, dtype=torch.float64))
    return cache


def kv_cache(batch: int, t: int, n_layers: int = 2, seed: int = 0) -> KVCache:
    cache = KVCache(n_layers)
    cache.layers = [layer(batch, t, seed + i) for i in range(n_layers)]
    return cache


def test_pad_left_adds_zero_columns_in_front():
    c = layer(3, 4, 0)
    k, v = c.k, c.v
    c.pad_left(7)
    assert c.k.shape == c.v.shape == (3, HKV, 7, D) and c.length == 7
    assert torch.equal(c.k[..., 3:, :], k) and torch.equal(c.v[..., 3:, :], v)
    assert not c.k[..., :3, :].any() and not c.v[..., :3, :].any()
    c.pad_left(7)  # already that wide: unchanged
    assert c.length == 7


def test_padded_left_leaves_the_cache_alone():
    c = layer(1, 2, 0)
    k, v = c.padded_left(5)
    assert k.shape == v.shape == (1, HKV, 5, D) and c.length == 2


def test_pad_left_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="width must be >= its length"):
        layer(1, 4, 0).pad_left(3)
    with pytest.raises(ValueError, match="empty layer cache"):
        LayerCache().pad_left(2)


def test_drop_left_keeps_the_last_columns():
    c = layer(2, 5, 0)
    k, v = c.k, c.v
    c.drop_left(2)
    assert torch.equal(c.k, k[..., 2:, :]) and torch.equal(c.v, v[..., 2:, :])
    c.drop_left(0)
    assert c.length == 3
    for n in (-1, 4):
        with pytest.raises(ValueError, match="drop 0 to 3"):
            c.drop_left(n)


def test_joinable_only_for_a_dynamic_cache_of_layer_caches():
    assert KVCache(2).joinable and kv_cache(1, 3).joinable
    assert not KVCache(0).joinable
    assert not KVCache(2, LinearState).joinable
    assert not StaticKVCache(2, 1, HKV, 8, D).joinable


def test_join_pads_both_and_stacks_the_rows():
    a, b = kv_cache(2, 3, seed=0), kv_cache(1, 5, seed=10)
    before_a = [(x.k, x.v) for x in a.layers]
    before_b = [(x.k, x.v) for x in b.layers]
    a.join(b)
    assert a.length == 5 and b.length == 5  # ``b`` is unchanged
    for x, (k, v), (k2, v2), y in zip(a.layers, before_a, before_b, b.layers, strict=False):
        assert x.k.shape == x.v.shape == (3, HKV, 5, D)
        assert torch.equal(x.k[:2, :, 2:], k) and torch.equal(x.v[:2, :, 2:], v)
        assert not x.k[:2, :, :2].any() and not x.v[:2, :, :2].any()
        assert torch.equal(x.k[2:], k2) and torch.equal(x.v[2:], v2)
        assert y.k is k2 and y.v is v2


def test_join_to_an_explicit_width():
    a, b = kv_cache(1, 2), kv_cache(1, 3, seed=5)
    a.join(b, width=6)
    assert all(x.k.shape == (2, HKV, 6, D) for x in a.layers)
    with pytest.raises(ValueError, match="width must be >= its length"):
        kv_cache(1, 2).join(kv_cache(1, 3), width=2)


def test_join_and_drop_refuse_caches_they_cannot_pad():
    good = kv_cache(1, 2)
    linear = KVCache(2, LinearState)
    with pytest.raises(ValueError, match="KVCache of LinearState layers"):
        good.join(linear)
    with pytest.raises(ValueError, match="KVCache of LinearState layers"):
        linear.join(good)
    with pytest.raises(ValueError, match="KVCache of LinearState layers"):
        linear.drop_left(1)
    with pytest.raises(ValueError, match="same number of layers"):
        good.join(kv_cache(1, 2, n_layers=3))
    with pytest.raises(ValueError, match="empty layer cache"):
        good.join(KVCache(2))
    assert good.length == 2 and good[0].k.shape[0] == 1  # refusals change nothing


def test_joined_and_trimmed_rows_attend_as_alone():
    """With the padding masked, every row of a joined cache gets the attention it got alone, also
    after dropping columns that are padding for every row (the joined check can fail: see the
    unmasked case)."""
    a, b = kv_cache(1, 3, n_layers=1, seed=0), kv_cache(2, 6, n_layers=1, seed=3)
    q = torch.randn(3, 4, 1, D, dtype=torch.float64, generator=torch.Generator().manual_seed(9))  # (N, H, 1, D)
    alone = [attention(q[:1], a[0].k, a[0].v, backend="eager"),
             attention(q[1:], b[0].k, b[0].v, backend="eager")]  # (1, H, 1, D), (2, H, 1, D)
    a.join(b)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[0, :3] = False  # (N, W) the first row's padding
    joined = attention(q, a[0].k, a[0].v, mask=key_padding(valid), backend="eager")  # (N, H, 1, D)
    torch.testing.assert_close(joined, torch.cat(alone), atol=1e-12, rtol=0)
    unmasked = attention(q, a[0].k, a[0].v, backend="eager")
    assert not torch.allclose(unmasked[0], alone[0][0], atol=1e-3)
    keep = torch.tensor([0])  # the wide rows leave: three columns are padding for every row left
    a.reorder(keep)
    a.drop_left(3)
    assert a.length == 3
    torch.testing.assert_close(attention(q[:1], a[0].k, a[0].v, backend="eager"), alone[0], atol=1e-12, rtol=0)
