import pytest
import torch
import torch.nn.functional as F

from attnlab.generate import generate
from attnlab.models.rnn import RNNLanguageModel, RNNLMConfig, Seq2SeqConfig, Seq2SeqRNN


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_lm_cached_equals_full_and_generates(cell):
    torch.manual_seed(0)
    m = RNNLanguageModel(RNNLMConfig(vocab_size=50, d_emb=16, d_hidden=32, n_layers=2, cell=cell, block_size=64)).eval()
    ids = torch.randint(0, 50, (2, 12))
    full = m(ids)
    cache = m.make_cache()
    steps = torch.cat([m(ids[:, :5], cache=cache)] + [m(ids[:, t : t + 1], cache=cache) for t in range(5, 12)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    a = generate(m, ids[:, :3], 10, temperature=0.0)
    b = generate(m, ids[:, :3], 10, temperature=0.0, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 13)


def copy_task(n=64, length=6, vocab=12, seed=0):
    """Reverse a sequence: a task that needs attention to the right source position."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (n, length), generator=g)
    tgt = src.flip(1)
    bos = torch.ones(n, 1, dtype=torch.long)
    eos = torch.full((n, 1), 2, dtype=torch.long)
    return src, torch.cat((bos, tgt), 1), torch.cat((tgt, eos), 1)


@pytest.mark.parametrize("scoring,cell", [("additive", "gru"), ("general", "lstm"), ("dot", "gru")])
def test_seq2seq_stepwise_equals_teacher_forced(scoring, cell):
    torch.manual_seed(0)
    m = Seq2SeqRNN(Seq2SeqConfig(12, 12, d_emb=16, d_hidden=32, cell=cell, scoring=scoring)).eval()
    src, tgt_in, _ = copy_task(4)
    full, w = m(src, tgt_in, return_weights=True)
    assert w.shape == (4, 7, 6) and torch.allclose(w.sum(-1), torch.ones(4, 7))
    memory, mask = m.encode(src)
    state = m.start_state(4, src.device)
    steps = torch.cat([m.decode(tgt_in[:, t : t + 1], memory, mask, state) for t in range(7)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_source_padding_gets_no_attention():
    torch.manual_seed(0)
    m = Seq2SeqRNN(Seq2SeqConfig(12, 12, d_emb=16, d_hidden=32)).eval()
    src, tgt_in, _ = copy_task(2)
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[1, 4:] = False
    _, w = m(src, tgt_in, src_mask=mask, return_weights=True)
    assert torch.all(w[1, :, 4:] == 0) and torch.allclose(w[1].sum(-1), torch.ones(7))


def test_seq2seq_learns_to_reverse():
    torch.manual_seed(0)
    m = Seq2SeqRNN(Seq2SeqConfig(12, 12, d_emb=32, d_hidden=64, scoring="additive"))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    src, tgt_in, tgt_out = copy_task(128, length=5, seed=1)
    losses = []
    for step in range(40):
        logits = m(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, 12), tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    test_src, _, test_out = copy_task(32, length=5, seed=2)
    pred = m.eval().greedy(test_src, bos_id=1, eos_id=2, max_len=6)
    acc = (pred[:, :5] == test_out[:, :5]).float().mean().item()
    assert acc > 0.5, acc


def test_unknown_cell_and_scoring():
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        RNNLanguageModel(RNNLMConfig(vocab_size=5, cell="rnn"))
    with pytest.raises(ValueError):
        Seq2SeqRNN(Seq2SeqConfig(5, 5, scoring="cosine"))
