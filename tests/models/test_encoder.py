"""Encoder-only model: blocks against a hand-written float64 formula, padding, MLM training, heads."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab import config
from attnlab.attention import key_padding
from attnlab.blocks import Block
from attnlab.config import ConfigError, ModelConfig
from attnlab.data.mlm import mask_tokens, mlm_loss
from attnlab.models import EncoderForMaskedLM, EncoderModel, SequenceClassifier, build


def tiny(**kw) -> ModelConfig:
    base = dict(arch="encoder", vocab_size=61, block_size=32, n_layer=2, n_head=4, d_model=32, d_ff=48,
                norm_placement="post", mlp="gelu_exact", type_vocab_size=2, norm_eps=1e-12)
    base.update(kw)
    return ModelConfig(**base)


def _layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _reference_block(blk: Block, x: torch.Tensor, post: bool, valid: torch.Tensor) -> torch.Tensor:
    """The block written out by hand in float64: erf GELU MLP, softmax attention over valid keys."""
    a = blk.attn
    b, t, d = x.shape
    h, hd = a.n_head, a.head_dim

    def attn(z):
        q, k, v = (lin(z).view(b, t, h, hd).transpose(1, 2) for lin in (a.q_proj, a.k_proj, a.v_proj))
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, T, T)
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        return a.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))

    def mlp(z):
        u = blk.mlp.up_proj(z)
        return blk.mlp.down_proj(0.5 * u * (1 + torch.erf(u / math.sqrt(2))))

    if post:
        x = _layer_norm(x + attn(x), blk.attn_norm)
        return _layer_norm(x + mlp(x), blk.mlp_norm)
    x = x + attn(_layer_norm(x, blk.attn_norm))
    return x + mlp(_layer_norm(x, blk.mlp_norm))


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_block_matches_hand_written_formula(placement):
    torch.manual_seed(0)
    blk = Block(tiny(norm_placement=placement)).double().eval()
    with torch.no_grad():
        for p in blk.parameters():  # non-trivial norm gains and biases
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 5:] = False
    out = blk(x, mask=key_padding(valid))
    torch.testing.assert_close(out, _reference_block(blk, x, placement == "post", valid), atol=1e-10, rtol=0)


def test_post_and_pre_norm_differ_with_same_weights():
    torch.manual_seed(0)
    pre, post = Block(tiny(norm_placement="pre")), Block(tiny(norm_placement="post"))
    post.load_state_dict(pre.state_dict())
    x = torch.randn(2, 5, 32)
    a, b = pre(x), post(x)
    assert a.shape == b.shape == (2, 5, 32)
    assert (a - b).abs().max() > 1e-2
    # post-norm output is normalised per token, pre-norm output is not
    torch.testing.assert_close(b.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_appended_padding_does_not_change_real_tokens(placement):
    torch.manual_seed(0)
    enc = EncoderModel(tiny(norm_placement=placement)).eval()
    ids = torch.randint(5, 61, (2, 9))
    am = torch.ones(2, 9, dtype=torch.long)
    am[0, 6:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    out = enc(ids, am, types)
    ids2 = torch.cat([ids, torch.randint(0, 61, (2, 5))], 1)  # garbage ids at the padding
    am2 = torch.cat([am, torch.zeros(2, 5, dtype=torch.long)], 1)
    out2 = enc(ids2, am2, torch.cat([types, torch.ones(2, 5, dtype=torch.long)], 1))
    real = am.bool()
    torch.testing.assert_close(out2[:, :9][real], out[real], atol=1e-5, rtol=0)
    # and a row's real tokens do not depend on its own padded positions either
    solo = enc(ids[:1, :6], token_type_ids=types[:1, :6])
    torch.testing.assert_close(solo[0], out[0, :6], atol=1e-5, rtol=0)


def test_build_gives_mlm_model_with_tied_head():
    model = build(tiny())
    assert isinstance(model, EncoderForMaskedLM)
    assert model.head.decoder.weight is model.encoder.tok_emb.weight
    logits = model(torch.randint(0, 61, (3, 11)))
    assert logits.shape == (3, 11, 61)
    assert isinstance(build(config.load("bert-tiny", ["model.vocab_size=100"])), EncoderForMaskedLM)


def test_mlm_training_loss_falls(one_thread):
    torch.manual_seed(0)
    model = build(tiny(vocab_size=24, d_ff=64, dropout=0.0, norm_eps=1e-5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(2, 24, (4, 16), generator=g)  # 4 fixed sequences: masked ids are recoverable
    losses = []
    for _ in range(60):
        ids = corpus[torch.randint(0, 4, (16,), generator=g)]  # (16, 16)
        inputs, labels = mask_tokens(ids, mask_token_id=1, vocab_size=24, special_ids=[0, 1], generator=g)
        loss = mlm_loss(model(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 2.5 and last < 0.5 * first, (first, last)


def test_sequence_classifier_reads_first_token():
    torch.manual_seed(0)
    enc = EncoderModel(tiny())
    clf = SequenceClassifier(enc, 3).eval()
    ids = torch.randint(5, 61, (4, 8))
    am = torch.ones_like(ids)
    am[2, 5:] = 0
    out = clf(ids, am)
    assert out.shape == (4, 3)
    hidden = enc(ids, am)
    torch.testing.assert_close(out, clf.classifier(torch.tanh(clf.pooler(hidden[:, 0]))))
    out.sum().backward()
    assert enc.tok_emb.weight.grad is not None


def test_mean_pooling_averages_real_tokens_only():
    torch.manual_seed(0)
    enc = EncoderModel(tiny())
    clf = SequenceClassifier(enc, 2, pooling="mean").eval()
    ids = torch.randint(5, 61, (2, 8))
    am = torch.ones_like(ids)
    am[1, 5:] = 0
    out = clf(ids, am)
    hidden = enc(ids, am)
    summary = torch.stack((hidden[0].mean(0), hidden[1, :5].mean(0)))
    torch.testing.assert_close(out, clf.classifier(torch.tanh(clf.pooler(summary))))
    torch.testing.assert_close(out[1], clf(ids[1:, :5])[0])  # the padding changes nothing
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(enc, 2, pooling="max")


def test_errors_are_clear():
    with pytest.raises(ConfigError, match="type_vocab_size needs model.arch=encoder"):
        ModelConfig(type_vocab_size=2)
    with pytest.raises(ConfigError, match="mixer=linear"):
        tiny(mixer="linear")
    with pytest.raises(ConfigError, match="norm_placement must be one of"):
        config.load(None, ["model.norm_placement=middle"])
    enc = EncoderModel(tiny(type_vocab_size=0))
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        enc(ids, token_type_ids=ids)
    with pytest.raises(ValueError, match="exceeds the encoder's context of 32"):
        enc(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        enc(ids, torch.ones(1, 5))


def test_exact_gelu_mlp_also_serves_decoders():
    from attnlab.models import DecoderLM
    torch.manual_seed(0)
    exact = DecoderLM(ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16, mlp="gelu_exact"))
    x = torch.randn(3, 16)
    mlp = exact.blocks[0].mlp
    torch.testing.assert_close(mlp(x), mlp.down_proj(F.gelu(mlp.up_proj(x))))
    assert (mlp(x) - mlp.down_proj(F.gelu(mlp.up_proj(x), approximate="tanh"))).abs().max() > 0
