"""``auto`` reuses its answer for plain calls (no mask / causal, no score mod) and stays the table's answer."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.backends import AttentionCall, registry
from attnlab.attention.backends.registry import Rule
from attnlab.attention.masks import Mask, causal, sliding_window


def call(tq: int, tk: int = 64, mask: Mask | None = None, **kw) -> AttentionCall:
    q, k = torch.zeros(1, 2, tq, 16), torch.zeros(1, 2, tk, 16)
    return AttentionCall(q, k, k, mask=mask, **kw)


@pytest.mark.parametrize("tq, tk, mask", [(64, 64, None), (64, 64, causal()), (1, 64, causal()), (1, 64, None),
                                          (1024, 1024, causal())])
def test_reused_answer_is_the_table_walk(tq, tk, mask):
    c = call(tq, tk, mask)
    assert registry._plain_key(c) is not None
    first, again = registry.auto(c), registry.auto(call(tq, tk, mask))
    assert first == again == registry._walk(c)


@pytest.mark.parametrize("kw", [{"mask": sliding_window(8)}, {"return_weights": True}, {"topk": 4},
                                {"mask": Mask(lambda b, h, q, k: q >= k, "causal")}])  # causal kind, no key
def test_other_calls_walk_the_table(kw):
    assert registry._plain_key(call(64, **kw)) is None


def test_a_changed_table_is_walked(monkeypatch):
    registry.auto(call(64, mask=causal()))  # an answer to reuse
    first = Rule("everything eager", lambda s: "eager")
    monkeypatch.setattr(registry, "AUTO_RULES", [first, *registry.AUTO_RULES])
    assert registry.auto(call(64, mask=causal())) == ("eager", "auto: everything eager")
    monkeypatch.undo()
    assert registry.auto(call(64, mask=causal()))[0] == "sdpa"
