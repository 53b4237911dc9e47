"""Encoder–decoder transformer: presets, training, cached decoding, padding, backends, score mods."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnlab.attention.module as attention_module
from attnlab import config
from attnlab.attention import MultiHeadAttention
from attnlab.blocks import Block
from attnlab.models import ARCHS, EncoderDecoder, build
from attnlab.models.seq2seq import Seq2SeqCache, Seq2SeqMemory
from attnlab.train.checkpoint import load_model, save_checkpoint

PRESETS = ["transformer-base-tiny", "t5-tiny"]
V = 24
SHRINK = ["model.vocab_size=24", "model.block_size=24", "model.n_layer=2", "model.n_decoder_layer=2",
          "model.n_head=2", "model.d_model=32", "model.d_ff=64"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


def tiny(preset: str, *extra: str) -> config.Config:
    return config.load(preset, SHRINK + list(extra))


def tiny_model(preset: str, *extra: str, seed: int = 0) -> EncoderDecoder:
    torch.manual_seed(seed)
    model = build(tiny(preset, *extra)).eval()
    with torch.no_grad():  # non-trivial norm gains and biases, so every weight matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def padded_batch():
    g = torch.Generator().manual_seed(3)
    src = torch.randint(3, V, (3, 11), generator=g)
    am = torch.ones_like(src)
    am[1, 8:] = 0  # right padding
    am[2, :4] = 0  # left padding
    tgt = torch.randint(3, V, (3, 9), generator=g)
    tgt[:, 0] = 0  # decoder start
    return src, am, tgt


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_and_builds(preset):
    cfg = config.load(preset)
    assert cfg.model.arch == "encoder_decoder" and cfg.train.objective == "span"
    cfg.model.vocab_size = 100
    model = build(cfg)
    assert isinstance(model, EncoderDecoder) and ARCHS["encoder_decoder"] is EncoderDecoder
    assert model.is_encoder_decoder and model.max_context == cfg.model.block_size
    assert model.decoder_start_id == cfg.model.decoder_start_id
    assert model.lm_head.weight is model.tok_emb.weight
    assert len(model.encoder.blocks) == cfg.model.n_layer and len(model.decoder.blocks) == cfg.model.n_decoder_layer
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    if preset == "transformer-base-tiny":
        assert cfg.train.label_smoothing == 0.1 and cfg.model.norm_placement == "post"
        assert model.embed_scale == pytest.approx(cfg.model.d_model ** 0.5) and model.head_scale == 1.0
    else:
        assert cfg.model.attention.scale == 1.0 and cfg.model.position == "relative"
        assert model.embed_scale == 1.0 and model.head_scale == pytest.approx(cfg.model.d_model ** -0.5)


@pytest.mark.parametrize("preset", PRESETS)
def test_learns_to_reverse_with_teacher_forcing_and_label_smoothing(preset):
    torch.manual_seed(0)
    model = build(tiny(preset, "model.dropout=0.0")).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    n_symbols = 10
    for _ in range(150):
        src = torch.randint(3, 3 + n_symbols, (16, 6), generator=g)
        labels = src.flip(1)
        dec_in = torch.cat([torch.zeros(16, 1, dtype=torch.long), labels[:, :-1]], 1)  # shifted right
        logits = model(src, dec_in)
        loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # below the entropy of guessing without the source: the decoder reads the encoder
    assert last < 0.8 * first and last < math.log(n_symbols) - 0.15, (first, last)


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_decoding_matches_uncached_forward(preset):
    model = tiny_model(preset)
    src, am, tgt = padded_batch()
    with torch.no_grad():
        full = model(src, tgt, attention_mask=am)
        memory = model.encode(src, attention_mask=am)
        assert isinstance(memory, Seq2SeqMemory) and memory.padded and memory.mask.dtype == torch.bool
        cache = model.make_cache(memory)
        assert isinstance(cache, Seq2SeqCache) and cache.length == 0
        steps = []
        for i in range(tgt.shape[1]):  # token by token
            steps.append(model.decode(tgt[:, i:i + 1], cache=cache))
        assert cache.length == tgt.shape[1]
        stepped = torch.cat(steps, 1)
        # a prefill of several tokens, then single steps
        cache2 = model.make_cache(memory)
        chunked = torch.cat([model.decode(tgt[:, :4], cache=cache2), model.decode(tgt[:, 4:], cache=cache2)], 1)
        uncached = model.decode(tgt, memory=memory)
    assert (stepped - full).abs().max() <= 1e-5
    assert (chunked - full).abs().max() <= 1e-5
    assert (uncached - full).abs().max() == 0
    # every cross cache holds the projected memory, and the memory counts in nbytes
    assert all(c.length == src.shape[1] for c in cache.cross)
    assert cache.nbytes() > memory.nbytes() + cache.self_attn.nbytes() > 0


@pytest.mark.parametrize("preset", PRESETS)
def test_reorder_expands_and_selects_rows(preset):
    model = tiny_model(preset)
    src, am, tgt = padded_batch()
    index = torch.tensor([2, 0, 0, 1, 2])
    with torch.no_grad():
        cache = model.make_cache(model.encode(src, attention_mask=am))
        model.decode(tgt[:, :3], cache=cache)
        cache.reorder(index)
        assert cache.memory.hidden.shape[0] == 5 and torch.equal(cache.memory.mask, am.bool()[index])
        got = model.decode(tgt[index, 3:5], cache=cache)
        expected = model(src[index], tgt[index, :5], attention_mask=am[index])[:, 3:5]
        assert (got - expected).abs().max() <= 1e-5
        cache.reorder(torch.tensor([4, 1]))  # select
        got = model.decode(tgt[[2, 0], 5:6], cache=cache)
        expected = model(src[[2, 0]], tgt[[2, 0], :6], attention_mask=am[[2, 0]])[:, 5:6]
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("preset", PRESETS)
def test_source_padding_does_not_change_real_rows(preset):
    model = tiny_model(preset)
    g = torch.Generator().manual_seed(5)
    src = torch.randint(3, V, (2, 7), generator=g)
    tgt = torch.randint(3, V, (2, 5), generator=g)
    with torch.no_grad():
        alone = model(src, tgt)
        garbage = torch.randint(0, V, (2, 4), generator=g)
        am = torch.cat([torch.ones(2, 7, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)], 1)
        padded = model(torch.cat([src, garbage], 1), tgt, attention_mask=am)
        # a shorter source in the same batch as a longer one
        short = model(src[:1, :4], tgt[:1])
        mixed = model(src, tgt, attention_mask=torch.tensor([[1] * 4 + [0] * 3, [1] * 7]))
    assert (padded - alone).abs().max() <= 1e-5
    assert (mixed[:1] - short).abs().max() <= 1e-5
    assert (mixed[1:] - alone[1:]).abs().max() <= 1e-5


def test_errors_are_clear():
    model = tiny_model("t5-tiny")
    src, am, tgt = padded_batch()
    with pytest.raises(ValueError, match="source of 25 tokens exceeds the encoder's context of 24"):
        model.encode(torch.zeros(1, 25, dtype=torch.long))
    memory = model.encode(src, attention_mask=am)
    with pytest.raises(ValueError, match="decoder sequence of 25 tokens exceeds"):
        model.decode(torch.zeros(3, 25, dtype=torch.long), memory=memory)
    cache = model.make_cache(memory)
    model.decode(tgt, cache=cache)  # 9 tokens
    with pytest.raises(ValueError, match="decoder sequence of 25 tokens"):
        model.decode(torch.zeros(3, 16, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exactly one of cache"):
        model.decode(tgt)
    with pytest.raises(ValueError, match="exactly one of cache"):
        model.decode(tgt, cache, memory=memory)
    with pytest.raises(ValueError, match="memory's batch of 3"):
        model.decode(tgt[:2], memory=memory)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model.encode(src, attention_mask=am[:, :5])
    with pytest.raises(ValueError, match="arch=encoder_decoder"):
        EncoderDecoder(config.load("gpt-tiny").model)


@pytest.mark.parametrize("preset", PRESETS)
def test_eager_and_sdpa_backends_agree(preset):
    eager = tiny_model(preset, "model.attention.backend=eager")
    sdpa = build(tiny(preset, "model.attention.backend=sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    src, am, tgt = padded_batch()
    with torch.no_grad():
        a, b = eager(src, tgt, attention_mask=am), sdpa(src, tgt, attention_mask=am)
    assert (a - b).abs().max() <= 1e-5


def test_relative_bias_enters_as_a_score_mod_not_a_bias(monkeypatch):
    model = tiny_model("t5-tiny")
    enc_mod, dec_mod = model.encoder.score_mod(), model.decoder.score_mod()
    assert enc_mod is not None and enc_mod.kind == "relative_bias" and enc_mod.additive
    assert dec_mod is not None and dec_mod.key != enc_mod.key  # one-sided in the decoder
    calls = []
    real = attention_module.attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[-2], k.shape[-2], kw["score_mod"], kw["bias"], kw["scale"]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(attention_module, "attention", spy)
    src, am, tgt = padded_batch()  # source 11, decoder 9 tokens
    model(src, tgt, attention_mask=am)
    assert len(calls) == 2 + 2 * 2
    assert all(bias is None and scale == 1.0 for *_, bias, scale in calls)
    self_calls = [c for c in calls if c[0] == c[1]]
    cross_calls = [c for c in calls if c[0] != c[1]]
    assert len(self_calls) == 4 and all(c[2] is not None for c in self_calls)
    assert len(cross_calls) == 2 and all(c[2] is None for c in cross_calls) and cross_calls[0][1] == 11
    # the bias table is a trained parameter: gradients reach it through the score mod
    model.train()
    model(src, tgt, attention_mask=am).sum().backward()
    for stack in (model.encoder, model.decoder):
        assert stack.pos.relative_attention_bias.weight.grad.abs().sum() > 0
    # sinusoidal positions: no score mod at all
    assert tiny_model("transformer-base-tiny").encoder.score_mod() is None


def test_return_weights():
    model = tiny_model("transformer-base-tiny")
    src, am, tgt = padded_batch()
    with torch.no_grad():
        logits, w = model(src, tgt, attention_mask=am, return_weights=True)
    assert torch.allclose(logits, model(src, tgt, attention_mask=am), atol=1e-5)
    assert set(w) == {"encoder", "decoder_self", "cross"}
    assert [x.shape for x in w["encoder"]] == [(3, 2, 11, 11)] * 2
    assert [x.shape for x in w["decoder_self"]] == [(3, 2, 9, 9)] * 2
    assert [x.shape for x in w["cross"]] == [(3, 2, 9, 11)] * 2
    for layer in w["cross"] + w["encoder"]:
        torch.testing.assert_close(layer.sum(-1), torch.ones(layer.shape[:-1]))
        assert layer[1, :, :, 8:].abs().max() == 0 and layer[2, :, :, :4].abs().max() == 0  # padding unseen
    assert torch.triu(w["decoder_self"][0], diagonal=1).abs().max() == 0  # causal


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny("t5-tiny", "model.mlp=geglu")
    torch.manual_seed(0)
    model = build(cfg).eval()
    save_checkpoint(tmp_path, 1, model, cfg, state={})
    loaded, _ = load_model(tmp_path)
    src, am, tgt = padded_batch()
    assert isinstance(loaded, EncoderDecoder) and loaded.lm_head.weight is loaded.tok_emb.weight
    with torch.no_grad():
        assert torch.equal(loaded(src, tgt, attention_mask=am), model(src, tgt, attention_mask=am))


def test_cross_block_needs_a_context():
    cfg = tiny("t5-tiny").model
    x, ctx = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match="needs context="):
        Block(cfg, cross=True)(x)
    with pytest.raises(ValueError, match="cross=True"):
        Block(cfg)(x, context=ctx)
    out, (self_w, cross_w) = Block(cfg, cross=True)(x, context=ctx, return_weights=True)
    assert out.shape == x.shape and self_w.shape == (2, 2, 3, 3) and cross_w.shape == (2, 2, 3, 5)


def test_attention_scale_argument():
    torch.manual_seed(0)
    one = MultiHeadAttention(16, 2, scale=1.0)
    dot = MultiHeadAttention(16, 2, scoring="dot")
    default = MultiHeadAttention(16, 2)
    dot.load_state_dict(one.state_dict())
    default.load_state_dict(one.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(one(x), dot(x))
    assert (one(x) - default(x)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="scale applies to scoring='scaled_dot' only"):
        MultiHeadAttention(16, 2, scoring="general", scale=2.0)


def test_sliding_window_applies_to_self_attention_and_caches():
    model = tiny_model("transformer-base-tiny", "model.attention.window=3")
    src, am, tgt = padded_batch()
    with torch.no_grad():
        full, w = model(src, tgt, attention_mask=am, return_weights=True)
        cache = model.make_cache(model.encode(src, attention_mask=am))
        stepped = torch.cat([model.decode(tgt[:, i:i + 1], cache=cache) for i in range(tgt.shape[1])], 1)
    assert (stepped - full).abs().max() <= 1e-5
    assert torch.tril(w["decoder_self"][0], diagonal=-3).abs().max() == 0  # only the last 3 tokens
    assert torch.triu(w["encoder"][0][0], diagonal=3).abs().max() == 0  # |q - k| < 3 in the encoder
    assert (w["cross"][0][0] > 0).all()  # cross attention is not windowed
