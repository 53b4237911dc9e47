"""Export to Hugging Face (to_hf): logits parity with transformers and a lossless round trip."""

import json
import os

import pytest
import torch

from attnlab.config import load
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop import from_hf, to_hf
from attnlab.models import build
from tests.interop._parity import F32_ATOL, V, random_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")

SMALL = ["model.n_layer=2", "model.d_model=64", "model.block_size=32"]
GPT = ("gpt-tiny", ["model.bias=true"])
LLAMA = ("llama-tiny", ["model.n_kv_head=2", "model.norm_eps=1e-5", "model.rope_theta=500.0"])

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


def _ours(preset: str, overrides: list[str], seed: int = 0):
    cfg = load(preset, [f"model.vocab_size={V}", *SMALL, *overrides]).model
    torch.manual_seed(seed)
    model = build(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains and biases, so every weight's mapping matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


@pytest.mark.parametrize(("family", "extra", "hf_class", "tied"), [
    (GPT, [], "GPT2LMHeadModel", True),
    (GPT, ["model.tie_embeddings=false", "model.mlp=gelu_exact", "model.d_ff=96"], "GPT2LMHeadModel", False),
    (LLAMA, [], "LlamaForCausalLM", False),
    (LLAMA, ["model.tie_embeddings=true", "model.n_kv_head=1", "model.rope_scaling=linear",
             "model.rope_scaling_factor=2.0"], "LlamaForCausalLM", True),
])
def test_export_matches_and_round_trips(family, extra, hf_class, tied, tmp_path):
    preset, overrides = family
    ours = _ours(preset, overrides + extra)
    ids = random_ids()
    expected = _logits(ours, ids)
    exported = to_hf(ours, tmp_path)
    assert type(exported).__name__ == hf_class
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] == tied
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == hf_class
    assert (_logits(exported, ids) - expected).abs().max().item() < F32_ATOL
    assert (_logits(reloaded, ids) - expected).abs().max().item() < F32_ATOL
    back = from_hf(tmp_path)
    assert back.config.kv_heads == ours.config.kv_heads
    assert (back.lm_head.weight is back.tok_emb.weight) == tied
    assert (_logits(back, ids) - expected).abs().max().item() < F32_ATOL


def test_export_does_not_alias_our_weights():
    ours = _ours(*LLAMA)
    exported = to_hf(ours)
    with torch.no_grad():
        exported.model.embed_tokens.weight.zero_()
    assert ours.tok_emb.weight.abs().sum() > 0


@pytest.mark.parametrize(("family", "extra", "field"), [
    (GPT, ["model.position=alibi"], "position"),
    (GPT, ["model.position=sinusoidal"], "position"),
    (GPT, ["model.attention.window=8"], "attention.window"),
    (GPT, ["model.mixer=linear"], "mixer"),
    (GPT, ["model.norm_placement=post"], "norm_placement"),
    (GPT, ["model.bias=false"], "bias"),
    (GPT, ["model.mlp=swiglu"], "mlp"),
    (GPT, ["model.norm=rmsnorm"], "norm"),
    (GPT, ["model.attention.softcap=30.0"], "attention.softcap"),
    (GPT, ["model.attention.scale=0.5"], "attention.scale"),
    (LLAMA, ["model.mlp=gelu"], "mlp"),
    (LLAMA, ["model.bias=true"], "bias"),
    (LLAMA, ["model.norm=layernorm"], "norm"),
    (LLAMA, ["model.rope_scaling=ntk", "model.rope_scaling_factor=2.0"], "rope_scaling"),
])
def test_unexpressible_config_is_refused_naming_the_field(family, extra, field):
    preset, overrides = family
    ours = _ours(preset, overrides + extra)
    with pytest.raises(AttnlabError, match=rf"model\.{field}=") as err:
        to_hf(ours)
    assert "\n" not in str(err.value)


def test_unsupported_model_class_is_refused():
    with pytest.raises(AttnlabError, match="supports DecoderLM"):
        to_hf(torch.nn.Linear(4, 4))


