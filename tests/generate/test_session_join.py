"""Session.join (rows of a prefilled session joining a running batch) and Session.trim (dropping
columns that became padding in every row) keep every row decoding as it would alone: the same
greedy tokens and logits at every step, with and without the cache, for gpt-like (learned
positions) and llama-like (RoPE, GQA) decoders; sessions that cannot be joined say why."""

import pytest
import torch

from attnlab import config
from attnlab.generate import Session
from attnlab.models import build
from attnlab.models.rnn import RNNLanguageModel, RNNLMConfig
from tests.generate._batching import greedy_logits, left_pad
from tests.generate.test_extras import PADDABLE, Bigram, make

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention

FIRST = [3, 7, 1]  # decodes alone for a few steps before the others join
JOINERS = [[5, 2, 9, 4, 1, 8, 6, 10, 2], [8, 8, 6], [4]]  # the first is wider than the running batch
PRESETS = ["gpt-tiny", "llama-tiny"]


class Rows:
    """The batch's rows (their prompts) and every step's token and logits per row."""

    def __init__(self, prompts: list[list[int]]):
        self.prompts = prompts
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.logits: list[list[torch.Tensor]] = [[] for _ in prompts]

    def step(self, session: Session, logits: torch.Tensor) -> None:
        """Greedy step of every row from its (N, V) logits."""
        picked = logits.argmax(-1)  # (N,)
        session.append(picked)
        for i, t in enumerate(picked.tolist()):
            self.tokens[i].append(t)
            self.logits[i].append(logits[i])

    def keep(self, index: list[int]) -> None:
        self.prompts, self.tokens, self.logits = ([x[i] for i in index] for x in (self.prompts, self.tokens,
                                                                                    self.logits))

    def add(self, other: "Rows") -> None:
        self.prompts, self.tokens, self.logits = (self.prompts + other.prompts, self.tokens + other.tokens,
                                                  self.logits + other.logits)


def session(model, prompts: list[list[int]], use_cache: bool) -> Session:
    """A session over left-padded ``prompts`` (no mask for a single prompt)."""
    ids, mask = left_pad(prompts, 11)
    return Session(model, ids, 12, attention_mask=mask if len(prompts) > 1 else None, use_cache=use_cache)


def check_cache(s: Session) -> None:
    """Every layer caches exactly the fed columns of every row."""
    if s.cache is not None:
        assert all(layer.k.shape[0] == s.tokens.size(0) and layer.k.size(-2) == layer.v.size(-2) == s.consumed
                   for layer in s.cache.layers)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("use_cache", [True, False])
@torch.no_grad()
def test_join_then_trim_matches_each_row_alone(preset, use_cache):
    model = make(preset, PADDABLE[preset])
    running, rows = session(model, [FIRST], use_cache), Rows([FIRST])
    for _ in range(3):
        rows.step(running, running.next_logits())
    logits = running.next_logits()  # (1, V)
    new = session(model, JOINERS, use_cache)
    assert running.can_join() and new.can_join() != use_cache  # cached: prefill first
    logits = torch.cat((logits, new.next_logits()))  # (4, V)
    assert running.can_join(new)
    running.join(new)
    rows.add(Rows(JOINERS))
    width = max(len(FIRST) + 3, len(JOINERS[0]))
    assert running.tokens.shape == running.padding.shape == (4, width)
    assert running.padding.sum(1).tolist() == [len(FIRST) + 3] + [len(p) for p in JOINERS]
    assert running.generated.shape == (4, 0)
    check_cache(running)
    for step in range(6):
        rows.step(running, logits)
        if step == 2:  # the widest prompt leaves: its left columns are padding for everyone else
            running.reorder(torch.tensor([0, 2, 3]))
            rows.keep([0, 2, 3])
            before = running.tokens.size(1)
            dropped = running.trim()
            assert dropped == len(JOINERS[0]) - (len(FIRST) + 3) and running.tokens.size(1) == before - dropped
            assert bool(running.padding[:, 0].any()) and running.trim() == 0
            assert running.tokens.size(1) == len(FIRST) + 3 + step + 1
        logits = running.next_logits()
        check_cache(running)
    for prompt, tokens, steps in zip(rows.prompts, rows.tokens, rows.logits, strict=False):
        alone_tokens, alone_logits = greedy_logits(model, torch.tensor([prompt]), len(tokens), use_cache=use_cache)
        assert tokens == alone_tokens[0].tolist()
        torch.testing.assert_close(torch.stack(steps), alone_logits[0], atol=1e-9, rtol=0)


