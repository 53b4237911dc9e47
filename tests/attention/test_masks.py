"""Mask predicates: semantics, bottom-right alignment, composition, dense shapes, kinds."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import Mask, causal, document, full, key_padding, padding
from attnlab.attention.masks import is_kind


def tril(tq: int, tk: int) -> torch.Tensor:
    """Hand-built bottom-right causal (Tq, Tk): query i at position tk - tq + i sees keys <= it."""
    return torch.tensor([[j <= tk - tq + i for j in range(tk)] for i in range(tq)])


def test_causal_square_is_lower_triangular():
    d = causal().dense(2, 3, 5, 5, "cpu")
    assert d.shape == (1, 1, 5, 5) and d.dtype == torch.bool
    assert torch.equal(d[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())


def test_causal_single_query_sees_all_keys():
    d = causal().dense(1, 1, 1, 6, "cpu")
    assert d.shape == (1, 1, 1, 6)
    assert d.all()


def test_causal_bottom_right_alignment():
    d = causal().dense(1, 1, 3, 5, "cpu")[0, 0]
    assert d.sum(-1).tolist() == [3, 4, 5]
    expected = torch.tensor([
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(d, expected)
    assert torch.equal(d, tril(3, 5))


@pytest.mark.parametrize("tq,tk", [(1, 1), (2, 7), (4, 4), (6, 9)])
def test_causal_matches_hand_built(tq, tk):
    assert torch.equal(causal().dense(1, 1, tq, tk, "cpu")[0, 0], tril(tq, tk))


def test_full_allows_everything():
    m = full()
    assert m.kind == "full"
    d = m.dense(2, 2, 3, 4, "cpu")
    assert d.shape == (1, 1, 3, 4) and d.dtype == torch.bool and d.all()


def test_padding_per_batch_row():
    lengths = torch.tensor([4, 2, 0])
    m = padding(lengths)
    assert m.kind == "padding" and m.per_batch and not m.per_head
    d = m.dense(3, 4, 2, 5, "cpu")
    assert d.shape == (3, 1, 2, 5)
    for b, n in enumerate(lengths.tolist()):
        want = torch.tensor([j < n for j in range(5)]).expand(2, 5)
        assert torch.equal(d[b, 0], want), b


def test_key_padding_any_side():
    valid = torch.tensor([[False, False, True, True, True], [True, False, True, False, True]])
    m = key_padding(valid)
    assert m.kind == "key_padding" and m.per_batch
    d = m.dense(2, 3, 3, 5, "cpu")
    assert d.shape == (2, 1, 3, 5)
    for b in range(2):
        assert torch.equal(d[b, 0], valid[b].expand(3, 5))


def test_key_padding_accepts_int_tensor():
    d = key_padding(torch.tensor([[0, 1, 1]])).dense(1, 1, 2, 3, "cpu")
    assert d[0, 0].tolist() == [[False, True, True], [False, True, True]]


@pytest.mark.parametrize("tq", [6, 2])
def test_document_uses_absolute_query_positions(tq):
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 7, 7]])
    tk = 6
    d = document(doc_ids).dense(2, 4, tq, tk, "cpu")
    assert d.shape == (2, 1, tq, tk)
    for b in range(2):
        ids = doc_ids[b].tolist()
        want = torch.tensor([[ids[tk - tq + i] == ids[j] for j in range(tk)] for i in range(tq)])
        assert torch.equal(d[b, 0], want), b


def test_document_and_causal_is_block_diagonal_lower_triangle():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2]])
    d = (document(doc_ids) & causal()).dense(1, 1, 6, 6, "cpu")[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(d, expected)


def _components(b=2, h=3, tq=3, tk=5):
    lengths = torch.tensor([5, 3])
    doc_ids = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]])
    c = tril(tq, tk).expand(b, 1, tq, tk)
    p = torch.stack([torch.arange(tk) < n for n in lengths.tolist()]).view(b, 1, 1, tk).expand(b, 1, tq, tk)
    d = torch.stack([
        torch.tensor([[ids[tk - tq + i] == ids[j] for j in range(tk)] for i in range(tq)]) for ids in doc_ids.tolist()
    ]).view(b, 1, tq, tk)
    return (causal(), c), (padding(lengths), p), (document(doc_ids), d)


def test_composition_matches_tensor_logic():
    (cm, c), (pm, p), (dm, d) = _components()
    cases = {
        "&": (cm & pm, c & p),
        "|": (cm | dm, c | d),
        "~": (~cm, ~c),
        "~&": (~cm & pm, ~c & p),
        "(|)&": ((cm | dm) & pm, (c | d) & p),
        "~(&)": (~(cm & dm), ~(c & d)),
    }
    for name, (m, want) in cases.items():
        got = m.dense(2, 3, 3, 5, "cpu")
        assert torch.equal(got.expand(2, 1, 3, 5), want.expand(2, 1, 3, 5)), name
    # De Morgan, as a cross-check of & | ~ against each other
    assert torch.equal((~(cm & pm)).dense(2, 3, 3, 5, "cpu"), (~cm | ~pm).dense(2, 3, 3, 5, "cpu"))


def test_composition_kinds_and_flags():
    c, p = causal(), padding(torch.tensor([2, 3]))
    ph = Mask(lambda b, h, q, k: k <= h, "heads", per_head=True)
    assert (c & p).kind == "causal&padding"
    assert (c | p).kind == "(causal|padding)"
    assert (~c).kind == "~causal"
    assert (c & p).per_batch and not (c & p).per_head
    assert not (~c).per_batch
    assert (~p).per_batch
    assert (c | ph).per_head and not (c | ph).per_batch
    assert repr(c & p) == "Mask(causal&padding)"


def test_dense_shapes_follow_dependence():
    lengths = torch.tensor([3, 1])
    ph = Mask(lambda b, h, q, k: k <= h, "heads", per_head=True)
    assert causal().dense(2, 4, 3, 5, "cpu").shape == (1, 1, 3, 5)
    assert padding(lengths).dense(2, 4, 3, 5, "cpu").shape == (2, 1, 3, 5)
    assert ph.dense(2, 4, 3, 5, "cpu").shape == (1, 4, 3, 5)
    both = (ph & padding(lengths)).dense(2, 4, 3, 5, "cpu")
    assert both.shape == (2, 4, 3, 5)
    for b in range(2):
        for h in range(4):
            want = torch.tensor([j <= h and j < lengths[b] for j in range(5)]).expand(3, 5)
            assert torch.equal(both[b, h], want), (b, h)


def test_custom_predicate_receives_absolute_positions():
    seen = {}

    def fn(b, h, q, k):
        seen["q"], seen["k"] = q.flatten().tolist(), k.flatten().tolist()
        return q >= k

    Mask(fn, "spy").dense(1, 1, 2, 5, "cpu")
    assert seen["q"] == [3, 4]
    assert seen["k"] == [0, 1, 2, 3, 4]


def test_call_evaluates_predicate():
    m = causal()
    out = m(torch.tensor(0), torch.tensor(0), torch.tensor([[2], [0]]), torch.tensor([[1, 3]]))
    assert out.tolist() == [[True, False], [False, False]]


def test_is_kind():
    assert is_kind(causal(), "causal")
    assert not is_kind(causal() & padding(torch.tensor([1])), "causal")
    assert not is_kind(~causal(), "causal")
    assert not is_kind(None, "causal")
    assert not is_kind(torch.ones(2, 2, dtype=torch.bool), "causal")  # a dense tensor has no kind
