"""The chunked (blockwise) backend against the independent float64 reference: values and gradients."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import attention
from attnlab.attention.backends import AttentionCall, chunked
from attnlab.attention.masks import Mask
from attnlab.attention.score_mods import ScoreMod, softcap

# (B, H, Hkv, Tq, Tk, D)
SHAPES = {"mha-square": (2, 2, 2, 40, 40, 8), "gqa-tq<tk": (2, 4, 2, 23, 50, 8)}


def window_mask(w: int) -> Mask:
    return Mask(lambda b, h, q, k: (q >= k) & (q - k < w), "sliding_window", key=("sliding_window", w))


def hand_mask(name: str, b: int, tq: int, tk: int):
    """(mask for attention(), allowed (B, 1, Tq, Tk) built with explicit loops over absolute positions)."""
    off = tk - tq
    doc = [[j * 3 // tk for j in range(tk)], [min(j // 5, 3) for j in range(tk)]][:b]
    lengths = [tk - 3, 4][:b]  # row 1: queries before position 4 ... and all of them see only keys < 4

    def loops(pred) -> torch.Tensor:
        return torch.tensor([[[[bool(pred(bi, off + i, j)) for j in range(tk)] for i in range(tq)]]
                             for bi in range(b)])

    if name == "none":
        return None, loops(lambda bi, p, j: True)
    if name == "causal":
        return Mask(lambda bb, h, q, k: q >= k, "causal", key=("causal",)), loops(lambda bi, p, j: j <= p)
    if name == "window":
        return window_mask(6), loops(lambda bi, p, j: 0 <= p - j < 6)
    if name == "document&causal":
        ids = torch.tensor(doc)
        m = Mask(lambda bb, h, q, k: (ids[bb, q] == ids[bb, k]) & (q >= k), "document&causal", per_batch=True)
        return m, loops(lambda bi, p, j: j <= p and doc[bi][p] == doc[bi][j])
    if name == "future&padding":  # strictly-future keys under padding: fully masked rows
        lens = torch.tensor(lengths)
        m = Mask(lambda bb, h, q, k: (k > q) & (k < lens[bb]), "future&padding", per_batch=True)
        return m, loops(lambda bi, p, j: p < j < lengths[bi])
    if name == "dense":
        t = torch.rand(tq, tk, generator=torch.Generator().manual_seed(3)) < 0.3
        t[1] = False
        return t, t.expand(b, 1, tq, tk).clone()
    raise KeyError(name)


def make_inputs(shape, seed=0):
    b, h, hkv, tq, tk, d = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, hkv, tk, d, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, hkv, tk, d, generator=gen, dtype=torch.float64, requires_grad=True)
    return q, k, v


def check(out, ref, inputs, atol=1e-10):
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=atol)
    g = torch.randn_like(ref)
    got = torch.autograd.grad((out * g).sum(), inputs)
    want = torch.autograd.grad((ref * g).sum(), inputs)
    for a, b in zip(got, want, strict=False):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=atol)


@pytest.mark.parametrize("block", [5, 16, 1000])
@pytest.mark.parametrize("mask_name", ["none", "causal", "window", "document&causal", "future&padding", "dense"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_forward_and_gradients_match_reference(shape_name, mask_name, block, reference):
    shape = SHAPES[shape_name]
    b, _, _, tq, tk, _ = shape
    q, k, v = make_inputs(shape)
    mask, allowed = hand_mask(mask_name, b, tq, tk)
    out = chunked.run(AttentionCall(q, k, v, mask=mask), block_size=block)
    ref, _ = reference(q, k, v, allowed)
    check(out, ref, (q, k, v))


def _softcap_bias(q, k, cap, scale):
    """cap·tanh(s/cap) − s for s = scale · q kᵀ (GQA-expanded), so reference(bias=...) applies softcap."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    return cap * torch.tanh(s / cap) - s


def _linear_bias(h, tq, tk):
    """0.05 · (h + 1) · (kv − q_abs), built from absolute positions (query i at tk − tq + i)."""
    qpos = torch.arange(tk - tq, tk, dtype=torch.float64).view(tq, 1)
    kpos = torch.arange(tk, dtype=torch.float64).view(1, tk)
    slopes = 0.05 * torch.arange(1, h + 1, dtype=torch.float64).view(1, h, 1, 1)
    return slopes * (kpos - qpos)  # (1, H, Tq, Tk)


