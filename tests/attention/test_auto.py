"""``backend="auto"``: which backend serves each situation, and the recorded reason."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import attention, dispatch_log
from attnlab.attention.backends import AttentionCall, choose, flex, registry
from attnlab.attention.masks import Mask, document
from attnlab.attention.masks import causal as causal_mask
from attnlab.attention.score_mods import ScoreMod, softcap

SHORT, LONG = 64, 1024  # LONG · LONG reaches registry.DENSE_LIMIT


def window() -> Mask:
    return Mask(lambda b, h, q, k: (q >= k) & (q - k < 32), "sliding_window", key=("sliding_window", 32))


def causal() -> Mask:
    return Mask(lambda b, h, q, k: q >= k, "causal", key=("causal",))


def padding() -> Mask:
    lengths = torch.tensor([3])
    return Mask(lambda b, h, q, k: k < lengths[b], "padding", per_batch=True)


LINEAR = ScoreMod(lambda s, b, h, q, k: s + (k - q).to(s.dtype), "linear", additive=True)


def call(t: int = SHORT, tq: int | None = None, grad: bool = False, dtype=torch.float32, **kwargs) -> AttentionCall:
    q = torch.zeros(1, 2, t if tq is None else tq, 16, dtype=dtype, requires_grad=grad)
    k = torch.zeros(1, 2, t, 16, dtype=dtype)
    return AttentionCall(q, k, k, **kwargs)


CASES = [
    # (situation, call kwargs, expected backend, words in the reason)
    ("weights", dict(mask=window(), return_weights=True), "eager", "weights"),
    ("topk", dict(topk=4), "eager", "top-k"),
    ("softcap short", dict(score_mod=softcap(5.0)), "eager", "non-additive"),
    ("softcap long no grad", dict(t=LONG, score_mod=softcap(5.0)), "flex", "non-additive"),
    ("softcap long training", dict(t=LONG, grad=True, score_mod=softcap(5.0)), "chunked", "forward-only"),
    ("no mask", dict(), "sdpa", "no mask"),
    ("causal long", dict(t=LONG, mask=causal()), "sdpa", "causal"),
    ("padding short", dict(mask=padding()), "sdpa", "data-dependent mask as dense"),
    ("padding long no grad", dict(t=LONG, mask=padding()), "chunked", "data-dependent mask on CPU would compile"),
    ("padding long training", dict(t=LONG, grad=True, mask=padding()), "chunked", "data-dependent mask, long"),
    ("dense long", dict(t=LONG, mask=torch.ones(LONG, LONG, dtype=torch.bool)), "sdpa", "dense"),
    ("window short", dict(mask=window()), "sdpa", "short"),
    ("window decode", dict(t=LONG, tq=1, mask=window()), "sdpa", "decode"),
    ("window long no grad", dict(t=LONG, mask=window()), "flex", "structured mask on flex"),
    ("window long training", dict(t=LONG, grad=True, mask=window()), "chunked", "forward-only"),
    ("window long float64", dict(t=LONG, dtype=torch.float64, mask=window()), "chunked", "float64"),
    ("window long dropout", dict(t=LONG, mask=window(), dropout_p=0.1), "chunked", "dropout"),
    ("additive mod short", dict(score_mod=LINEAR), "sdpa", "additive score mod as dense"),
    ("additive mod long training", dict(t=LONG, grad=True, score_mod=LINEAR), "chunked", "additive"),
]


@pytest.mark.parametrize("situation,kwargs,expected,words", CASES, ids=[c[0] for c in CASES])
def test_auto_choice(situation, kwargs, expected, words):
    name, reason = choose(call(**kwargs), "auto")
    assert name == expected, reason
    assert reason.startswith("auto: ") and words in reason


def test_flex_skipped_when_compile_budget_spent(monkeypatch):
    monkeypatch.setattr(flex, "compile_budget_left", lambda: 0)
    name, reason = choose(call(t=LONG, mask=window()), "auto")
    assert name == "chunked" and "budget" in reason


def test_explicit_backend_that_cannot_serve_raises():
    with pytest.raises(ValueError, match="flex.*forward-only"):
        choose(call(t=LONG, grad=True, mask=window()), "flex")
    with pytest.raises(ValueError, match="chunked.*weights"):
        choose(call(return_weights=True), "chunked")
    assert set(registry.BACKENDS) == {"eager", "sdpa", "flex", "chunked"}


def test_dispatch_log_records_the_rule():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, LONG, 16, generator=gen, requires_grad=True)
    k, v = torch.randn(2, 1, 2, LONG, 16, generator=gen)
    dispatch_log(clear=True)
    out = attention(q, k, v, mask=window())  # CPU training, long, structured → chunked
    ref = attention(q, k, v, mask=window(), backend="eager")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    qs, ks, vs = q[:, :, :SHORT].detach(), k[:, :, :SHORT], v[:, :, :SHORT]
    attention(qs, ks, vs, mask=window())  # short → dense sdpa
    attention(qs, ks, vs, score_mod=softcap(5.0))  # non-additive, short → eager
    log = dispatch_log(clear=True)
    assert [r["backend"] for r in log] == ["chunked", "eager", "sdpa", "eager"]
    assert "long sequence" in log[0]["reason"] and log[1]["reason"] == "requested"
    assert "short" in log[2]["reason"] and "non-additive" in log[3]["reason"]


def test_long_document_mask_trains_chunked_on_cpu():
    """A key-None predicate (document ids) on a long sequence: chunked, not a dense (B, 1, T, T) mask."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, LONG, 16, generator=gen, requires_grad=True)
    k, v = torch.randn(2, 1, 2, LONG, 16, generator=gen)
    ids = (torch.arange(LONG) // 300).view(1, LONG)  # (1, T): documents of 300 tokens
    mask = causal_mask() & document(ids)
    assert mask.key is None
    dispatch_log(clear=True)
    out = attention(q, k, v, mask=mask)
    (grad,) = torch.autograd.grad(out.square().sum(), q)
    log = dispatch_log(clear=True)
    assert [r["backend"] for r in log] == ["chunked"] and "data-dependent" in log[0]["reason"]
    ref = attention(q, k, v, mask=mask, backend="eager")
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), q)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)
    # a query attends nowhere across a boundary: the first token of document 2 sees itself only
    torch.testing.assert_close(out[:, :, 600], v[:, :, 600], rtol=1e-5, atol=1e-5)
