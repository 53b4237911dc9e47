"""Sparse and local masks: semantics vs hand-built loops, composition, scalar / vmap evaluation, keys."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from attnlab.attention import attention
from attnlab.attention.masks import (
    Mask,
    adjacency,
    block_sparse,
    causal,
    document,
    full,
    key_padding,
    local_global,
    padding,
    prefix_lm,
    sliding_window,
    strided,
)


def hand(pred, tq: int, tk: int) -> torch.Tensor:
    """(Tq, Tk) bool from a plain-Python predicate on absolute positions (bottom-right aligned)."""
    return torch.tensor([[bool(pred(tk - tq + i, j)) for j in range(tk)] for i in range(tq)])


SHAPES = [(7, 7), (3, 9), (1, 6)]


@pytest.mark.parametrize("tq,tk", SHAPES)
@pytest.mark.parametrize("window", [1, 2, 3, 20])
def test_sliding_window_matches_loops(tq, tk, window):
    got_c = sliding_window(window).dense(1, 1, tq, tk, "cpu")[0, 0]
    got_b = sliding_window(window, causal=False).dense(1, 1, tq, tk, "cpu")[0, 0]
    assert torch.equal(got_c, hand(lambda q, k: 0 <= q - k < window, tq, tk))
    assert torch.equal(got_b, hand(lambda q, k: abs(q - k) < window, tq, tk))


def test_sliding_window_example_rows():
    d = sliding_window(2).dense(1, 1, 4, 4, "cpu")[0, 0].int().tolist()
    assert d == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


@pytest.mark.parametrize("tq,tk", SHAPES)
@pytest.mark.parametrize("causal_", [False, True])
def test_local_global_matches_loops(tq, tk, causal_):
    for glob, members in ((2, {0, 1}), ([4, 1], {1, 4}), (torch.tensor([8]), {8}), ([], set())):
        m = local_global(2, glob, causal=causal_)

        def pred(q, k, members=members):
            ok = abs(q - k) < 2 or q in members or k in members
            return ok and (k <= q or not causal_)

        assert torch.equal(m.dense(1, 1, tq, tk, "cpu")[0, 0], hand(pred, tq, tk)), glob


def test_local_global_tokens_attend_everywhere():
    d = local_global(1, [3]).dense(1, 1, 8, 8, "cpu")[0, 0]
    assert d[3].all() and d[:, 3].all()
    assert d.sum() == 8 + 7 + 7  # the diagonal, plus the rest of row 3 and of column 3


@pytest.mark.parametrize("tq,tk", [(8, 8), (3, 8), (10, 10)])
def test_block_sparse_matches_loops(tq, tk):
    layout = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    want = hand(lambda q, k: q // 2 < 4 and k // 2 < 4 and bool(layout[q // 2, k // 2]), tq, tk)
    assert torch.equal(block_sparse(layout, 2).dense(1, 1, tq, tk, "cpu")[0, 0], want)


def test_block_sparse_per_head():
    layout = torch.stack([torch.ones(3, 3).tril(), torch.eye(3)]).bool()  # (H=2, 3, 3)
    m = block_sparse(layout, 3)
    assert m.per_head and not m.per_batch
    d = m.dense(2, 2, 9, 9, "cpu")
    assert d.shape == (1, 2, 9, 9)
    for h in range(2):
        assert torch.equal(d[0, h], hand(lambda q, k, h=h: bool(layout[h, q // 3, k // 3]), 9, 9)), h


@pytest.mark.parametrize("stride", [1, 3, 4])
@pytest.mark.parametrize("local", [False, True])
def test_strided_matches_loops(stride, local):
    tq, tk = 6, 11
    d = strided(stride, local=local).dense(1, 1, tq, tk, "cpu")[0, 0]
    assert torch.equal(d, hand(lambda q, k: (q - k) % stride == 0 or (local and abs(q - k) < stride), tq, tk))
    dc = (strided(stride, local=local) & causal()).dense(1, 1, tq, tk, "cpu")[0, 0]
    assert torch.equal(dc, hand(lambda q, k: k <= q and ((q - k) % stride == 0 or (local and q - k < stride)), tq, tk))


@pytest.mark.parametrize("tq,tk", SHAPES)
def test_prefix_lm_matches_loops(tq, tk):
    for n in (0, 3, 9):
        got = prefix_lm(n).dense(2, 1, tq, tk, "cpu")
        assert got.shape == (1, 1, tq, tk)
        assert torch.equal(got[0, 0], hand(lambda q, k, n=n: k <= q or k < n, tq, tk)), n
    lengths = torch.tensor([2, 5])
    m = prefix_lm(lengths)
    assert m.per_batch
    got = m.dense(2, 3, tq, tk, "cpu")
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(got[b, 0], hand(lambda q, k, n=n: k <= q or k < n, tq, tk)), b


def test_prefix_lm_zero_is_causal_and_full_prefix_is_full():
    assert torch.equal(prefix_lm(0).dense(1, 1, 6, 6, "cpu"), causal().dense(1, 1, 6, 6, "cpu"))
    assert prefix_lm(6).dense(1, 1, 6, 6, "cpu").all()


def test_adjacency_matches_matrix():
    adj = torch.rand(5, 5) > 0.5
    assert torch.equal(adjacency(adj).dense(1, 1, 5, 5, "cpu")[0, 0], adj)
    adj3 = torch.rand(2, 5, 5) > 0.5
    d = adjacency(adj3).dense(2, 4, 5, 5, "cpu")
    assert d.shape == (2, 1, 5, 5) and torch.equal(d[:, 0], adj3)


def test_composition_with_new_masks_matches_tensor_logic():
    tq, tk = 5, 12
    sw = hand(lambda q, k: 0 <= q - k < 3, tq, tk)
    st = hand(lambda q, k: (q - k) % 4 == 0, tq, tk)
    pl = hand(lambda q, k: k <= q or k < 2, tq, tk)
    cases = [
        (sliding_window(3) | (strided(4) & causal()), sw | (st & hand(lambda q, k: k <= q, tq, tk))),
        (prefix_lm(2) & ~strided(4), pl & ~st),
        (~(sliding_window(3) & prefix_lm(2)), ~(sw & pl)),
    ]
    for m, want in cases:
        assert torch.equal(m.dense(1, 1, tq, tk, "cpu")[0, 0], want), m


# -- scalar and vmap evaluation (how FlexAttention calls a mask_mod) --------------------

B, H, T = 2, 2, 9


def all_masks() -> dict[str, Mask]:
    layout = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    return {
        "causal": causal(),
        "full": full(),
        "sliding_c": sliding_window(3),
        "sliding_b": sliding_window(2, causal=False),
        "local_global_n": local_global(2, 1),
        "local_global_pos": local_global(2, [3, 7], causal=True),
        "block": block_sparse(layout, 3),
        "block_head": block_sparse(torch.stack([layout, ~layout]), 3),
        "strided": strided(3, local=True) & causal(),
        "prefix_int": prefix_lm(4),
        "prefix_tensor": prefix_lm(torch.tensor([2, 6])),
        "padding": padding(torch.tensor([9, 5])),
        "key_padding": key_padding(torch.rand(B, T) > 0.3),
        "document": document(torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 2, 3]])),
        "adjacency": adjacency(torch.rand(B, T, T) > 0.5),
        "composite": (sliding_window(4) | prefix_lm(2)) & ~strided(5),
    }


@pytest.mark.parametrize("name", list(all_masks()))
def test_scalar_indices_match_dense(name):
    m = all_masks()[name]
    dense = m.dense(B, H, T, T, "cpu").expand(B, H, T, T)
    for b in range(B):
        for h in range(H):
            for q in range(T):
                for k in range(T):
                    out = m(torch.tensor(b), torch.tensor(h), torch.tensor(q), torch.tensor(k))
                    assert out.dim() == 0 and out.dtype == torch.bool, name
                    assert bool(out) == bool(dense[b, h, q, k]), (name, b, h, q, k)


@pytest.mark.parametrize("name", list(all_masks()))
def test_flex_create_mask_matches_dense(name):
    m = all_masks()[name]
    flex = create_mask(m, B, H, T, T, device="cpu")  # vmapped over 0-d indices
    assert torch.equal(flex, m.dense(B, H, T, T, "cpu").expand(B, H, T, T))


# -- keys --------------------------------------------------------------------------------


def test_keys_equal_for_equal_params_and_differ_otherwise():
    layout = torch.eye(3, dtype=torch.bool)
    same = [
        (causal(), causal()),
        (sliding_window(4), sliding_window(4, causal=True)),
        (local_global(2, [5, 1]), local_global(2, torch.tensor([1, 5]))),
        (block_sparse(layout, 2), block_sparse(layout.clone(), 2)),
        (strided(3), strided(3)),
        (prefix_lm(3), prefix_lm(3)),
        (causal() & sliding_window(2), causal() & sliding_window(2)),
    ]
    for a, b in same:
        assert a.key is not None and a.key == b.key and hash(a.key) == hash(b.key), (a, b)
    different = [
        causal(), full(), ~causal(), sliding_window(4), sliding_window(5), sliding_window(4, causal=False),
        local_global(2, 1), local_global(2, [0]), local_global(3, 1), local_global(2, 1, causal=True),
        block_sparse(layout, 2), block_sparse(layout, 3), block_sparse(~layout, 2),
        strided(3), strided(4), strided(3, local=True), prefix_lm(3), prefix_lm(4),
        causal() & sliding_window(2), causal() | sliding_window(2), sliding_window(2) & causal(),
    ]
    keys = [m.key for m in different]
    assert all(k is not None for k in keys)
    assert len(set(keys)) == len(keys)


def test_tensor_masks_are_not_cacheable():
    t = torch.tensor([2, 3])
    for m in (padding(t), key_padding(torch.ones(2, 3)), document(torch.zeros(2, 3)), prefix_lm(t),
              adjacency(torch.ones(3, 3))):
        assert m.key is None, m
        assert (m & causal()).key is None and (causal() | m).key is None and (~m).key is None
    assert Mask(lambda b, h, q, k: q >= k, "custom").key is None
    assert Mask(lambda b, h, q, k: q >= k, "custom", key=("mine",)).key == ("mine",)


def test_bad_arguments_raise():
    for bad in (lambda: sliding_window(0), lambda: strided(0), lambda: block_sparse(torch.ones(2, 2), 0),
                lambda: block_sparse(torch.ones(2), 2), lambda: prefix_lm(-1), lambda: local_global(2, -1),
                lambda: local_global(2, [-3]), lambda: adjacency(torch.ones(2, 3))):
        with pytest.raises(ValueError):
            bad()


# -- through attention() -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_window_covering_sequence_equals_causal(backend, reference):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 12, 8, dtype=torch.float64) for _ in range(3))
    want, _ = reference(q, k, v, allowed=torch.ones(12, 12, dtype=torch.bool).tril())
    for window in (12, 50):
        out = attention(q, k, v, mask=sliding_window(window), backend=backend)
        assert torch.allclose(out, want, atol=1e-10), window
    assert torch.allclose(attention(q, k, v, mask=causal(), backend=backend), want, atol=1e-10)
    # a smaller window really is different
    assert not torch.allclose(attention(q, k, v, mask=sliding_window(4), backend=backend), want, atol=1e-3)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_sparse_masks_through_attention_match_reference(backend, reference):
    torch.manual_seed(1)
    q = torch.randn(2, 4, 3, 8, dtype=torch.float64)  # 3 queries at positions 7..9 (bottom-right)
    k, v = (torch.randn(2, 2, 10, 8, dtype=torch.float64) for _ in range(2))
    for m in (local_global(2, [0]), strided(3) & causal(), prefix_lm(torch.tensor([2, 9])),
              block_sparse(torch.ones(4, 4).tril().bool(), 3)):
        want, _ = reference(q, k, v, allowed=m.dense(2, 4, 3, 10, "cpu"))
        assert torch.allclose(attention(q, k, v, mask=m, backend=backend), want, atol=1e-10), m
