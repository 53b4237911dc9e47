"""Batched generation over padded inputs of different lengths equals, row by row, each input
alone (tokens and every step's logits, with and without the cache, greedy and beam) for every
model family other than the decoder-only transformer (see test_extras.py): transformer
encoder–decoders (T5, original Transformer), the RNN encoder–decoder and the RNN LM."""

import pytest
import torch

from attnlab import config
from attnlab.generate import beam_search, generate
from attnlab.models import build
from attnlab.models.rnn import RNNLanguageModel, RNNLMConfig, Seq2SeqConfig, Seq2SeqRNN
from tests.generate._batching import greedy_logits, pad

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention

V = 24
SOURCES = [[3, 7, 1, 4, 9, 12], [5, 2], [8, 8, 6, 20]]
PROMPTS = [[3, 7, 1, 4, 9], [5, 2], [8, 8, 6]]
SHRINK = ["model.vocab_size=24", "model.block_size=24", "model.n_layer=2", "model.n_decoder_layer=2",
          "model.n_head=2", "model.d_model=32", "model.d_ff=64", "model.dropout=0.0"]
STEPS = 6


def encoder_decoder(family: str):
    """A tiny float64 model of ``family``, with non-trivial norm gains and biases."""
    torch.manual_seed(0)
    if family == "rnn-gru-additive":
        model = Seq2SeqRNN(Seq2SeqConfig(V, V, d_emb=16, d_hidden=32, cell="gru", scoring="additive"))
    elif family == "rnn-lstm-general":
        model = Seq2SeqRNN(Seq2SeqConfig(V, V, d_emb=16, d_hidden=32, n_layers=2, cell="lstm", scoring="general"))
    else:
        model = build(config.load(family, SHRINK))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


def rnn_lm(cell: str):
    torch.manual_seed(0)
    return RNNLanguageModel(RNNLMConfig(vocab_size=V, d_emb=16, d_hidden=32, n_layers=2, cell=cell)).double().eval()


ENC_DEC = ["t5-tiny", "transformer-base-tiny", "rnn-gru-additive", "rnn-lstm-general"]


def check_rows_as_alone(model, rows, ids, mask, use_cache, alone_ids=lambda row: torch.tensor([row])):
    """Greedy tokens and per-step logits of each padded row equal those of the row alone, and
    generate() gives the same tokens; returns the batch's logits."""
    tokens, logits = greedy_logits(model, ids, STEPS, mask, use_cache)
    for i, row in enumerate(rows):
        alone_tokens, alone_logits = greedy_logits(model, alone_ids(row), STEPS, use_cache=use_cache)
        assert tokens[i].tolist() == alone_tokens[0].tolist(), i
        torch.testing.assert_close(logits[i], alone_logits[0], atol=1e-9, rtol=1e-9)
    out = generate(model, ids, STEPS, temperature=0.0, attention_mask=mask, use_cache=use_cache)
    assert torch.equal(out[:, -STEPS:], tokens)
    return logits


@pytest.mark.parametrize("family", ENC_DEC)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_padded_sources_decode_as_if_alone(family, side, use_cache):
    model = encoder_decoder(family)
    ids, mask = pad(SOURCES, pad_id=11, side=side)
    check_rows_as_alone(model, SOURCES, ids, mask, use_cache)
    out = generate(model, ids, STEPS, temperature=0.0, attention_mask=mask, use_cache=use_cache)
    assert out.shape == (len(SOURCES), 1 + STEPS) and bool((out[:, 0] == model.decoder_start_id).all())


@pytest.mark.parametrize("family", ENC_DEC)
def test_source_padding_is_not_a_no_op(family):
    """Without the mask the padded rows decode differently (so the test above can fail)."""
    model = encoder_decoder(family)
    for side in ("left", "right"):
        ids, mask = pad(SOURCES, pad_id=11, side=side)
        _, masked = greedy_logits(model, ids, 2, mask)
        _, unmasked = greedy_logits(model, ids, 2)
        assert not torch.allclose(masked[1], unmasked[1], atol=1e-3)
        torch.testing.assert_close(masked[0], unmasked[0], atol=1e-9, rtol=1e-9)  # the longest row is unpadded


@pytest.mark.parametrize("family", ENC_DEC)
@pytest.mark.parametrize("use_cache", [True, False])
def test_padded_beam_search_matches_each_source_alone(family, use_cache):
    model = encoder_decoder(family)
    ids, mask = pad(SOURCES, side="left" if use_cache else "right")
    out, scores = beam_search(model, ids, 4, num_beams=2, attention_mask=mask, use_cache=use_cache)
    for i, src in enumerate(SOURCES):
        alone, alone_scores = beam_search(model, torch.tensor([src]), 4, num_beams=2, use_cache=use_cache)
        assert out[i].tolist() == alone[0].tolist()
        torch.testing.assert_close(scores[i], alone_scores[0], atol=1e-9, rtol=0)


