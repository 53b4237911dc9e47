"""Shared model pieces: one self-attention mask rule, ALiBi direction per model, BERT init, final norm."""

import pytest
import torch
from torch import nn

from attnlab.attention.masks import causal, local_global, sliding_window
from attnlab.attention.positions import alibi_slopes
from attnlab.config import AttentionConfig, ModelConfig
from attnlab.models import DecoderLM, EncoderDecoder, EncoderModel, VisionTransformer
from attnlab.models.common import (
    add_position_embedding,
    final_norm_for,
    init_bert_weights,
    positions_for,
    score_mod_for,
    self_attention_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


def tiny(arch: str = "encoder", **kw) -> ModelConfig:
    base = dict(arch=arch, vocab_size=37, block_size=17, n_layer=2, n_head=4, d_model=32, d_ff=48,
                norm_placement="pre", position="learned")
    base.update(kw)
    return ModelConfig(**base)


def dense(mask, t: int = 9) -> torch.Tensor:
    return mask.dense(1, 1, t, t, "cpu")[0, 0]  # (T, T) bool


WINDOWS = [dict(), dict(window=3), dict(window=2, global_tokens=2)]


@pytest.mark.parametrize("attn", WINDOWS)
@pytest.mark.parametrize("is_causal", [True, False])
def test_self_attention_mask_matches_the_mask_constructors(attn, is_causal):
    got = self_attention_mask(tiny(attention=AttentionConfig(**attn)), causal=is_causal)
    if "global_tokens" in attn:
        want = local_global(attn["window"], attn["global_tokens"], causal=is_causal)
    elif "window" in attn:
        want = sliding_window(attn["window"], causal=is_causal)
    else:
        want = causal() if is_causal else None
    if want is None:
        assert got is None  # full bidirectional attention needs no mask
    else:
        assert torch.equal(dense(got), dense(want))


@pytest.mark.parametrize("attn", WINDOWS)
def test_every_model_uses_the_shared_mask(attn):
    a = AttentionConfig(**attn)
    want_c = dense(self_attention_mask(tiny(attention=a), causal=True))
    want_b = self_attention_mask(tiny(attention=a), causal=False)
    assert torch.equal(dense(DecoderLM(tiny("decoder", attention=a)).attention_mask()), want_c)
    s2s = EncoderDecoder(tiny("encoder_decoder", attention=a))
    assert torch.equal(dense(s2s.decoder.attention_mask()), want_c)
    enc_masks = [EncoderModel(tiny(attention=a)).attention_mask(None), s2s.encoder.attention_mask()]
    for got in enc_masks:
        assert (got is None) if want_b is None else torch.equal(dense(got), dense(want_b))
    # with padding the encoder adds the key-padding mask on top
    valid = torch.tensor([[1] * 7 + [0] * 2])
    padded = EncoderModel(tiny(attention=a)).attention_mask(valid).dense(1, 1, 9, 9, "cpu")[0, 0]
    base = torch.ones(9, 9, dtype=torch.bool) if want_b is None else dense(want_b)
    assert torch.equal(padded, base & valid.bool()[0][None, :])


def _bias(score_mod, t: int, heads: int = 4) -> torch.Tensor:
    return score_mod.dense_bias(1, heads, t, t, "cpu", torch.float64)[0]  # (H, T, T)


def test_alibi_is_symmetric_in_encoders_and_causal_in_decoders():
    t = 6
    i = torch.arange(t)
    dist = (i[:, None] - i[None, :]).double()  # (T, T) query - key
    slopes = alibi_slopes(4)[:, None, None]  # (H, 1, 1)
    s2s = EncoderDecoder(tiny("encoder_decoder", position="alibi"))
    encoders = {"encoder": EncoderModel(tiny(position="alibi")), "seq2seq encoder": s2s.encoder,
                "vit": VisionTransformer(tiny(position="alibi", vocab_size=0), 4, 1, 1, 2)}
    for name, model in encoders.items():
        mod = score_mod_for(model.pos, model.config)  # what each model passes to its blocks
        torch.testing.assert_close(_bias(mod, t), -slopes * dist.abs(), rtol=0, atol=1e-7, msg=name)
    # decoders: exactly the causal form as before (keys after the query are masked anyway)
    for mod in (DecoderLM(tiny("decoder", position="alibi")).score_mod(), s2s.decoder.score_mod()):
        torch.testing.assert_close(_bias(mod, t), -slopes * dist, rtol=0, atol=1e-7)


def test_alibi_encoder_is_equivariant_to_reversing_the_sequence():
    """Symmetric ALiBi depends on |i - j| only, so reversing the input reverses the output;
    the causal form would favour far keys on one side and break this."""
    torch.manual_seed(0)
    enc = EncoderModel(tiny(position="alibi", n_layer=1)).double().eval()
    with torch.no_grad():  # weights large enough that the bias matters for the output
        for p in enc.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    ids = torch.randint(0, 37, (2, 11))
    with torch.no_grad():
        out = enc(ids)
        rev = enc(ids.flip(1)).flip(1)
    torch.testing.assert_close(rev, out, rtol=1e-10, atol=1e-10)
    learned = EncoderModel(tiny(position="learned", n_layer=1)).double().eval()
    with torch.no_grad():  # the check is not vacuous: absolute positions are not reversal-equivariant
        assert (learned(ids.flip(1)).flip(1) - learned(ids)).abs().max() > 1e-4


def test_init_bert_weights():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.Embedding(100, 64))
    for p in m.parameters():
        nn.init.constant_(p, 3.0)
    init_bert_weights(m, std=0.05)
    assert abs(m[0].weight.std().item() - 0.05) < 0.003 and abs(m[2].weight.std().item() - 0.05) < 0.003
    assert torch.equal(m[0].bias, torch.zeros(256)) and torch.equal(m[1].bias, torch.zeros(256))
    assert torch.equal(m[1].weight, torch.ones(256))


def test_final_norm_only_after_pre_norm_blocks():
    assert isinstance(final_norm_for(tiny(norm_placement="pre")), nn.LayerNorm)
    assert isinstance(final_norm_for(tiny(norm_placement="pre", norm="rmsnorm")), nn.Module)
    assert not isinstance(final_norm_for(tiny(norm_placement="pre", norm="rmsnorm")), nn.Identity)
    assert isinstance(final_norm_for(tiny(norm_placement="post")), nn.Identity)


def test_add_position_embedding():
    x = torch.randn(2, 5, 32)
    positions = torch.arange(3, 8)
    learned = positions_for(tiny(), bidirectional=True)
    with torch.no_grad():
        learned.weight.normal_()
    torch.testing.assert_close(add_position_embedding(learned, x, positions), x + learned.weight[3:8])
    for kind in ("rope", "alibi", "none"):  # these schemes add nothing to the embeddings
        assert add_position_embedding(positions_for(tiny(position=kind), bidirectional=True), x, positions) is x
