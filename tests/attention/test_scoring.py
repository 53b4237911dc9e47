"""Classic score functions and ``attend`` against formulas written out per (query, key) pair."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention.scoring import (
    AdditiveScore,
    ConcatScore,
    DotProductScore,
    MultiplicativeScore,
    ScaledDotProductScore,
    ScoreFunction,
    attend,
    build_scoring,
)

B, TQ, TK, DQ, DK, DH = 2, 3, 5, 6, 4, 7


def inputs(dq: int = DQ, dk: int = DK, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, TQ, dq, generator=g, dtype=torch.float64),
            torch.randn(B, TK, dk, generator=g, dtype=torch.float64))


def pairwise(f, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, Tq, Tk) from a scalar function f(q_vector, k_vector), one pair at a time."""
    with torch.no_grad():
        return torch.tensor([[[float(f(query[b, i], keys[b, j])) for j in range(keys.shape[1])]
                              for i in range(query.shape[1])] for b in range(query.shape[0])], dtype=torch.float64)


def test_dot_and_scaled_dot():
    q, k = inputs(dk=DQ)
    want = pairwise(lambda a, c: sum(a[t] * c[t] for t in range(DQ)), q, k)
    got = DotProductScore()(q, k)
    assert got.shape == (B, TQ, TK)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ScaledDotProductScore(DQ)(q, k), want / math.sqrt(DQ), rtol=1e-12, atol=1e-12)
    assert list(DotProductScore().parameters()) == []


def test_multiplicative():
    q, k = inputs()
    m = MultiplicativeScore(DQ, DK).double()
    W = m.W.weight  # (DQ, DK)
    want = pairwise(lambda a, c: sum(a[i] * W[i, j] * c[j] for i in range(DQ) for j in range(DK)), q, k)
    torch.testing.assert_close(m(q, k), want, rtol=1e-10, atol=1e-10)


def test_additive():
    q, k = inputs()
    m = AdditiveScore(DQ, DK, DH).double()
    Wq, Wk, bk, v = m.W_q.weight, m.W_k.weight, m.W_k.bias, m.v.weight[0]
    want = pairwise(lambda a, c: v @ torch.tanh(Wq @ a + Wk @ c + bk), q, k)
    got = m(q, k)
    assert got.shape == (B, TQ, TK)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert AdditiveScore(DQ, DK).W_q.out_features == DQ  # default hidden width = d_q


def test_concat():
    q, k = inputs()
    m = ConcatScore(DQ, DK, DH).double()
    W, b, v = m.W.weight, m.W.bias, m.v.weight[0]
    want = pairwise(lambda a, c: v @ torch.tanh(W @ torch.cat((a, c)) + b), q, k)
    torch.testing.assert_close(m(q, k), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["general", "additive", "concat"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    m = build_scoring(name, DQ, DK, DH)
    q, k = (t.float().requires_grad_(True) for t in inputs())
    ctx, _ = attend(m(q, k), k)
    ctx.pow(2).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_build_scoring_names_and_errors():
    assert type(build_scoring("dot", 4, 4)) is DotProductScore
    assert type(build_scoring("scaled_dot", 4, 4)) is ScaledDotProductScore
    assert type(build_scoring("general", 4, 3)) is MultiplicativeScore
    add = build_scoring("additive", 4, 3, 9)
    assert type(add) is AdditiveScore and add.v.in_features == 9
    assert all(isinstance(build_scoring(n, 4, 4), ScoreFunction) for n in ("dot", "general", "additive", "concat"))
    with pytest.raises(ValueError, match="bahdanau"):
        build_scoring("bahdanau", 4, 4)
    with pytest.raises(ValueError, match="general"):
        build_scoring("dot", 4, 3)


def test_shape_errors():
    q, k = inputs()
    with pytest.raises(ValueError, match="query width"):
        MultiplicativeScore(DQ + 1, DK)(q, k)
    with pytest.raises(ValueError, match="Tq = 1"):
        AdditiveScore(DQ, DK)(q[:, 0], k)
    with pytest.raises(ValueError, match="equal"):
        DotProductScore()(q, k)
    with pytest.raises(ValueError, match="values"):
        attend(torch.zeros(B, TQ, TK), torch.zeros(B, TK + 1, 2))
    with pytest.raises(TypeError, match="bool"):
        attend(torch.zeros(B, TQ, TK), torch.zeros(B, TK, 2), torch.ones(B, TQ, TK))


def test_attend_matches_explicit_softmax_with_mask():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(B, TQ, TK, generator=g, dtype=torch.float64)
    values = torch.randn(B, TK, 3, generator=g, dtype=torch.float64)
    lengths = [3, 5]
    mask = torch.tensor([[j < n for j in range(TK)] for n in lengths]).unsqueeze(1)  # (B, 1, Tk) source padding
    ctx, w = attend(scores, values, mask)
    assert ctx.shape == (B, TQ, 3) and w.shape == (B, TQ, TK)
    for b in range(B):
        for i in range(TQ):
            e = [math.exp(scores[b, i, j].item()) if j < lengths[b] else 0.0 for j in range(TK)]
            want = torch.tensor([x / sum(e) for x in e], dtype=torch.float64)
            torch.testing.assert_close(w[b, i], want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ctx[b, i], want @ values[b], rtol=1e-12, atol=1e-12)
    # no mask: a plain softmax
    ctx0, w0 = attend(scores, values)
    torch.testing.assert_close(w0, torch.softmax(scores, -1), rtol=0, atol=0)


def test_attend_fully_masked_row_is_zero_without_nan():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(B, TQ, TK, generator=g, requires_grad=True)
    values = torch.randn(B, TK, 3, generator=g, requires_grad=True)
    mask = torch.rand(B, TQ, TK, generator=g) < 0.6
    mask[0, 1] = False  # a query that may attend to nothing
    mask[1, 0] = True
    ctx, w = attend(scores, values, mask)
    assert torch.equal(w[0, 1], torch.zeros(TK)) and torch.equal(ctx[0, 1], torch.zeros(3))
    assert not w.masked_select(~mask).any()
    ctx.sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.isfinite(values.grad).all()
    assert torch.equal(scores.grad[0, 1], torch.zeros(TK))


def test_attend_half_precision_keeps_dtype():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(1, 2, 4, generator=g).bfloat16()
    values = torch.randn(1, 4, 3, generator=g).bfloat16()
    ctx, w = attend(scores, values, torch.tensor([True, True, False, True]))
    assert ctx.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    want = torch.softmax(scores.float().masked_fill(torch.tensor([False, False, True, False]), float("-inf")), -1)
    torch.testing.assert_close(w.float(), want, rtol=1e-2, atol=1e-2)