def test_transformer_source_masks_it_cannot_take_raise():
    model = encoder_decoder("transformer-base-tiny")
    ids, mask = pad(SOURCES, side="right")
    mask[0, 2] = 0
    with pytest.raises(ValueError, match="one run of real tokens"):
        generate(model, ids, 2, attention_mask=mask)
    mask[0] = 0
    with pytest.raises(ValueError, match="one run of real tokens"):
        generate(model, ids, 2, attention_mask=mask)
    torch.manual_seed(0)
    windowed = build(config.load("t5-tiny", SHRINK + ["model.attention.window=2", "model.attention.global_tokens=1"]))
    ids, mask = pad(SOURCES, side="right")  # right padding leaves the global tokens real
    check_rows_as_alone(windowed.double().eval(), SOURCES, ids, mask, use_cache=True)
    ids, mask = pad(SOURCES, side="left")
    with pytest.raises(ValueError, match="left-padded source is not supported with attention.global_tokens"):
        generate(windowed, ids, 2, attention_mask=mask)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_rnn_lm_left_padded_rows_decode_as_if_alone(cell, use_cache):
    model = rnn_lm(cell)
    ids, mask = pad(PROMPTS, pad_id=11, side="left")
    check_rows_as_alone(model, PROMPTS, ids, mask, use_cache)
    out = generate(model, ids, STEPS, temperature=0.0, attention_mask=mask, use_cache=use_cache)
    assert torch.equal(out[:, :ids.size(1)], ids)


def test_rnn_lm_padding_is_not_a_no_op_and_beam_matches():
    model = rnn_lm("lstm")
    ids, mask = pad(PROMPTS, pad_id=11, side="left")
    _, masked = greedy_logits(model, ids, 2, mask)
    _, unmasked = greedy_logits(model, ids, 2)
    assert not torch.allclose(masked[1], unmasked[1], atol=1e-3)
    torch.testing.assert_close(masked[0], unmasked[0], atol=1e-9, rtol=1e-9)
    out, scores = beam_search(model, ids, 4, num_beams=2, attention_mask=mask)
    for i, prompt in enumerate(PROMPTS):
        alone, alone_scores = beam_search(model, torch.tensor([prompt]), 4, num_beams=2)
        assert out[i, ids.size(1):].tolist() == alone[0, len(prompt):].tolist()
        torch.testing.assert_close(scores[i], alone_scores[0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_lm_state_passes_through_padding_chunks(cell):
    """Chunks that are all padding for a row leave its state as it was (here: the initial one)."""
    model = rnn_lm(cell)
    ids, mask = pad([[3, 7, 1, 4, 9, 2], [5, 2]], pad_id=11, side="left")
    cache = model.make_cache()
    with torch.no_grad():
        chunks = [model(ids[:, i:i + 3], cache=cache, attention_mask=mask[:, :i + 3]) for i in (0, 3)]
        alone = model(torch.tensor([[5, 2]]))
        full = model(ids, attention_mask=mask)
    torch.testing.assert_close(chunks[1][1, 1:], alone[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-12, rtol=0)
    torch.testing.assert_close(full[0], model(ids[:1])[0], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, cached \+ T\)"):
        model(ids, attention_mask=mask[:, 1:])


@pytest.mark.parametrize("family", ENC_DEC)
@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_decoder_prefixes_decode_as_if_alone(family, use_cache):
    model = encoder_decoder(family)
    start = model.decoder_start_id
    prefixes = [[start, 5], [start], [start, 9, 4, 7]]
    src, src_mask = pad(SOURCES, pad_id=11, side="right")
    dec, dec_mask = pad(prefixes, pad_id=13, side="left")
    tokens, logits = greedy_logits(model, src, STEPS, src_mask, use_cache, decoder_input_ids=dec,
                                   decoder_attention_mask=dec_mask)
    unmasked = greedy_logits(model, src, 1, src_mask, use_cache, decoder_input_ids=dec)[1]
    assert not torch.allclose(unmasked[1], logits[1, :1], atol=1e-3)  # the mask matters
    for i, (source, prefix) in enumerate(zip(SOURCES, prefixes, strict=False)):
        alone_tokens, alone_logits = greedy_logits(model, torch.tensor([source]), STEPS, use_cache=use_cache,
                                                   decoder_input_ids=torch.tensor([prefix]))
        assert tokens[i].tolist() == alone_tokens[0].tolist()
        torch.testing.assert_close(logits[i], alone_logits[0], atol=1e-9, rtol=1e-9)


def test_decoder_prefix_errors():
    model = encoder_decoder("t5-tiny")
    src, dec = torch.tensor([[3, 4, 5], [6, 7, 8]]), torch.tensor([[0, 5], [13, 0]])
    with pytest.raises(ValueError, match="decoder_attention_mask for decoder prefixes must be left padding"):
        greedy_logits(model, src, 1, decoder_input_ids=dec, decoder_attention_mask=torch.tensor([[1, 1], [1, 0]]))
    with pytest.raises(ValueError, match="the source's batch of 2"):
        greedy_logits(model, src, 1, decoder_input_ids=dec[:1])
    with pytest.raises(ValueError, match="needs decoder_input_ids"):
        greedy_logits(model, src, 1, decoder_attention_mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match="a decoder prefix of 2 .* at most 22 new tokens"):
        greedy_logits(model, src, 23, decoder_input_ids=dec)
    with pytest.raises(ValueError, match="are for encoder–decoders"):
        greedy_logits(rnn_lm("gru"), src, 1, decoder_input_ids=dec)
