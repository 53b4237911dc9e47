"""T5 import from Hugging Face: logits parity with transformers on random tiny checkpoints."""

import json
import os

import pytest
import torch

from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop.hf import from_hf
from attnlab.models import EncoderDecoder
from tests.interop._parity import F32_ATOL, F32_ATOL_WIDE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")

V = 61


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


def _t5_config(**kw):
    base = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.1,
                decoder_start_token_id=0)
    base.update(kw)
    return transformers.T5Config(**base)


def _perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # non-trivial norm gains, so every weight's mapping matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _tiny_t5(seed: int = 0, cls=None, **kw):
    torch.manual_seed(seed)
    model = (cls or transformers.T5ForConditionalGeneration)(_t5_config(**kw))
    return _perturb(model, seed + 100)


def _inputs():
    """A padded source batch (right and left padding) longer than max_distance, and decoder inputs."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(2, V, (3, 30), generator=g)
    am = torch.ones_like(src)
    am[1, 21:], am[2, :6] = 0, 0
    dec = torch.randint(2, V, (3, 25), generator=g)
    dec[:, 0] = 0
    return src, am, dec


def _compare(ours, ref):
    src, am, dec = _inputs()
    with torch.no_grad():
        expected = ref(input_ids=src, attention_mask=am, decoder_input_ids=dec).logits
        got = ours(src, dec, attention_mask=am)
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("proj, mlp", [("relu", "relu"), ("gated-gelu", "geglu")])
@pytest.mark.parametrize("tied", [True, False])
def test_conditional_generation_logits_match(tmp_path, proj, mlp, tied):
    ref = _tiny_t5(feed_forward_proj=proj, tie_word_embeddings=tied)
    ref.save_pretrained(tmp_path)
    for source in (ref, tmp_path):  # a model object, and a directory read without transformers
        ours = from_hf(source)
        assert isinstance(ours, EncoderDecoder) and not ours.training
        cfg = ours.config
        assert cfg.mlp == mlp and cfg.attention.scale == 1.0 and cfg.position == "relative"
        assert (cfg.n_layer, cfg.n_decoder_layer, cfg.relative_buckets, cfg.relative_max_distance) == (2, 3, 8, 20)
        # T5 scales the decoder output by d_model^-0.5 exactly when the head is the tied embedding
        assert (ours.lm_head.weight is ours.tok_emb.weight) == tied
        assert ours.head_scale == (32 ** -0.5 if tied else 1.0)
        diff = _compare(ours, ref)
        assert diff < F32_ATOL_WIDE, (source, diff)


def test_separate_lm_head(tmp_path):
    """An untied head with its own weights (T5 v1.1): from the object and from an old-style directory."""
    ref = _tiny_t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ref.lm_head.weight = torch.nn.Parameter(0.5 * torch.randn(V, 32))
    assert not torch.equal(ref.lm_head.weight, ref.shared.weight)
    assert _compare(from_hf(ref), ref) < F32_ATOL_WIDE
    # a directory as older transformers wrote T5 v1.1: tie_word_embeddings false, both matrices stored
    from safetensors.torch import save_file
    ref.config.save_pretrained(tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    hf_cfg.pop("scale_decoder_outputs", None)
    hf_cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if "embed_tokens" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    ours = from_hf(tmp_path)
    assert torch.equal(ours.lm_head.weight, ref.lm_head.weight)
    assert _compare(ours, ref) < F32_ATOL_WIDE


def test_t5_model_without_head():
    """T5Model: decoder hidden states match last_hidden_state; logits come from the shared embedding."""
    ref = _tiny_t5(cls=transformers.T5Model)
    ours = from_hf(ref)
    hidden = []
    ours.decoder.final_norm.register_forward_hook(lambda m, i, out: hidden.append(out))
    src, am, dec = _inputs()
    with torch.no_grad():
        expected = ref(input_ids=src, attention_mask=am, decoder_input_ids=dec).last_hidden_state
        logits = ours(src, dec, attention_mask=am)
    assert (hidden[0] - expected).abs().max().item() < F32_ATOL
    lm = transformers.T5ForConditionalGeneration(ref.config).eval()
    lm.load_state_dict(ref.state_dict(), strict=False)  # the head is tied to the shared embedding
    with torch.no_grad():
        expected_logits = lm(input_ids=src, attention_mask=am, decoder_input_ids=dec).logits
    assert (logits - expected_logits).abs().max().item() < F32_ATOL


def test_cached_decoding_of_an_imported_model():
    ref = _tiny_t5(feed_forward_proj="gated-gelu")
    ours = from_hf(ref)
    src, am, dec = _inputs()
    with torch.no_grad():
        full = ours(src, dec, attention_mask=am)
        cache = ours.make_cache(ours.encode(src, attention_mask=am))
        stepped = torch.cat([ours.decode(dec[:, i:i + 1], cache=cache) for i in range(dec.shape[1])], 1)
    assert (stepped - full).abs().max().item() <= 1e-5



def test_clear_errors(write_config):
    base = dict(model_type="t5", vocab_size=V, d_model=32, d_kv=8, num_layers=2, num_heads=4)
    with pytest.raises(AttnlabError, match=r"d_kv \* num_heads = 16 \* 4 != d_model = 32 is not supported"):
        from_hf(write_config(**{**base, "d_kv": 16}))
    with pytest.raises(AttnlabError, match=r"d_kv \* num_heads .* is not supported"):
        from_hf(_tiny_t5(d_kv=4))
    with pytest.raises(AttnlabError, match="feed_forward_proj 'gated-relu' is not supported"):
        from_hf(write_config(**base, feed_forward_proj="gated-relu"))
    with pytest.raises(AttnlabError, match="architecture T5EncoderModel is not supported for 't5'"):
        from_hf(write_config(**base, architectures=["T5EncoderModel"]))
    with pytest.raises(CheckpointError, match="T5 config.json lacks 'd_kv'"):
        from_hf(write_config(model_type="t5", vocab_size=V, d_model=32, num_layers=2, num_heads=4))
    # decoder outputs scaled (a tied head) but a head of its own: not representable
    ref = _tiny_t5(tie_word_embeddings=True)
    ref.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32))
    with pytest.raises(AttnlabError, match="lm_head differs from the shared embedding"):
        from_hf(ref)


def test_unknown_weight_is_reported():
    ref = _tiny_t5()
    state = ref.state_dict()
    state["decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)

    class Fake(torch.nn.Module):
        config = ref.config

        def state_dict(self):
            return state

    with pytest.raises(CheckpointError, match="'decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight' "
                                              "has no place"):
        from_hf(Fake())
