"""One transformer stack, one forward mask, and the protocols generation reads instead of signatures."""

import pytest
import torch
from torch import nn

from attnlab.attention import KVCache
from attnlab.attention.masks import causal, document, key_padding
from attnlab.config import ModelConfig
from attnlab.generate import Session, generate
from attnlab.models import DecoderLM, EncoderDecoder, EncoderModel, RNNLanguageModel, VisionTransformer
from attnlab.models.protocols import CausalLM, EncoderDecoderLM, KVCacheLike, accepts_padding, is_encoder_decoder
from attnlab.models.rnn import RNNLMConfig, RNNState, Seq2SeqConfig, Seq2SeqRNN
from attnlab.models.stack import TransformerStack, forward_mask

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


def tiny(arch: str, **kw) -> ModelConfig:
    base = dict(arch=arch, vocab_size=23, block_size=17, n_layer=2, n_head=2, d_model=16, d_ff=32, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def dense(mask, b: int = 2, t: int = 6) -> torch.Tensor:
    return mask.dense(b, 1, t, t, "cpu")[:, 0]  # (B, T, T) bool


def test_every_transformer_runs_the_one_stack_under_its_own_parameter_names():
    vit = VisionTransformer(tiny("encoder"), image_size=4, patch_size=2, channels=1, n_classes=3)
    s2s = EncoderDecoder(tiny("encoder_decoder"))
    for stack in (DecoderLM(tiny("decoder")), EncoderModel(tiny("encoder")), vit, s2s.encoder, s2s.decoder):
        assert isinstance(stack, TransformerStack)
        names = [n for n, _ in stack.named_parameters()]
        assert "blocks.0.attn_norm.weight" in names and "blocks.1.mlp_norm.weight" in names
        assert not any(n.startswith(("stack.", "_")) for n in names)  # the stack is not a submodule
    assert s2s.decoder.is_decoder and not s2s.encoder.is_decoder
    assert [n for n, _ in s2s.named_parameters() if "final_norm" in n] == [
        "encoder.final_norm.weight", "encoder.final_norm.bias", "decoder.final_norm.weight", "decoder.final_norm.bias"]


def test_forward_mask_ands_pattern_padding_and_documents_in_one_place():
    valid = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    docs = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    assert forward_mask(None) is None
    assert torch.equal(dense(forward_mask(None, padding=valid)), dense(key_padding(valid.bool())))
    got = dense(forward_mask(causal(), padding=valid, document_ids=docs))
    want = dense(causal()) & dense(key_padding(valid.bool())) & dense(document(docs))
    assert torch.equal(got, want)
    assert forward_mask(causal(), padding=valid).kind == "causal&key_padding"  # the order backends see


def test_generation_protocols_are_satisfied_by_the_models_and_caches():
    gpt = DecoderLM(tiny("decoder"))
    rnn = RNNLanguageModel(RNNLMConfig(vocab_size=11, d_emb=4, d_hidden=4, n_layers=1))
    s2s = EncoderDecoder(tiny("encoder_decoder"))
    rnn_s2s = Seq2SeqRNN(Seq2SeqConfig(src_vocab_size=11, tgt_vocab_size=11, d_emb=4, d_hidden=4))
    for lm in (gpt, rnn):
        assert isinstance(lm, CausalLM) and accepts_padding(lm) and not is_encoder_decoder(lm)
    for ed in (s2s, rnn_s2s):
        assert isinstance(ed, EncoderDecoderLM) and accepts_padding(ed) and is_encoder_decoder(ed)
    memory = s2s.encode(torch.tensor([[1, 2, 3]]))
    for cache in (gpt.make_cache(), rnn.make_cache(), s2s.make_cache(memory), KVCache(2), RNNState()):
        assert isinstance(cache, KVCacheLike)


class Undeclared(nn.Module):
    """A model whose forward takes attention_mask but which does not declare ``accepts_padding``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.max_context = inner, inner.max_context

    def make_cache(self):
        return self.inner.make_cache()

    def forward(self, input_ids, *, cache=None, attention_mask=None):
        return self.inner(input_ids, cache=cache, attention_mask=attention_mask)


def test_padding_is_a_declared_capability_not_a_sniffed_signature():
    torch.manual_seed(0)
    gpt = DecoderLM(tiny("decoder")).eval()
    ids, mask = torch.tensor([[0, 5, 6], [4, 5, 6]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="does not declare accepts_padding = True"):
        generate(Undeclared(gpt), ids, 2, attention_mask=mask)
    assert not Session(Undeclared(gpt), ids, 2).can_join()
    declared = Undeclared(gpt)
    declared.accepts_padding = True
    outs = []
    for model in (declared, gpt):
        torch.manual_seed(1)
        outs.append(generate(model, ids, 2, attention_mask=mask))
    assert torch.equal(*outs)