def test_extra_weights_are_refused():
    from attnlab.finetune.lora import LoRAConfig, inject_lora

    ours = _ours(*LLAMA)
    inject_lora(ours, LoRAConfig(rank=2))
    with pytest.raises(CheckpointError, match="LoRA"):
        to_hf(ours)


def _bert_inputs():
    ids = random_ids(2)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding in one row
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("bare", [False, True])
def test_bert_export_matches_and_round_trips(bare, tmp_path):
    mlm = _ours("bert-tiny", ["model.dropout=0.0"])
    ours = mlm.encoder if bare else mlm
    ids, mask, types = _bert_inputs()
    with torch.no_grad():
        expected = ours(ids, mask, types)
    exported = to_hf(ours, tmp_path)
    assert type(exported).__name__ == ("BertModel" if bare else "BertForMaskedLM")
    auto = transformers.AutoModel if bare else transformers.AutoModelForMaskedLM
    reloaded = auto.from_pretrained(tmp_path).eval()
    valid = mask.bool()  # padded positions are not compared
    for hf_model in (exported, reloaded):
        with torch.no_grad():
            out = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = out.last_hidden_state if bare else out.logits
        assert (got - expected)[valid].abs().max().item() < F32_ATOL
    with torch.no_grad():
        back = from_hf(tmp_path)(ids, mask, types)
    assert (back - expected)[valid].abs().max().item() < F32_ATOL


@pytest.mark.parametrize(("extra", "field"), [
    (["model.norm_placement=pre"], "norm_placement"),
    (["model.type_vocab_size=0"], "type_vocab_size"),
    (["model.position=rope"], "position"),
    (["model.mlp=swiglu"], "mlp"),
])
def test_bert_unexpressible_config_is_refused(extra, field):
    with pytest.raises(AttnlabError, match=rf"model\.{field}="):
        to_hf(_ours("bert-tiny", extra))


@pytest.mark.parametrize("extra", [[], ["model.mlp=geglu", "model.n_decoder_layer=1"]])
def test_t5_export_matches_and_round_trips(extra, tmp_path):
    ours = _ours("t5-tiny", ["model.dropout=0.0", *extra])
    ids, mask, _ = _bert_inputs()
    dec = random_ids(3)[:, :6]
    with torch.no_grad():
        expected = ours(ids, dec, mask)
    exported = to_hf(ours, tmp_path)
    assert type(exported).__name__ == "T5ForConditionalGeneration"
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    for hf_model in (exported, reloaded):
        with torch.no_grad():
            got = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert (got - expected).abs().max().item() < F32_ATOL
    with torch.no_grad():
        back = from_hf(tmp_path)(ids, dec, mask)
    assert (back - expected).abs().max().item() < F32_ATOL


@pytest.mark.parametrize(("extra", "field"), [
    (["model.tie_embeddings=false"], "tie_embeddings"),
    (["model.attention.scale=null"], "attention.scale"),
    (["model.norm_placement=post"], "norm_placement"),
    (["model.position=learned"], "position"),
])
def test_t5_unexpressible_config_is_refused(extra, field):
    with pytest.raises(AttnlabError, match=rf"model\.{field}="):
        to_hf(_ours("t5-tiny", extra))


def test_weights_tied_only_in_transformers_are_refused(monkeypatch):
    """Guard behind the config check: a weight transformers ties must not silently take another's value."""
    import dataclasses

    from attnlab.interop import export

    def untied_t5(cfg):  # what an older transformers would accept: a T5 with its own head
        return {**export._t5_config(dataclasses.replace(cfg, tie_embeddings=True)),
                "tie_word_embeddings": False, "scale_decoder_outputs": False}

    monkeypatch.setitem(export.EXPORTERS, "t5", dataclasses.replace(export.EXPORTERS["t5"], hf_config=untied_t5))
    with pytest.raises(CheckpointError, match="is shared with another weight"):
        to_hf(_ours("t5-tiny", ["model.tie_embeddings=false"]))
