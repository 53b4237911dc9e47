"""Position schemes that act on scores (ALiBi, T5 relative bias) and RoPE scaling.

Biases for the float64 reference are built by hand from explicit slopes and explicit
bucket tables, so a wrong sign, alignment or bucket shows up as a mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import attention, causal
from attnlab.attention.positions import (
    ALiBiPositions,
    LearnedPositions,
    PositionEncoding,
    RelativePositionBias,
    RotaryPositions,
    SinusoidalPositions,
    alibi_slopes,
    build_positions,
    relative_position_bucket,
    rope_cos_sin,
)
from attnlab.attention.score_mods import alibi

BACKENDS = ["eager", "sdpa"]
# (B, H, Hkv, Tq, Tk, D)
SHAPES = {"square": (2, 8, 8, 6, 6, 16), "decode-gqa": (2, 8, 4, 3, 9, 16), "tq1": (1, 8, 2, 1, 7, 8)}


def qkv(shape, seed: int = 0):
    b, h, hkv, tq, tk, d = shape
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return mk(b, h, tq, d), mk(b, hkv, tk, d), mk(b, hkv, tk, d)


def causal_allowed(tq: int, tk: int) -> torch.Tensor:
    """(Tq, Tk) bool: query i at absolute position tk - tq + i sees keys j <= that position."""
    return torch.tensor([[j <= tk - tq + i for j in range(tk)] for i in range(tq)])


def grads_of(out: torch.Tensor, tensors, seed: int = 1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * g).sum(), tensors)


# -- ALiBi -------------------------------------------------------------------------


def test_alibi_slopes_power_of_two():
    assert alibi_slopes(8).tolist() == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(1).tolist() == [1 / 256]
    assert alibi_slopes(16).tolist() == pytest.approx([2 ** (-0.5 * (i + 1)) for i in range(16)], rel=1e-15)


def test_alibi_slopes_not_power_of_two():
    # 12 heads: the 8-head slopes, then every other slope of the 16-head sequence.
    expected = [2.0 ** -e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
    assert alibi_slopes(12).tolist() == pytest.approx(expected, rel=1e-15)
    # 6 heads: the 4-head slopes (1/4 ... 1/256), then 1/2 and 1/8 from the 8-head sequence.
    assert alibi_slopes(6).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    with pytest.raises(ValueError, match="n_head"):
        alibi_slopes(0)


def hand_alibi_bias(slopes: list[float], tq: int, tk: int, symmetric: bool = False) -> torch.Tensor:
    """(1, H, Tq, Tk): -slope_h · (query position - key position), query i at tk - tq + i."""
    rows = [[[-s * (abs(tk - tq + i - j) if symmetric else (tk - tq + i - j)) for j in range(tk)]
             for i in range(tq)] for s in slopes]
    return torch.tensor(rows, dtype=torch.float64).unsqueeze(0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("source", ["positions-8", "factory-12"])
def test_alibi_matches_reference_forward_and_grads(reference, backend, shape_name, source):
    b, h, hkv, tq, tk, d = shape = SHAPES[shape_name]
    if source == "positions-8":
        mod, slopes = ALiBiPositions(64, h).score_mod(), [2.0 ** -(i + 1) for i in range(h)]
    else:  # 12 heads, float64 slopes through the factory
        shape = (b, 12, 12 // (h // hkv), tq, tk, d)
        slopes = [2.0 ** -e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
        mod = alibi(alibi_slopes(12))
    q, k, v = qkv(shape)
    allowed = causal_allowed(tq, tk)
    out = attention(q, k, v, mask=causal(), score_mod=mod, backend=backend)
    ref, _ = reference(q, k, v, allowed=allowed, bias=hand_alibi_bias(slopes, tq, tk))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads_of(out, (q, k, v)), grads_of(ref, (q, k, v)), strict=False):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alibi_symmetric_without_mask(reference, backend):
    q, k, v = qkv((1, 4, 4, 5, 5, 8), seed=3)
    slopes = alibi_slopes(4)
    out = attention(q, k, v, score_mod=ALiBiPositions(8, 4, symmetric=True).score_mod(), backend=backend)
    ref, _ = reference(q, k, v, bias=hand_alibi_bias(slopes.tolist(), 5, 5, symmetric=True))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_alibi_decode_step_equals_full_pass_rows():
    q, k, v = qkv((1, 8, 8, 7, 7, 8), seed=4)
    mod = ALiBiPositions(16, 8).score_mod()
    full = attention(q, k, v, mask=causal(), score_mod=mod, backend="eager")
    step = attention(q[:, :, -2:], k, v, mask=causal(), score_mod=mod, backend="eager")
    torch.testing.assert_close(step, full[:, :, -2:], rtol=1e-12, atol=1e-12)


def test_alibi_positions_module():
    pe = ALiBiPositions(32, 12)
    assert list(pe.parameters()) == [] and "slopes" not in pe.state_dict()
    assert pe.embed(torch.arange(3)) is None and pe.rotary(torch.arange(3)) is None
    torch.testing.assert_close(pe.slopes, alibi_slopes(12).float(), rtol=0, atol=0)
    mod = pe.score_mod()
    assert mod.additive and mod.kind == "alibi" and not mod.per_batch
    pe = pe.to(torch.bfloat16)  # slopes stay exact float32 when the model is cast
    assert pe.slopes.dtype == torch.float32
    torch.testing.assert_close(pe.slopes, alibi_slopes(12).float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="1-D"):
        alibi(torch.ones(2, 2))


# -- T5 relative bias --------------------------------------------------------------

# relative position (key - query) → bucket, for num_buckets=16, max_distance=32, worked out by hand:
# a half has 8 buckets, 4 exact (distances 0..3), then 4 + floor(log(d/4) / log(8) · 4), capped at 7.
BI_16_32 = {**{-r: r for r in range(4)}, **{-r: 4 for r in (4, 5, 6)}, **{-r: 5 for r in range(7, 12)},
            **{-r: 6 for r in range(12, 20)}, **{-r: 7 for r in (20, 31, 32, 100)},
            **{r: 8 + r for r in (1, 2, 3)}, **{r: 12 for r in (4, 5, 6)}, **{r: 13 for r in range(7, 12)},
            **{r: 14 for r in range(12, 20)}, **{r: 15 for r in (20, 32, 1000)}}
# unidirectional: 16 buckets, 8 exact, then 8 + floor(log(d/8) / log(4) · 8), capped at 15; future → 0.
UNI_16_32 = {**{-r: r for r in range(8)}, -8: 8, -9: 8, -10: 9, -11: 9, -12: 10, -13: 10, -14: 11,
             -15: 11, -16: 12, -20: 13, -22: 13, -24: 14, -26: 14, -27: 15, -40: 15,
             **{r: 0 for r in (*range(1, 12), 50)}}
# the T5 default (32 buckets, max distance 128), a few points per regime
BI_32_128 = {0: 0, -1: 1, -7: 7, -8: 8, -12: 9, -16: 10, -32: 12, -64: 14, -127: 15, -128: 15, -500: 15,
             1: 17, 7: 23, 8: 24, 16: 26, 64: 30, 127: 31, 128: 31}
UNI_32_128 = {0: 0, -1: 1, -15: 15, -16: 16, -32: 21, -64: 26, -127: 31, -128: 31, -300: 31, 1: 0, 64: 0}


@pytest.mark.parametrize("table,bidirectional,buckets,dist", [
    (BI_16_32, True, 16, 32), (UNI_16_32, False, 16, 32), (BI_32_128, True, 32, 128), (UNI_32_128, False, 32, 128),
])
def test_relative_position_bucket_hand_table(table, bidirectional, buckets, dist):
    rel = torch.tensor(list(table))
    got = relative_position_bucket(rel, bidirectional, buckets, dist)
    assert got.dtype == torch.int64
    assert dict(zip(rel.tolist(), got.tolist(), strict=False)) == table


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,dist", [(32, 128), (8, 16), (64, 256), (10, 20)])
def test_relative_position_bucket_matches_hf_t5(bidirectional, buckets, dist):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-700, 700)
    want = t5.T5Attention._relative_position_bucket(rel, bidirectional, buckets, dist)
    assert torch.equal(relative_position_bucket(rel, bidirectional, buckets, dist), want)


def hand_relative_bias(weight: torch.Tensor, table: dict, tq: int, tk: int) -> torch.Tensor:
    """(1, H, Tq, Tk) bias: weight[bucket(key position - query position), h]."""
    idx = torch.tensor([[table[j - (tk - tq + i)] for j in range(tk)] for i in range(tq)])  # (Tq, Tk)
    return weight[idx].permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional,shape", [
    (True, (2, 4, 4, 6, 9, 8)), (True, (1, 4, 2, 7, 7, 8)), (False, (2, 4, 2, 5, 12, 8)), (False, (1, 4, 4, 8, 8, 8)),
])
def test_relative_bias_matches_reference_and_trains(reference, backend, bidirectional, shape):
    b, h, hkv, tq, tk, d = shape
    torch.manual_seed(0)
    pe = RelativePositionBias(h, num_buckets=16, max_distance=32, bidirectional=bidirectional).double()
    assert pe.relative_attention_bias.weight.shape == (16, h)
    q, k, v = qkv(shape, seed=5)
    mask = None if bidirectional else causal()
    allowed = None if bidirectional else causal_allowed(tq, tk)
    out = attention(q, k, v, mask=mask, score_mod=pe.score_mod(), backend=backend)
    w_ref = pe.relative_attention_bias.weight.detach().clone().requires_grad_(True)
    table = BI_16_32 if bidirectional else UNI_16_32
    ref, _ = reference(q, k, v, allowed=allowed, bias=hand_relative_bias(w_ref, table, tq, tk))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    w = pe.relative_attention_bias.weight
    got = grads_of(out, (q, k, v, w))
    want = grads_of(ref, (q, k, v, w_ref))
    assert want[3].abs().sum() > 0
    for g_got, g_want in zip(got, want, strict=False):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-10)


def test_relative_bias_module():
    pe = RelativePositionBias(6)
    assert (pe.num_buckets, pe.max_distance, pe.bidirectional) == (32, 128, True)
    assert [n for n, _ in pe.named_parameters()] == ["relative_attention_bias.weight"]
    assert pe.embed(torch.arange(2)) is None and pe.rotary(torch.arange(2)) is None
    mod = pe.score_mod()
    assert mod.additive and mod.kind == "relative_bias"
    # dense_bias keeps the autograd link to the table (SDPA path)
    bias = mod.dense_bias(1, 6, 3, 5, "cpu", torch.float32)
    assert bias.shape == (1, 6, 3, 5) and bias.requires_grad
    # query 0 sits at position 2: key 4 is 2 ahead (bucket 16 + 2), key 0 is 2 behind (bucket 2)
    assert bias[0, :, 0, 4].tolist() == pe.relative_attention_bias.weight[18].tolist()
    assert bias[0, :, 0, 0].tolist() == pe.relative_attention_bias.weight[2].tolist()


# -- RoPE scaling ------------------------------------------------------------------


def test_rope_default_unchanged():
    d, theta = 8, 10000.0
    rope = RotaryPositions(32, d)
    pos = torch.arange(32, dtype=torch.float64).unsqueeze(1)
    inv = torch.tensor([theta ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angles = torch.cat((pos * inv, pos * inv), dim=-1)
    torch.testing.assert_close(rope.cos, angles.cos().float(), rtol=0, atol=0)
    torch.testing.assert_close(rope.sin, angles.sin().float(), rtol=0, atol=0)
    assert rope.max_len == 32 and rope.theta == theta and rope.scaling is None
    same = RotaryPositions(32, d, scaling={"type": "none"})
    assert torch.equal(same.cos, rope.cos) and same.max_len == 32


@pytest.mark.parametrize("factor", [2, 3, 4.0])
def test_rope_linear_scaling_interpolates_positions(factor):
    d = 16
    base, scaled = RotaryPositions(20, d), RotaryPositions(20, d, scaling={"type": "linear", "factor": factor})
    assert scaled.max_len == math.ceil(20 * factor) and scaled.original_max_len == 20
    assert scaled.cos.shape == (scaled.max_len, d)
    p = torch.arange(20)
    fp = (p * factor).long()
    torch.testing.assert_close(scaled.cos[fp], base.cos[p], rtol=0, atol=1e-7)
    torch.testing.assert_close(scaled.sin[fp], base.sin[p], rtol=0, atol=1e-7)
    # rotating q, k at position f·p equals the unscaled rotation at p
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 20, d), torch.randn(1, 2, 20, d)
    for a, b in zip(scaled.rotary(fp)(q, k), base.rotary(p)(q, k), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # and positions past the original context are available (beyond it: not the same as any unscaled angle)
    assert scaled.rotary(torch.tensor([scaled.max_len - 1])) is not None


@pytest.mark.parametrize("d,factor", [(8, 4.0), (64, 8.0)])
def test_rope_ntk_rescales_the_base(d, factor):
    theta = 10000.0
    ntk = RotaryPositions(16, d, theta, scaling={"type": "ntk", "factor": factor})
    new_theta = theta * factor ** (d / (d - 2))
    assert ntk.theta == pytest.approx(new_theta, rel=1e-12)
    assert ntk.max_len == 16 * factor
    p = 37  # beyond the original 16
    for i in range(d // 2):
        a = p * new_theta ** (-2 * i / d)
        assert ntk.cos[p, i].item() == pytest.approx(math.cos(a), abs=1e-6)
        assert ntk.sin[p, i + d // 2].item() == pytest.approx(math.sin(a), abs=1e-6)
    # highest frequency unchanged, lowest one slowed exactly by the factor
    last = theta ** (-(d - 2) / d) / factor
    assert ntk.cos[p, d // 2 - 1].item() == pytest.approx(math.cos(p * last), abs=1e-6)
    assert ntk.cos[p, 0].item() == pytest.approx(math.cos(p), abs=1e-6)


def test_rope_cos_sin_any_positions():
    cos, sin = rope_cos_sin(torch.tensor([0, 5, 1000]), 8, scaling={"type": "linear", "factor": 2})
    ref_cos, ref_sin = rope_cos_sin(torch.tensor([0.0, 2.5, 500.0]), 8)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)


@pytest.mark.parametrize("scaling,match", [
    ({"type": "yarn", "factor": 2}, "yarn"), ({"type": "linear", "factor": 0.5}, "factor"),
    ({"type": "ntk"}, "factor"),
])
def test_rope_bad_scaling_raises(scaling, match):
    with pytest.raises(ValueError, match=match):
        RotaryPositions(16, 8, scaling=scaling)


# -- the interface and the builder -------------------------------------------------


def test_score_mod_is_none_for_other_schemes():
    for pe in (PositionEncoding(8), LearnedPositions(8, 4), SinusoidalPositions(8, 4), RotaryPositions(8, 4)):
        assert pe.score_mod() is None


def test_build_positions_bias_kinds_and_scaling():
    al = build_positions("alibi", 32, 24, 6, n_head=4)
    assert isinstance(al, ALiBiPositions) and al.slopes.tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    rel = build_positions("relative", 32, 24, 6, n_head=4, num_buckets=8, max_distance=64, bidirectional=False)
    assert isinstance(rel, RelativePositionBias) and rel.relative_attention_bias.weight.shape == (8, 4)
    assert (rel.max_distance, rel.bidirectional, rel.max_len) == (64, False, 32)
    rope = build_positions("rope", 32, 24, 6, 1000.0, rope_scaling={"type": "linear", "factor": 2})
    assert isinstance(rope, RotaryPositions) and rope.max_len == 64 and rope.cos.shape == (64, 6)
    assert rope.cos[2, 1].item() == pytest.approx(math.cos(1000.0 ** (-2 / 6)), abs=1e-6)


def test_build_positions_alibi_follows_bidirectional():
    """Encoders (bidirectional) get -slope·|i - j|; causal decoders keep -slope·(i - j)."""
    slopes = [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    for bidirectional in (True, False):
        al = build_positions("alibi", 32, 24, 6, n_head=4, bidirectional=bidirectional)
        assert al.symmetric is bidirectional
        got = al.score_mod().dense_bias(1, 4, 6, 6, "cpu", torch.float64)
        torch.testing.assert_close(got, hand_alibi_bias(slopes, 6, 6, symmetric=bidirectional), rtol=0, atol=0)
    both = build_positions("alibi", 32, 24, 6, n_head=4, bidirectional=True).score_mod().dense_bias(
        1, 4, 6, 6, "cpu", torch.float64)
    assert (both <= 0).all() and torch.equal(both, both.transpose(-1, -2))  # no key is favoured for its distance


@pytest.mark.parametrize("kind,kwargs,match", [
    ("alibi", {}, "n_head"), ("relative", {}, "n_head"),
    ("learned", {"rope_scaling": {"type": "linear", "factor": 2}}, "rope_scaling"),
    ("t5", {}, "relative"),
])
def test_build_positions_errors(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_positions(kind, 32, 24, 6, **kwargs)
