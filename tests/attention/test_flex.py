"""The Flex backend (CPU forward) against the independent float64 reference.

Compiling flex on CPU costs seconds per specialisation, so the value tests use two
calls: plain causal (square), and one call that combines GQA, Tq < Tk, a sliding
window, document ids, key padding (some rows fully masked) and a chained score mod
(softcap then an additive position bias). Everything else reuses those compiles.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import attention
from attnlab.attention.backends import flex
from attnlab.attention.masks import Mask
from attnlab.attention.score_mods import ScoreMod, softcap

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not flex.available(), reason="needs FlexAttention + dynamo")]

CAUSAL_SHAPE = (1, 2, 128, 16)  # (B, H, T, D)


def causal_mask() -> Mask:
    return Mask(lambda b, h, q, k: q >= k, "causal", key=("causal",))


def causal_inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*CAUSAL_SHAPE, generator=gen) for _ in range(3))


def test_causal_matches_reference_and_reuses_block_mask_and_kernel(reference):
    t = CAUSAL_SHAPE[2]
    allowed = torch.tensor([[j <= i for j in range(t)] for i in range(t)])
    q, k, v = causal_inputs(0)
    out = attention(q, k, v, mask=causal_mask(), backend="flex")
    ref, _ = reference(q, k, v, allowed)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    before = flex.stats()
    q, k, v = causal_inputs(1)  # same shapes, new tensors, a fresh (equal) Mask object
    out = attention(q, k, v, mask=causal_mask(), backend="flex")
    torch.testing.assert_close(out.double(), reference(q, k, v, allowed)[0], rtol=1e-5, atol=1e-5)
    after = flex.stats()
    assert after["block_mask_hits"] == before["block_mask_hits"] + 1
    assert after["block_mask_misses"] == before["block_mask_misses"]
    assert after["compiles"] == before["compiles"]  # no recompilation
    assert after["calls"] == before["calls"] + 1


def test_structured_mask_gqa_offset_and_score_mods_match_reference(reference):
    b, h, hkv, tq, tk, d, w, cap = 2, 4, 2, 96, 160, 16, 24, 5.0
    off = tk - tq
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, tq, d, generator=gen)
    k = torch.randn(b, hkv, tk, d, generator=gen)
    v = torch.randn(b, hkv, tk, d, generator=gen)
    doc = [[0] * 50 + [1] * 110, [0] * 10 + [1] * 150]
    valid = [[True] * tk, [not (100 <= j < 140) for j in range(tk)]]  # row 1: queries ~123..139 see nothing
    ids, ok = torch.tensor(doc), torch.tensor(valid)
    window = Mask(lambda bb, hh, qi, ki: (qi >= ki) & (qi - ki < w), "sliding_window", key=("sliding_window", w))
    rest = Mask(lambda bb, hh, qi, ki: (ids[bb, qi] == ids[bb, ki]) & ok[bb, ki], "document&key_padding",
                per_batch=True)
    linear = ScoreMod(lambda s, bb, hh, qi, ki: s + 0.05 * ((hh + 1) * (ki - qi)).to(s.dtype), "linear",
                      additive=True)
    out = attention(q, k, v, mask=window & rest, score_mod=softcap(cap).then(linear), backend="flex")

    allowed = torch.tensor([[[[0 <= off + i - j < w and doc[bi][off + i] == doc[bi][j] and valid[bi][j]
                               for j in range(tk)] for i in range(tq)]] for bi in range(b)])
    assert (~allowed.any(-1)).any()  # some fully masked rows
    qd, kd = q.double(), k.double().repeat_interleave(h // hkv, dim=1)
    s = torch.einsum("bhid,bhjd->bhij", qd, kd) * d ** -0.5
    pos_q = torch.arange(off, tk, dtype=torch.float64).view(tq, 1)
    pos_k = torch.arange(tk, dtype=torch.float64).view(1, tk)
    slopes = 0.05 * torch.arange(1, h + 1, dtype=torch.float64).view(1, h, 1, 1)
    bias = cap * torch.tanh(s / cap) - s + slopes * (pos_k - pos_q)
    ref, _ = reference(q, k, v, allowed, bias)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert flex.stats()["block_mask_uncached"] >= 1  # key None (captures tensors): rebuilt per call


def test_recompile_limit_raises_instead_of_running_unfused():
    q, k, v = causal_inputs(0)
    attention(q, k, v, mask=causal_mask(), backend="flex")  # compiled (or reused) above
    q2 = torch.randn(1, 2, 64, 16)  # a new shape would need one more compile
    with torch._dynamo.config.patch(recompile_limit=1):
        with pytest.raises(flex.FlexRecompileError, match="recompile_limit"):
            attention(q2, q2, q2, mask=causal_mask(), backend="flex")


def test_unsupported_reasons():
    q, k, v = causal_inputs(0)
    cases = [
        (dict(return_weights=True), "weights"),
        (dict(mask=torch.ones(128, 128, dtype=torch.bool)), "dense tensor mask"),
        (dict(dropout_p=0.1), "dropout"),
        (dict(topk=3), "top-k"),
        (dict(bias=torch.zeros(128, 128)), "bias"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            attention(q, k, v, backend="flex", **kwargs)
    with pytest.raises(ValueError, match="forward-only"):
        attention(q.clone().requires_grad_(), k, v, mask=causal_mask(), backend="flex")
    with pytest.raises(ValueError, match="float64"):
        attention(q.double(), k.double(), v.double(), backend="flex")
    with pytest.raises(ValueError, match="head dims"):
        attention(q[..., :12], k[..., :12], v[..., :12], backend="flex")


def test_available_traces_without_a_graph_break():
    import torch

    from attnlab.attention.backends import flex

    def probe(x):
        return x + 1 if flex.available() else x - 1

    compiled = torch.compile(probe, fullgraph=True, backend="eager")  # fullgraph: a break raises
    x = torch.zeros(2)
    assert torch.equal(compiled(x), probe(x))
