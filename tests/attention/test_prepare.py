"""prepare_masks: mask caches built before torch.compile, so compiled graphs read them.

The regressions guarded here: (1) inside a compiled model the Flex backend counted cache
hits in a module dict, which dynamo turned into a guard that failed on every call, so
the model recompiled each call until dynamo's limit and then ran uncompiled; (2) a
chunked block plan built inside the trace broke the graph at every layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as flex_api
from torch._dynamo.utils import counters

from attnlab import config
from attnlab.attention.backends import chunked, flex, prepare_masks
from attnlab.models import build

pytestmark = pytest.mark.slow


def windowed_model(backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = config.load("gpt-tiny-window", ["model.vocab_size=128", "model.n_layer=2", "model.d_model=64",
                                          "model.n_head=4", "model.block_size=256", "model.position=rope",
                                          "model.attention.global_tokens=0", "model.attention.window=16",
                                          f"model.attention.backend={backend}"])
    return build(cfg)


def logits(out):
    return out[0] if isinstance(out, tuple) else out


def test_prepare_builds_caches_answers_zeros_and_reports_backends(one_thread):
    model = windowed_model("chunked")
    x = torch.randint(0, 128, (2, 64))
    chunked.clear_cache()
    used = prepare_masks(model, x, grad=True)
    assert [r["backend"] for r in used] == ["chunked", "chunked"]  # one per layer
    assert used[0]["mask"] == "sliding_window" and used[0]["q_shape"] == (2, 4, 64, 16)
    assert len(chunked.STATE.plans) == 1
    flex.stats(reset=True)
    if flex.available():
        model = windowed_model("flex").eval()
        used = prepare_masks(model, x, grad=False)
        assert {r["backend"] for r in used} == {"flex"}
        st = flex.stats()
        assert st["cached_block_masks"] == 1 and st["calls"] == 0  # the mask, not the kernel
    with pytest.raises(RuntimeError, match="does not nest"):
        prepare_masks(lambda: prepare_masks(model, x, grad=False), grad=False)


def test_prepare_chooses_backends_for_the_pass_that_will_run():
    model = windowed_model("auto")
    x = torch.randint(0, 128, (1, 256))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("attnlab.attention.backends.registry.DENSE_LIMIT", 1)  # every call counts as "long"
        train_pass = prepare_masks(model, x, grad=True)
        eval_pass = prepare_masks(model.eval(), x, grad=False)
    assert {r["backend"] for r in train_pass} == {"chunked"}  # Flex has no CPU backward
    if flex.available():
        assert {r["backend"] for r in eval_pass} == {"flex"}


@pytest.mark.skipif(not flex.available(), reason="needs FlexAttention + dynamo")
@pytest.mark.parametrize("prepared", [True, False])
def test_compiled_flex_model_compiles_once(prepared, one_thread, monkeypatch):
    built = []  # counted for the prepared run only: traced, the counter itself would become a guard
    real = flex_api.create_block_mask
    if prepared:
        monkeypatch.setattr(flex_api, "create_block_mask", lambda *a, **k: built.append(1) or real(*a, **k))
    flex.stats(reset=True)
    model = windowed_model("flex").eval()
    x = torch.randint(0, 128, (2, 128))
    if prepared:
        prepare_masks(model, x, grad=False)
        assert len(built) == 1
    compiled = torch.compile(model)
    counters.clear()
    with torch.no_grad():
        outs = [logits(compiled(x)) for _ in range(10)]  # past dynamo's recompile limit (8) if it recompiled
        assert counters["stats"]["unique_graphs"] == 1
        model(x[:, :32])  # an eager call at another shape adds a cache entry (and compiles its own kernel)
        graphs = counters["stats"]["unique_graphs"]
        outs.append(logits(compiled(x)))
        assert counters["stats"]["unique_graphs"] == graphs  # the model's guards still hold
        eager = logits(model(x))
    assert not counters["graph_break"]
    if prepared:
        assert len(built) == 2  # prepare + the eager call; none inside the compiled calls
    for out in outs:
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


def test_compiled_chunked_training_has_no_graph_break(one_thread):
    model = windowed_model("chunked")
    x = torch.randint(0, 128, (2, 64))
    chunked.clear_cache()
    prepare_masks(model, x, grad=True)
    compiled = torch.compile(model)
    counters.clear()
    for _ in range(3):
        logits(compiled(x)).float().square().mean().backward()
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"], dict(counters["graph_break"])
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits(model(x)).float().square().mean().backward()
    for g, p in zip(grads, model.parameters(), strict=False):
        torch.testing.assert_close(g / 3, p.grad, rtol=1e-4, atol=1e-6)