@torch.no_grad()
def test_join_needs_the_left_padding():
    """The joined rows' padding matters: attended to, it changes their logits (the test above can fail)."""
    model = make("llama-tiny", PADDABLE["llama-tiny"])
    running, new = session(model, [FIRST], True), session(model, JOINERS[1:], True)
    logits = torch.cat((running.next_logits(), new.next_logits()))
    running.join(new)
    running.append(logits.argmax(-1))
    masked = running.next_logits()  # (3, V)
    plain = Session(model, running.tokens, 0).next_logits()  # the same tokens, padding attended to
    torch.testing.assert_close(plain[0], masked[0])  # the row that gained no padding
    assert not torch.allclose(plain[2], masked[2], atol=1e-3)


def test_trim_without_padding_is_a_no_op():
    model = make("gpt-tiny", PADDABLE["gpt-tiny"])
    s = session(model, [FIRST, [4, 5, 6]], True)
    s.next_logits()
    assert s.trim() == 0 and s.tokens.size(1) == 3


@torch.no_grad()
def test_trim_before_the_prefill_drops_tokens_only():
    """Columns padded in every row are dropped before anything is cached; rows decode as before."""
    model = make("gpt-tiny", PADDABLE["gpt-tiny"])
    ids, mask = left_pad([FIRST, [5, 2, 9, 4]], 11)
    # padded in front
    ids, mask = (torch.cat((x.new_full((2, 1), fill), x), dim=1) for x, fill in ((ids, 11), (mask, 0)))
    s = Session(model, ids, 3, attention_mask=mask)
    assert s.trim() == 1 and s.consumed == 0 and s.tokens.shape == (2, 4) and s.padding.shape == (2, 4)
    for _ in range(3):
        logits = s.next_logits()
        s.append(logits.argmax(-1))
    assert s.generated.tolist() == greedy_logits(model, ids, 3, mask)[0].tolist()


def cached_after_prefill(model, prompt=FIRST) -> Session:
    s = Session(model, torch.tensor([prompt]), 2)
    s.next_logits()
    return s


def test_join_refuses_what_it_cannot_pad():
    torch.manual_seed(0)
    gpt = make("gpt-tiny", PADDABLE["gpt-tiny"])
    shrink = ["model.vocab_size=13", "model.block_size=16", "model.n_layer=1", "model.n_decoder_layer=1",
              "model.n_head=2", "model.d_model=16", "model.d_ff=32", "model.dropout=0.0"]
    t5 = build(config.load("t5-tiny", shrink)).eval()
    linear = make("gpt-tiny", ["model.n_head=2", "model.mixer=linear"])
    rnn = RNNLanguageModel(RNNLMConfig(vocab_size=13, d_emb=8, d_hidden=8, n_layers=1)).eval()
    cases = [
        (Session(t5, torch.tensor([FIRST]), 2), "encoder–decoder"),
        (Session(Bigram(torch.zeros(13, 13).tolist()), torch.tensor([FIRST]), 2), "does not take a padding"),
        (cached_after_prefill(linear), "KVCache of LinearState layers cannot be padded"),
        (cached_after_prefill(rnn), "RNNState cannot be padded"),
        (Session(gpt, torch.tensor([FIRST]), 2), "call next_logits"),  # not prefilled
    ]
    with torch.no_grad():
        for s, match in cases:
            assert not s.can_join()
            with pytest.raises(ValueError, match=match):
                s.join(s)
            good = cached_after_prefill(gpt)
            assert good.can_join() and not good.can_join(s)
            with pytest.raises(ValueError, match=match):  # the refusal names what is wrong with ``s``
                good.join(s)
            assert s.trim() == 0
        a, other_model = cached_after_prefill(gpt), cached_after_prefill(make("gpt-tiny", PADDABLE["gpt-tiny"]))
        with pytest.raises(ValueError, match="same model"):
            a.join(other_model)
        with pytest.raises(ValueError, match="use_cache"):
            a.join(Session(gpt, torch.tensor([FIRST]), 2, use_cache=False))
        assert a.tokens.shape == (1, len(FIRST)) and a.padding is None  # refusals leave the session as it was
