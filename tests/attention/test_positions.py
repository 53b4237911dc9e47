"""Position encodings: sinusoidal formula and shift structure, RoPE properties, learned, builder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnlab.attention import (
    LearnedPositions,
    PositionEncoding,
    RotaryPositions,
    SinusoidalPositions,
    build_positions,
)
from attnlab.attention.positions import rotate_half, sinusoidal_table

# -- sinusoidal ----------------------------------------------------------------


@pytest.mark.parametrize("p,i", [(0, 0), (1, 0), (7, 1), (13, 3), (40, 7), (63, 5)])
def test_sinusoidal_formula(p, i):
    d = 16
    table = sinusoidal_table(64, d)
    angle = p / 10000 ** (2 * i / d)
    assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_table_shape_range_and_first_row():
    table = sinusoidal_table(100, 32)
    assert table.shape == (100, 32) and table.dtype == torch.float32
    assert table.abs().max() <= 1.0
    assert torch.equal(table[0, 0::2], torch.zeros(16)) and torch.equal(table[0, 1::2], torch.ones(16))
    # distinct positions get distinct vectors
    assert torch.cdist(table, table).add(torch.eye(100)).min() > 1e-3


def test_sinusoidal_custom_base():
    table = sinusoidal_table(8, 4, base=100.0)
    assert table[5, 2].item() == pytest.approx(math.sin(5 / 100 ** (2 / 4)), abs=1e-6)


def test_sinusoidal_odd_dim():
    table = sinusoidal_table(10, 7)
    assert table.shape == (10, 7)
    assert table[3, 6].item() == pytest.approx(math.sin(3 / 10000 ** (6 / 7)), abs=1e-6)
    assert table[3, 5].item() == pytest.approx(math.cos(3 / 10000 ** (4 / 7)), abs=1e-6)


@pytest.mark.parametrize("offset", [1, 5, 17])
def test_sinusoidal_shift_is_a_rotation_per_frequency(offset):
    # PE[p + k] = R(k ω_i) PE[p] for every pair (2i, 2i+1), with the same matrix for every p.
    d, n = 16, 80
    table = sinusoidal_table(n + offset, d).double()
    for i in range(d // 2):
        w = 10000 ** (-2 * i / d)
        c, s = math.cos(offset * w), math.sin(offset * w)
        rot = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)  # acts on (sin, cos)
        x = table[:n, 2 * i: 2 * i + 2]  # (n, 2): (sin pω, cos pω)
        y = table[offset:offset + n, 2 * i: 2 * i + 2]
        torch.testing.assert_close(x @ rot.T, y, rtol=0, atol=2e-6)
        # and the linear map fitted from the data alone is that rotation
        fit = torch.linalg.lstsq(x, y).solution.T
        torch.testing.assert_close(fit, rot, rtol=0, atol=1e-4)


def test_sinusoidal_module_embed():
    pe = SinusoidalPositions(32, 8)
    assert list(pe.parameters()) == []
    assert "table" not in pe.state_dict()  # non-persistent buffer
    pos = torch.tensor([3, 0, 31])
    assert torch.equal(pe.embed(pos), sinusoidal_table(32, 8)[pos])
    batch = torch.tensor([[0, 1], [5, 6]])
    assert pe.embed(batch).shape == (2, 2, 8)
    assert pe.rotary(pos) is None


# -- RoPE ----------------------------------------------------------------------


def hand_rope(x: torch.Tensor, positions: list[int], theta: float = 10000.0) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (..., T, D) by angle p · theta^(-2i/D), written out by hand."""
    d = x.shape[-1]
    out = x.clone().double()
    for t, p in enumerate(positions):
        for i in range(d // 2):
            a = p * theta ** (-2 * i / d)
            x1, x2 = x[..., t, i].double(), x[..., t, i + d // 2].double()
            out[..., t, i] = x1 * math.cos(a) - x2 * math.sin(a)
            out[..., t, i + d // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def test_rope_matches_hand_rotation():
    torch.manual_seed(0)
    rope = RotaryPositions(64, 8)
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 3, 8)
    positions = [0, 7, 40]
    qr, kr = rope.rotary(torch.tensor(positions))(q, k)
    assert qr.shape == q.shape and kr.shape == k.shape
    torch.testing.assert_close(qr.double(), hand_rope(q, positions), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kr.double(), hand_rope(k, positions), rtol=1e-5, atol=1e-5)


def test_rope_custom_theta():
    torch.manual_seed(0)
    rope = RotaryPositions(16, 8, theta=500.0)
    q = torch.randn(1, 1, 2, 8)
    qr, _ = rope.rotary(torch.tensor([3, 9]))(q, q)
    torch.testing.assert_close(qr.double(), hand_rope(q, [3, 9], theta=500.0), rtol=1e-5, atol=1e-5)


def test_rope_preserves_norms():
    torch.manual_seed(0)
    rope = RotaryPositions(128, 16)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 2, 10, 16)
    qr, kr = rope.rotary(torch.arange(50, 60))(q, k)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kr.norm(dim=-1), k.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(qr, q, atol=1e-3)  # it did rotate


def test_rope_position_zero_is_identity():
    torch.manual_seed(0)
    rope = RotaryPositions(8, 16)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    qr, kr = rope.rotary(torch.tensor([0]))(q, k)
    torch.testing.assert_close(qr, q, rtol=0, atol=0)
    torch.testing.assert_close(kr, k, rtol=0, atol=0)


@pytest.mark.parametrize("m,n,s", [(5, 2, 3), (0, 9, 11), (20, 20, 7), (3, 30, 50)])
def test_rope_scores_depend_only_on_relative_position(m, n, s):
    torch.manual_seed(m * 100 + n)
    rope = RotaryPositions(128, 32)
    qv, kv = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    pos = torch.tensor([m, n, m + s, n + s, n + 1])
    q = qv.expand(1, 1, 5, 32)
    k = kv.expand(1, 1, 5, 32)
    qr, kr = rope.rotary(pos)(q, k)
    score = lambda a, b: (qr[0, 0, a] @ kr[0, 0, b]).item()  # noqa: E731
    assert score(0, 1) == pytest.approx(score(2, 3), abs=1e-5)
    # ... but it does depend on the relative position
    assert abs(score(0, 1) - score(0, 4)) > 1e-3


def test_rope_batched_positions_match_shared_positions():
    torch.manual_seed(0)
    rope = RotaryPositions(64, 8)
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 3, 8)
    pos = torch.tensor([4, 5, 6])
    a = rope.rotary(pos)(q, k)
    b = rope.rotary(pos.expand(2, 3))(q, k)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    # different positions per batch row: each row equals a separate call with its own positions
    per_row = torch.tensor([[0, 1, 2], [10, 11, 12]])
    qb, kb = rope.rotary(per_row)(q, k)
    for r in range(2):
        qs, ks = rope.rotary(per_row[r])(q[r: r + 1], k[r: r + 1])
        torch.testing.assert_close(qb[r: r + 1], qs, rtol=0, atol=0)
        torch.testing.assert_close(kb[r: r + 1], ks, rtol=0, atol=0)
    # ... and a row really used its own positions, not the other row's
    assert not torch.allclose(qb[:1], rope.rotary(per_row[1])(q[:1], k[:1])[0], atol=1e-3)