LINEAR = ScoreMod(lambda s, b, h, q, k: s + 0.05 * ((h + 1) * (k - q)).to(s.dtype), "linear_bias", additive=True)


@pytest.mark.parametrize("mod_name", ["softcap", "linear", "softcap+linear"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_score_mods_match_reference(shape_name, mod_name, reference):
    shape = SHAPES[shape_name]
    b, h, _, tq, tk, d = shape
    q, k, v = make_inputs(shape, seed=1)
    mask, allowed = hand_mask("window", b, tq, tk)
    mod = {"softcap": softcap(2.0), "linear": LINEAR, "softcap+linear": softcap(2.0).then(LINEAR)}[mod_name]
    out = chunked.run(AttentionCall(q, k, v, mask=mask, score_mod=mod), block_size=8)
    bias = torch.zeros(1, h, tq, tk, dtype=torch.float64)
    if "softcap" in mod_name:
        bias = bias + _softcap_bias(q, k, 2.0, d ** -0.5)
    if "linear" in mod_name:
        bias = bias + _linear_bias(h, tq, tk)
    ref, _ = reference(q, k, v, allowed, bias)
    check(out, ref, (q, k, v))


def test_bias_tensor_and_no_checkpoint(reference):
    shape = SHAPES["gqa-tq<tk"]
    b, h, _, tq, tk, _ = shape
    q, k, v = make_inputs(shape, seed=2)
    bias = torch.randn(b, 1, tq, tk, dtype=torch.float64, requires_grad=True)
    mask, allowed = hand_mask("document&causal", b, tq, tk)
    out = chunked.run(AttentionCall(q, k, v, mask=mask, bias=bias), block_size=7, use_checkpoint=False)
    ref, _ = reference(q, k, v, allowed, bias)
    check(out, ref, (q, k, v, bias))


def test_fully_masked_block_is_zero_with_zero_grad(reference):
    q, k, v = make_inputs((1, 2, 2, 32, 32, 8))
    mask = Mask(lambda b, h, qi, ki: (qi >= 16) & (ki <= qi), "late", key=("late",))
    allowed = torch.tensor([[i >= 16 and j <= i for j in range(32)] for i in range(32)])
    out = chunked.run(AttentionCall(q, k, v, mask=mask), block_size=16)
    assert chunked.plan(AttentionCall(q, k, v, mask=mask), 16)[0][2:] == (0, 0)  # block 0 skipped
    assert (out[:, :, :16] == 0).all()
    check(out, reference(q, k, v, allowed)[0], (q, k, v))


def test_plan_skips_keys_outside_the_window_and_is_cached():
    q = torch.zeros(1, 1, 64, 8)
    call = AttentionCall(q, q, q, mask=window_mask(8))
    p = chunked.plan(call, 16)
    assert p == [(s, s + 16, max(0, s - 7), s + 16) for s in range(0, 64, 16)]
    assert chunked.plan(AttentionCall(q, q, q, mask=window_mask(8)), 16) is p  # same key: cached
    assert chunked.plan(AttentionCall(q, q, q, mask=window_mask(4)), 16) is not p


def test_dropout_is_reproduced_by_checkpoint_recomputation():
    q, k, v = make_inputs((1, 2, 2, 24, 24, 8))
    grads = []
    for ckpt in (True, False):
        torch.manual_seed(5)
        out = chunked.run(AttentionCall(q, k, v, mask=window_mask(5), dropout_p=0.5), block_size=8,
                          use_checkpoint=ckpt)
        grads.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    for a, b in zip(*grads, strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(5)
    plain = chunked.run(AttentionCall(q, k, v, mask=window_mask(5)), block_size=8)
    assert not torch.allclose(grads[0][0], plain)


def test_via_attention_and_unsupported():
    q, k, v = make_inputs((1, 2, 2, 6, 6, 8))
    ref = attention(q, k, v, mask=window_mask(3), backend="eager")
    torch.testing.assert_close(attention(q, k, v, mask=window_mask(3), backend="chunked"), ref)
    with pytest.raises(ValueError, match="weights"):
        attention(q, k, v, backend="chunked", return_weights=True)
    with pytest.raises(ValueError, match="top-k"):
        attention(q, k, v, backend="chunked", topk=2)
    with pytest.raises(ValueError, match="block_size"):
        chunked.run(AttentionCall(q, k, v), block_size=0)
