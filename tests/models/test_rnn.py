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
    cache = m.make_cache(m.encode(src))
    steps = torch.cat([m.decode(tgt_in[:, t : t + 1], cache=cache) for t in range(7)], 1)
    assert cache.length == 7
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_source_padding_gets_no_attention():
    torch.manual_seed(0)
    m = Seq2SeqRNN(Seq2SeqConfig(12, 12, d_emb=16, d_hidden=32)).eval()
    src, tgt_in, _ = copy_task(2)
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[1, 4:] = False
    _, w = m(src, tgt_in, attention_mask=mask, return_weights=True)
    assert torch.all(w[1, :, 4:] == 0) and torch.allclose(w[1].sum(-1), torch.ones(7))


def test_seq2seq_learns_to_reverse():
    torch.manual_seed(0)
    m = Seq2SeqRNN(Seq2SeqConfig(12, 12, d_emb=32, d_hidden=64, scoring="additive"))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    src, tgt_in, tgt_out = copy_task(128, length=5, seed=1)
    losses = []
    for _step in range(40):
        logits = m(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, 12), tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    test_src, _, test_out = copy_task(32, length=5, seed=2)
    pred = generate(m, test_src, 6, temperature=0.0, eos_token_id=2)  # starts with decoder_start_id = 1
    assert pred.shape[0] == 32 and torch.all(pred[:, 0] == 1)
    acc = (pred[:, 1:6] == test_out[:, :5]).float().mean().item()
    assert acc > 0.5, acc


def test_unknown_cell_and_scoring():
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        RNNLanguageModel(RNNLMConfig(vocab_size=5, cell="rnn"))
    with pytest.raises(ValueError):
        Seq2SeqRNN(Seq2SeqConfig(5, 5, scoring="cosine"))


def small_seq2seq(**kw):
    torch.manual_seed(0)
    return Seq2SeqRNN(Seq2SeqConfig(12, 12, d_emb=16, d_hidden=32, **kw)).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padded_source_encodes_as_alone(cell):
    m = small_seq2seq(cell=cell)
    src, tgt_in, _ = copy_task(2)
    mask = torch.ones_like(src)
    mask[1, 4:] = 0
    memory = m.encode(src, attention_mask=mask)
    alone = m.encode(src[1:, :4])
    torch.testing.assert_close(memory.outputs[1, :4], alone.outputs[0], atol=1e-6, rtol=1e-6)
    assert torch.all(memory.outputs[1, 4:] == 0) and memory.mask.dtype == torch.bool
    torch.testing.assert_close(m(src, tgt_in, attention_mask=mask)[1], m(src[1:, :4], tgt_in[1:])[0],
                               atol=1e-6, rtol=1e-6)
    a = generate(m, src, 8, temperature=0.0, attention_mask=mask)
    assert torch.equal(a, generate(m, src, 8, temperature=0.0, attention_mask=mask, use_cache=False))
    assert torch.equal(a[1], generate(m, src[1:, :4], 8, temperature=0.0)[0])


def test_cache_reorder_selects_and_expands_rows():
    m = small_seq2seq(cell="lstm")
    src, tgt_in, _ = copy_task(3)
    cache = m.make_cache(m.encode(src))
    m.decode(tgt_in[:, :2], cache=cache)
    index = torch.tensor([2, 2, 0])
    cache.reorder(index)
    want = m(src[index], tgt_in[index, :4])[:, 2:]
    torch.testing.assert_close(m.decode(tgt_in[index, 2:4], cache=cache), want, atol=1e-6, rtol=1e-6)
    assert cache.length == 4 and cache.memory.outputs.shape[0] == 3


def test_seq2seq_bad_calls_raise():
    m = small_seq2seq(max_len=5)
    src, tgt_in, _ = copy_task(2)
    memory = m.encode(src)
    with pytest.raises(ValueError, match="exactly one of cache= .* or memory="):
        m.decode(tgt_in, cache=m.make_cache(memory), memory=memory)
    with pytest.raises(ValueError, match="exactly one"):
        m.decode(tgt_in)
    with pytest.raises(ValueError, match="exceeds the model's max_len of 5"):
        m(src, tgt_in)
    empty_row = torch.ones_like(src)
    empty_row[0] = 0
    with pytest.raises(ValueError, match="source row without real tokens"):
        m.encode(src, attention_mask=empty_row)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        m.encode(src, attention_mask=empty_row[:, :3])
    with pytest.raises(ValueError, match="decoder context of 5"):
        generate(m, src, 5)
    assert generate(m, src, 4, temperature=0.0).shape == (2, 5)
