"""The backend contract: a user-registered backend, the auto rule table, backend state, the shared dense kernel."""

from __future__ import annotations

import types

import pytest
import torch

from attnlab.attention import attend, attention, dispatch_log, register_backend
from attnlab.attention.backends import (
    AUTO_RULES,
    BACKENDS,
    AttentionCall,
    Rule,
    base,
    choose,
    chunked,
    dense,
    eager,
    flex,
    prepare_masks,
    registry,
    sdpa,
)
from attnlab.attention.masks import Mask
from attnlab.attention.score_mods import softcap
from attnlab.errors import AttnlabError


def window() -> Mask:
    return Mask(lambda b, h, q, k: (q >= k) & (q - k < 4), "sliding_window", key=("sliding_window", 4))


def qkv(t: int = 12, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, t, 16, generator=gen).to(dtype) for _ in range(3))  # (B, H, T, D)


class Mine:
    """A toy backend: eager's math, but it refuses dropout and counts what it is asked."""

    def __init__(self):
        self.prepared, self.ran = 0, 0

    def unsupported(self, call: AttentionCall) -> str | None:
        return "mine has no dropout (pass dropout_p=0)" if call.dropout_p else None

    def prepare(self, call: AttentionCall) -> None:
        self.prepared += 1

    def run(self, call: AttentionCall):
        self.ran += 1
        return eager.run(call)


@pytest.fixture
def mine():
    impl = Mine()
    register_backend("mine", impl)
    yield impl
    BACKENDS.pop("mine")


def test_a_registered_backend_runs_through_attention(mine):
    q, k, v = qkv()
    dispatch_log(clear=True)
    out = attention(q, k, v, mask=window(), backend="mine")
    assert torch.equal(out, attention(q, k, v, mask=window(), backend="eager"))
    assert mine.ran == 1
    assert dispatch_log(clear=True)[0]["backend"] == "mine"
    with pytest.raises(ValueError, match="'mine' cannot serve this call: mine has no dropout"):
        attention(q, k, v, backend="mine", dropout_p=0.1)
    model = lambda x: attention(x, x, x, mask=window(), backend="mine")  # noqa: E731
    used = prepare_masks(model, q, grad=False)
    assert [r["backend"] for r in used] == ["mine"] and mine.prepared == 1 and mine.ran == 1
    assert choose(AttentionCall(q, k, v, mask=window()), "auto")[0] != "mine"  # auto picks built-in backends only


def test_register_backend_refuses_bad_names_and_objects(mine):
    with pytest.raises(AttnlabError, match="already registered; pass replace=True"):
        register_backend("mine", Mine())
    register_backend("mine", Mine(), replace=True)
    with pytest.raises(AttnlabError, match="'auto' is the automatic choice"):
        register_backend("auto", Mine())
    with pytest.raises(AttnlabError, match="lacks prepare"):
        register_backend("half", types.SimpleNamespace(unsupported=lambda c: None, run=lambda c: c.q))
    with pytest.raises(ValueError, match="unknown attention backend 'nope'; choose one of auto, eager, sdpa, flex"):
        attention(*qkv(), backend="nope")


def test_builtin_backends_implement_the_contract():
    for name in ("eager", "sdpa", "flex", "chunked"):
        assert all(callable(getattr(BACKENDS[name], m)) for m in base.BACKEND_METHODS), name


def test_auto_is_an_ordered_table_of_named_rules(monkeypatch):
    names = [rule.name for rule in AUTO_RULES]
    assert len(set(names)) == len(names) and names[0] == "weights requested" and names[-1] == "dense mask"
    q, k, v = qkv()
    call = AttentionCall(q, k, v, mask=window())
    assert choose(call, "auto") == ("sdpa", "auto: structured mask as dense mask/bias, short sequence")
    # the first rule that names a backend wins: a rule put in front decides
    monkeypatch.setattr(registry, "AUTO_RULES", [Rule("always chunked", lambda s: "chunked"), *AUTO_RULES])
    assert choose(call, "auto") == ("chunked", "auto: always chunked")


@pytest.mark.parametrize("kwargs,backend", [
    (dict(mask=window()), "sdpa"),
    (dict(score_mod=softcap(5.0)), "eager"),
    (dict(mask=Mask(lambda b, h, q, k: k < 9, "padding", per_batch=True)), "sdpa"),
])
def test_auto_traces_without_a_graph_break(kwargs, backend):
    q, k, v = qkv()
    name, _ = choose(AttentionCall(q, k, v, **kwargs), "auto")
    assert name == backend

    def fn(q, k, v):
        return attention(q, k, v, **kwargs)

    compiled = torch.compile(fn, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(q, k, v), fn(q, k, v), rtol=0, atol=0)


def test_backend_state_lives_in_one_object_with_reset():
    for module in (base, dense, eager, sdpa, flex, chunked):  # no module-level caches or counters
        loose = [n for n, x in vars(module).items() if not n.startswith("__") and isinstance(x, (dict, list, set))]
        assert not loose, (module.__name__, loose)
    q, k, v = qkv(t=40)
    chunked.STATE.reset()
    chunked.plan(AttentionCall(q, k, v, mask=window()), 16)
    assert len(chunked.STATE.plans) == 1
    chunked.STATE.reset()
    assert not chunked.STATE.plans
    flex.STATE.counters["calls"] += 3
    flex.STATE.block_masks[("fake",)] = object()
    kernel, signatures = flex.STATE.kernel, set(flex.STATE.signatures)
    flex.STATE.reset()  # counters and block masks; the compiled kernel stays
    assert flex.stats() == dict.fromkeys([*flex.COUNTERS, "cached_block_masks"], 0)
    assert flex.STATE.kernel is kernel and flex.STATE.signatures == signatures


def test_masked_softmax_and_the_half_precision_rule():
    assert dense.compute_dtype(torch.float16) == dense.compute_dtype(torch.bfloat16) == torch.float32
    assert dense.compute_dtype(torch.float64) == torch.float64 and dense.compute_dtype(torch.float32) == torch.float32
    scores = torch.randn(2, 3, 5, requires_grad=True)
    allowed = torch.tensor([True, False, True, False, False]).expand(2, 3, 5).clone()
    allowed[1, 2] = False  # a row that may attend to nothing
    w = dense.masked_softmax(scores, allowed)
    assert torch.equal(w[1, 2], torch.zeros(5)) and torch.allclose(w[0].sum(-1), torch.ones(3))
    assert (w[~allowed] == 0).all()
    w.sum().backward()
    assert torch.isfinite(scores.grad).all()
    top = dense.masked_softmax(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), None, topk=2)
    assert top[0, 0] == 0 and top[0, 3] == 0 and torch.isclose(top.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_eager_chunked_and_attend_share_one_kernel(dtype):
    q, k, v = qkv(t=20, seed=3, dtype=dtype)
    out = chunked.run(AttentionCall(q, k, v, mask=window()), block_size=20)  # one block: the eager computation
    assert torch.equal(out, attention(q, k, v, mask=window(), backend="eager"))
    allowed = window().dense(1, 2, 20, 20, q.device)  # (1|B, 1|H, T, T)
    scores = (q @ k.transpose(-2, -1)).flatten(0, 1)  # (H, T, T)
    _, weights = attend(scores, v.flatten(0, 1), allowed.flatten(0, 1))
    ref = dense.masked_softmax(scores.to(dense.compute_dtype(dtype)), allowed.flatten(0, 1)).to(dtype)
    assert torch.equal(weights, ref)