def test_rope_keeps_dtype():
    rope = RotaryPositions(16, 8)
    q = torch.randn(1, 1, 2, 8, dtype=torch.float64)
    qr, kr = rope.rotary(torch.tensor([1, 2]))(q, q)
    assert qr.dtype == torch.float64 and kr.dtype == torch.float64
    qb, _ = rope.rotary(torch.tensor([1, 2]))(q.bfloat16(), q.bfloat16())
    assert qb.dtype == torch.bfloat16


def test_rotate_half():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rotate_half(x).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_rope_has_no_embedding_and_no_parameters():
    rope = RotaryPositions(16, 8)
    assert rope.embed(torch.arange(3)) is None
    assert list(rope.parameters()) == []


# -- learned, none, builder ------------------------------------------------------


def test_learned_positions_are_parameters():
    pe = LearnedPositions(20, 12)
    params = dict(pe.named_parameters())
    assert list(params) == ["weight"]
    assert isinstance(pe.weight, nn.Parameter) and pe.weight.shape == (20, 12)
    with torch.no_grad():
        pe.weight.copy_(torch.randn(20, 12))
    pos = torch.tensor([2, 19, 0])
    assert torch.equal(pe.embed(pos), pe.weight[pos])
    pe.embed(pos).sum().backward()
    assert pe.weight.grad[pos].eq(1).all() and pe.weight.grad.sum() == 3 * 12
    assert pe.rotary(pos) is None


def test_none_positions():
    pe = PositionEncoding(10)
    assert pe.max_len == 10
    assert pe.embed(torch.arange(3)) is None and pe.rotary(torch.arange(3)) is None


def test_build_positions_each_kind():
    learned = build_positions("learned", 32, 24, 6)
    assert isinstance(learned, LearnedPositions) and learned.weight.shape == (32, 24)
    sin = build_positions("sinusoidal", 32, 24, 6)
    assert isinstance(sin, SinusoidalPositions) and sin.table.shape == (32, 24)
    rope = build_positions("rope", 32, 24, 6, rope_theta=1000.0)
    assert isinstance(rope, RotaryPositions) and rope.cos.shape == (32, 6)
    assert rope.cos[1, 1].item() == pytest.approx(math.cos(1000.0 ** (-2 / 6)), abs=1e-6)
    none = build_positions("none", 32, 24, 6)
    assert type(none) is PositionEncoding
    for pe in (learned, sin, rope, none):
        assert pe.max_len == 32


def test_build_positions_unknown_raises():
    with pytest.raises(ValueError, match="alibi-typo"):
        build_positions("alibi-typo", 32, 24, 6)
