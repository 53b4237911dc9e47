"""Beam search parity with ``transformers.generate``: same sequences and scores on imported models."""

import os

import pytest
import torch

from attnlab.generate import beam_search, generate
from attnlab.interop.hf import from_hf
from tests.interop._parity import F32_ATOL

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention

N = 12  # new tokens
SETTINGS = [  # (num_beams, length_penalty, early_stopping, num_return_sequences)
    (2, 1.0, False, 1),
    (2, 2.0, False, 2),  # False: transformers' stopping heuristic (with an exact stop GPT-2 and T5 differ here)
    (3, 1.0, False, 2),
    (3, 2.0, False, 1),
    (4, 0.6, False, 4),
    (2, 1.0, True, 2),
    (3, 0.0, True, 3),
    (3, 1.0, "never", 3),
    (4, 2.0, "never", 2),
]


def _inputs(vocab: int, encoder_decoder: bool):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, vocab, (2, 9 if encoder_decoder else 5), generator=g)
    mask = torch.ones_like(ids)
    if encoder_decoder:
        mask[1, 6:] = 0  # a padded source row
    return ids, mask


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_beam_search_matches_transformers(family, tiny_hf):
    ref = tiny_hf(family, seed=12, spread=0.3)  # peaked enough for EOS to compete
    ours = from_hf(ref)
    t5 = family == "t5"
    ids, mask = _inputs(ref.config.vocab_size, t5)
    p = 1 if t5 else ids.size(1)
    greedy = generate(ours, ids, 3, temperature=0, attention_mask=mask)
    eos = int(greedy[0, p + 1])  # a token the greedy path emits: some beams do finish early
    finished_early = 0
    for num_beams, penalty, early, n_ret in SETTINGS:
        kw = dict(num_beams=num_beams, length_penalty=penalty, early_stopping=early, num_return_sequences=n_ret)
        expected = ref.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=N, eos_token_id=eos,
                                pad_token_id=eos, return_dict_in_generate=True, output_scores=True, **kw)
        got = generate(ours, ids, N, eos_token_id=eos, attention_mask=mask, **kw)
        assert torch.equal(got, expected.sequences), (kw, got, expected.sequences)
        seqs, scores = beam_search(ours, ids, N, eos_token_id=eos, attention_mask=mask, **kw)
        assert torch.equal(seqs, got)
        # 8.6e-6 observed on scores up to 13.4: at most 0.27 of this bound
        torch.testing.assert_close(scores.float(), expected.sequences_scores, atol=F32_ATOL, rtol=2e-6)
        finished_early += int(((got[:, p:-1] == eos).any(1)).sum())
    assert finished_early > 0  # the EOS bookkeeping was exercised, not only max-length endings


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_beam_repetition_penalty_matches_transformers(family, tiny_hf):
    ref = tiny_hf(family, seed=12, spread=0.3)
    ours = from_hf(ref)
    ids, mask = _inputs(ref.config.vocab_size, family == "t5")
    plain = generate(ours, ids, N, num_beams=3, attention_mask=mask)
    for penalty in (1.5, 3.0):
        expected = ref.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=N, num_beams=3,
                                repetition_penalty=penalty, pad_token_id=0)
        got = generate(ours, ids, N, num_beams=3, attention_mask=mask, repetition_penalty=penalty)
        assert torch.equal(got, expected), (penalty, got, expected)
    assert not torch.equal(got, plain)  # the penalty changed the beams, so parity is not vacuous
