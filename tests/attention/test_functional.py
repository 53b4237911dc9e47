"""`attention()` against an independent float64 reference, for every backend.

Masks are built twice: once with attnlab's predicates (what the backends get) and once
by hand with explicit loops over absolute positions (what the reference gets), so a
wrong alignment or a wrong predicate shows up as a mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import attention, causal, dispatch_log, document, key_padding, padding
from attnlab.attention.masks import Mask

# (B, H, Hkv, Tq, Tk, D)
SHAPES = {
    "mha-square": (2, 4, 4, 6, 6, 16),
    "gqa-decode": (2, 4, 2, 3, 7, 16),
    "mqa-tq1": (1, 4, 1, 1, 9, 64),
    "gqa-d64": (2, 6, 3, 5, 5, 64),
}

MASKS = [
    "none", "causal", "padding", "key_padding", "document&causal", "causal|document",
    "~causal&padding", "per_head_window", "dense4d", "dense2d",
]


def hand_mask(name: str, b: int, h: int, tq: int, tk: int, gen: torch.Generator):
    """Return ``(mask for attention(), allowed (B, H, Tq, Tk) bool built with explicit loops)``."""
    off = tk - tq  # query i sits at absolute position off + i

    def loops(pred) -> torch.Tensor:
        rows = [[[[bool(pred(bi, hi, off + i, j)) for j in range(tk)] for i in range(tq)]
                 for hi in range(h)] for bi in range(b)]
        return torch.tensor(rows, dtype=torch.bool)

    lengths = [tk - 2, 0][:b]  # the second row (when present) has no valid key at all
    valid = torch.ones(b, tk, dtype=torch.bool)
    valid[0, :2] = False  # left padding in row 0
    if b > 1:
        valid[1] = torch.rand(tk, generator=gen) < 0.6
        valid[1, -1] = True
    doc = [[j * 3 // tk for j in range(tk)], [min(j // 2, 2) for j in range(tk)]][:b]
    doc_ids = torch.tensor(doc)
    vl = valid.tolist()
    if name == "none":
        return None, loops(lambda bi, hi, p, j: True)
    if name == "causal":
        return causal(), loops(lambda bi, hi, p, j: j <= p)
    if name == "padding":
        return padding(torch.tensor(lengths)), loops(lambda bi, hi, p, j: j < lengths[bi])
    if name == "key_padding":
        return key_padding(valid), loops(lambda bi, hi, p, j: vl[bi][j])
    if name == "document&causal":
        return (document(doc_ids) & causal(),
                loops(lambda bi, hi, p, j: j <= p and doc[bi][p] == doc[bi][j]))
    if name == "causal|document":
        return (causal() | document(doc_ids),
                loops(lambda bi, hi, p, j: j <= p or doc[bi][p] == doc[bi][j]))
    if name == "~causal&padding":
        # strictly-future keys only: the last query has none (a fully masked row)
        lens = [tk, tk - 1][:b]
        return (~causal() & padding(torch.tensor(lens)),
                loops(lambda bi, hi, p, j: j > p and j < lens[bi]))
    if name == "per_head_window":
        m = Mask(lambda bb, hh, q, k: (q >= k) & (q - k <= hh), "window", per_head=True)
        return m, loops(lambda bi, hi, p, j: 0 <= p - j <= hi)
    if name == "dense4d":
        t = torch.rand(b, 1, tq, tk, generator=gen) < 0.6
        t[0, 0, 0] = False  # a fully masked query row
        return t, t.expand(b, h, tq, tk).clone()
    if name == "dense2d":
        t = torch.rand(tq, tk, generator=gen) < 0.5
        t[-1] = True
        return t, t.expand(b, h, tq, tk).clone()
    raise KeyError(name)


def make_inputs(shape, dtype=torch.float64, seed=0, bias_shape="1H"):
    b, h, hkv, tq, tk, d = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, tk, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, tk, d, generator=gen, dtype=torch.float64)
    bshape = {"1H": (1, h, tq, tk), "B1": (b, 1, tq, tk), "BH": (b, h, tq, tk)}[bias_shape]
    bias = torch.randn(*bshape, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype), bias.to(dtype), gen


# -- forward values ------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_forward_matches_reference_fp64(shape_name, mask_name, backend, with_bias, reference):
    torch.manual_seed(0)
    shape = SHAPES[shape_name]
    q, k, v, bias, gen = make_inputs(shape)
    mask, allowed = hand_mask(mask_name, shape[0], shape[1], shape[3], shape[4], gen)
    bias = bias if with_bias else None
    out = attention(q, k, v, mask=mask, bias=bias, backend=backend)
    ref, _ = reference(q, k, v, allowed, bias)
    assert out.shape == q.shape[:3] + v.shape[-1:]
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "document&causal", "dense4d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape_name", ["mha-square", "gqa-decode", "gqa-d64"])
def test_forward_low_precision(shape_name, dtype, mask_name, backend, reference):
    torch.manual_seed(0)
    shape = SHAPES[shape_name]
    q, k, v, bias, gen = make_inputs(shape, dtype=dtype)
    mask, allowed = hand_mask(mask_name, shape[0], shape[1], shape[3], shape[4], gen)
    out = attention(q, k, v, mask=mask, bias=bias, backend=backend)
    assert out.dtype == dtype
    # the reference sees the same rounded inputs, in float64
    ref, _ = reference(q, k, v, allowed, bias)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    else:
        err = (out.double() - ref).abs().max().item()
        assert err <= 2e-2 * max(ref.abs().max().item(), 1.0), err
    assert not torch.isnan(out).any()


def test_tq1_decode_sees_all_keys_under_causal(reference):
    # One query at the last position: bottom-right causal lets it see every key,
    # so the answer equals unmasked attention (and differs from "key 0 only").
    torch.manual_seed(0)
    q, k, v, _, _ = make_inputs((2, 4, 2, 1, 8, 16))
    ref, _ = reference(q, k, v)
    only_first = torch.zeros(1, 1, 1, 8, dtype=torch.bool)
    only_first[..., 0] = True
    ref_top_left, _ = reference(q, k, v, only_first)
    for backend in ("eager", "sdpa", "auto"):
        out = attention(q, k, v, mask=causal(), backend=backend)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(out, ref_top_left)


# -- gradients -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("shape_name", ["mha-square", "gqa-decode", "mqa-tq1"])
def test_gradients_match_reference(shape_name, mask_name, backend, reference):
    torch.manual_seed(0)
    shape = SHAPES[shape_name]
    q, k, v, bias, gen = make_inputs(shape, bias_shape="B1")
    mask, allowed = hand_mask(mask_name, shape[0], shape[1], shape[3], shape[4], gen)
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    ref_inputs = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = attention(*inputs[:3], mask=mask, bias=inputs[3], backend=backend)
    ref, _ = reference(*ref_inputs[:3], allowed, ref_inputs[3])
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, g)
    ref_grads = torch.autograd.grad(ref, ref_inputs, g)
    for name, got, want, x in zip("q k v bias".split(), grads, ref_grads, inputs, strict=False):
        assert got.shape == x.shape, name
        assert torch.isfinite(got).all(), f"non-finite grad for {name}"
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_gradients_low_precision(backend, dtype, reference):
    torch.manual_seed(0)
    shape = SHAPES["gqa-decode"]
    q, k, v, _, gen = make_inputs(shape, dtype=dtype)
    mask, allowed = hand_mask("document&causal", shape[0], shape[1], shape[3], shape[4], gen)
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref_inputs = [t.double().requires_grad_(True) for t in (q, k, v)]
    out = attention(*inputs, mask=mask, backend=backend)
    ref, _ = reference(*ref_inputs, allowed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, g.to(dtype))
    ref_grads = torch.autograd.grad(ref, ref_inputs, g)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for got, want in zip(grads, ref_grads, strict=False):
        assert got.dtype == dtype
        err = (got.double() - want).abs().max().item()
        assert err <= tol * max(want.abs().max().item(), 1.0), err


# -- fully masked rows ---------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["fp64", "fp32", "bf16"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
def test_fully_masked_rows_are_zero_without_nan(backend, dtype, with_bias):
    torch.manual_seed(0)
    b, h, hkv, tq, tk, d = 2, 4, 2, 4, 6, 16
    q, k, v, bias, _ = make_inputs((b, h, hkv, tq, tk, d), dtype=dtype)
    allowed = torch.ones(b, 1, tq, tk, dtype=torch.bool)
    allowed[0, 0, 1] = False  # one empty query row in batch 0
    allowed[1] = False  # every row of batch 1 empty
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = attention(*inputs[:3], mask=allowed, bias=inputs[3] if with_bias else None, backend=backend)
    assert not torch.isnan(out).any()
    assert (out[0, :, 1] == 0).all() and (out[1] == 0).all()
    assert (out[0, :, 0].abs() > 0).any()  # the other rows are real outputs
    out.sum().backward()
    for x in inputs[: 4 if with_bias else 3]:
        assert torch.isfinite(x.grad).all()
    # batch 1 contributes nothing, so its inputs get zero gradient
    assert (inputs[0].grad[1] == 0).all() and (inputs[1].grad[1] == 0).all() and (inputs[2].grad[1] == 0).all()
    assert (inputs[0].grad[0, :, 1] == 0).all()  # the empty query row
    if with_bias:
        assert (inputs[3].grad[0, :, 1] == 0).all()


def test_padding_length_zero_row_is_zero():
    torch.manual_seed(0)
    q, k, v, _, _ = make_inputs((2, 2, 2, 3, 3, 16))
    for backend in ("eager", "sdpa"):
        out = attention(q, k, v, mask=causal() & padding(torch.tensor([3, 0])), backend=backend)
        assert (out[1] == 0).all() and not torch.isnan(out).any()
        assert (out[0].abs() > 0).all()


# -- weights -------------------------------------------------------------------


@pytest.mark.parametrize("mask_name", ["none", "causal", "~causal&padding", "per_head_window", "dense4d"])
@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("shape_name", ["mha-square", "gqa-decode"])
def test_return_weights_match_reference(shape_name, backend, mask_name, reference):
    torch.manual_seed(0)
    shape = SHAPES[shape_name]
    b, h, _, tq, tk, _ = shape
    q, k, v, bias, gen = make_inputs(shape)
    mask, allowed = hand_mask(mask_name, b, h, tq, tk, gen)
    dispatch_log(clear=True)
    out, w = attention(q, k, v, mask=mask, bias=bias, backend=backend, return_weights=True)
    ref, ref_w = reference(q, k, v, allowed, bias)
    assert w.shape == (b, h, tq, tk)
    assert w.dtype == q.dtype
    torch.testing.assert_close(w, ref_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    sums = w.sum(-1)
    expected = allowed.any(-1).double()
    torch.testing.assert_close(sums, expected, rtol=1e-12, atol=1e-12)
    assert (w[~allowed] == 0).all()  # masked pairs get exactly zero weight
    (rec,) = dispatch_log()
    assert rec["backend"] == "eager"


def test_return_weights_low_precision_dtype():
    torch.manual_seed(0)
    q, k, v, _, _ = make_inputs((1, 2, 2, 4, 4, 16), dtype=torch.bfloat16)
    out, w = attention(q, k, v, mask=causal(), return_weights=True)
    assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    torch.testing.assert_close(w.float().sum(-1), torch.ones(1, 2, 4), rtol=0, atol=2e-2)


# -- backend selection, errors, dispatch log -------------------------------------


def test_sdpa_with_weights_raises():
    q, k, v, _, _ = make_inputs((1, 2, 2, 3, 3, 16))
    with pytest.raises(ValueError, match="weights"):
        attention(q, k, v, backend="sdpa", return_weights=True)


def test_unknown_backend_raises():
    q, k, v, _, _ = make_inputs((1, 2, 2, 3, 3, 16))
    with pytest.raises(ValueError, match="nope"):
        attention(q, k, v, backend="nope")


@pytest.mark.parametrize(
    "qs,ks,vs,match",
    [
        ((2, 3, 16), (2, 3, 16), (2, 3, 16), "4-D"),  # 3-D inputs
        ((1, 4, 3, 16), (1, 3, 5, 16), (1, 3, 5, 16), "multiple"),  # H=4 not a multiple of Hkv=3
        ((1, 2, 3, 16), (1, 2, 5, 8), (1, 2, 5, 8), "incompatible"),  # head dims differ
        ((1, 2, 3, 16), (1, 2, 5, 16), (1, 2, 4, 16), "incompatible"),  # k/v lengths differ
        ((2, 2, 3, 16), (1, 2, 5, 16), (1, 2, 5, 16), "incompatible"),  # batch differs
    ],
)
@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
def test_bad_shapes_raise(qs, ks, vs, match, backend):
    with pytest.raises(ValueError, match=match):
        attention(torch.randn(qs), torch.randn(ks), torch.randn(vs), backend=backend)


def test_non_bool_tensor_mask_is_rejected():
    q, k, v, _, _ = make_inputs((1, 2, 2, 3, 3, 16))
    with pytest.raises(TypeError, match="bool"):
        attention(q, k, v, mask=torch.ones(3, 3), backend="eager")


def test_dispatch_log_records_backend():
    torch.manual_seed(0)
    q, k, v, _, _ = make_inputs((1, 2, 2, 3, 5, 16))
    dispatch_log(clear=True)
    attention(q, k, v, mask=causal())
    log = dispatch_log()
    assert len(log) == 1
    rec = log[-1]
    assert rec["backend"] == "sdpa" and rec["mask"] == "causal"
    assert rec["q_shape"] == (1, 2, 3, 16) and rec["k_shape"] == (1, 2, 5, 16)
    assert rec["dtype"] == "float64" and rec["count"] == 1
    attention(q, k, v, mask=causal())  # same call again: counted, not duplicated
    log = dispatch_log()
    assert len(log) == 1 and log[0]["count"] == 2
    attention(q, k, v, mask=causal(), return_weights=True)
    log = dispatch_log()
    assert len(log) == 2 and log[-1]["backend"] == "eager"
    attention(q, k, v, backend="eager")
    assert dispatch_log(clear=True)[-1]["mask"] == "none"
    assert dispatch_log() == []


def test_dispatch_log_dense_mask_kind():
    q, k, v, _, _ = make_inputs((1, 2, 2, 3, 3, 16))
    dispatch_log(clear=True)
    attention(q, k, v, mask=torch.ones(3, 3, dtype=torch.bool), backend="sdpa")
    assert dispatch_log(clear=True)[-1]["mask"] == "dense"


@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding"])
def test_custom_scale(backend, mask_name, reference):
    torch.manual_seed(0)
    shape = SHAPES["gqa-decode"]
    q, k, v, _, gen = make_inputs(shape)
    mask, allowed = hand_mask(mask_name, shape[0], shape[1], shape[3], shape[4], gen)
    out = attention(q, k, v, mask=mask, scale=0.7, backend=backend)
    ref, _ = reference(q, k, v, allowed, scale=0.7)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    default, _ = reference(q, k, v, allowed)
    assert not torch.allclose(out, default, atol=1e-3)
    # the default is 1/sqrt(D)
    out_default = attention(q, k, v, mask=mask, backend=backend)
    explicit = attention(q, k, v, mask=mask, scale=1 / math.sqrt(shape[-1]), backend=backend)
    torch.testing.assert_close(out_default, explicit)
    torch.testing.assert_close(out_default, default, rtol=1e-10, atol=1e-10)


def test_different_value_dim(reference):
    torch.manual_seed(0)
    q, k, _, _, gen = make_inputs((2, 4, 2, 3, 5, 16))
    v = torch.randn(2, 2, 5, 8, generator=gen, dtype=torch.float64)
    ref, _ = reference(q, k, v, None)
    for backend in ("eager", "sdpa"):
        out = attention(q, k, v, backend=backend)
        assert out.shape == (2, 4, 3, 8)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# -- dropout -------------------------------------------------------------------


def test_eager_dropout_zeroes_and_rescales_weights(reference):
    torch.manual_seed(0)
    shape = (2, 4, 2, 6, 6, 16)
    q, k, v, _, _ = make_inputs(shape)
    p = 0.5
    ref, ref_w = reference(q, k, v, torch.ones(6, 6, dtype=torch.bool).tril())
    torch.manual_seed(123)
    out, w = attention(q, k, v, mask=causal(), dropout_p=p, backend="eager", return_weights=True)
    assert not torch.allclose(out, ref)
    dropped = w == 0
    allowed = ref_w > 0
    assert (dropped & allowed).any() and (~dropped & allowed).any()
    torch.testing.assert_close(w[~dropped], ref_w[~dropped] / (1 - p), rtol=1e-12, atol=1e-12)
    # the output is exactly the dropped-out weights applied to the (repeated) values
    v_rep = v.repeat_interleave(2, dim=1)
    torch.testing.assert_close(out, w @ v_rep, rtol=1e-12, atol=1e-12)
    # same seed → same dropout pattern
    torch.manual_seed(123)
    out2 = attention(q, k, v, mask=causal(), dropout_p=p, backend="eager")
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
def test_dropout_changes_output_and_zero_dropout_is_deterministic(backend, reference):
    torch.manual_seed(0)
    shape = (2, 4, 4, 5, 5, 16)
    q, k, v, _, _ = make_inputs(shape)
    ref, _ = reference(q, k, v, torch.ones(5, 5, dtype=torch.bool).tril())
    torch.manual_seed(7)
    a = attention(q, k, v, mask=causal(), dropout_p=0.0, backend=backend)
    torch.manual_seed(8)
    b = attention(q, k, v, mask=causal(), dropout_p=0.0, backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, ref, rtol=1e-10, atol=1e-10)
    torch.manual_seed(7)
    d = attention(q, k, v, mask=causal(), dropout_p=0.5, backend=backend)
    assert not torch.isnan(d).any()
    assert not torch.allclose(d, ref, atol=1e-6)
