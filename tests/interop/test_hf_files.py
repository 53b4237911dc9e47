"""Hugging Face folder files: sharded weights (both ways), pytorch_model.bin, and tokenizers through to_hf/from_hf."""

import json
import os

import pytest
import torch

from attnlab.config import load
from attnlab.data import Tokenizer
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop import from_hf, to_hf
from attnlab.models import build
from tests.interop._parity import F32_ATOL

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention

INDEX = "model.safetensors.index.json"
TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,"] * 10
TEXT = "To be, or not — ünïcode, that is the question."


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


def _ids(vocab: int):
    return torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(3))


def _shards(path):
    return sorted(p.name for p in path.glob("model-*-of-*.safetensors"))


def test_sharded_folder_from_transformers_imports(tiny_hf, tmp_path):
    ref = tiny_hf("llama")
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    assert not (tmp_path / "model.safetensors").exists() and len(_shards(tmp_path)) > 1
    ids = _ids(ref.config.vocab_size)
    assert (_logits(from_hf(tmp_path), ids) - _logits(ref, ids)).abs().max().item() < F32_ATOL


def test_missing_or_inconsistent_shards_are_one_line_errors(tiny_hf, tmp_path):
    ref = tiny_hf("gpt2")
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / INDEX).read_text())
    (tmp_path / INDEX).write_text(json.dumps({**index, "weight_map": {**index["weight_map"], "extra.weight": "x.bin"}}))
    with pytest.raises(CheckpointError, match=f"shard 'x.bin' named in {INDEX} is missing") as err:
        from_hf(tmp_path)
    assert "\n" not in str(err.value)
    first = _shards(tmp_path)[0]
    (tmp_path / INDEX).write_text(json.dumps({**index, "weight_map": {**index["weight_map"], "extra.weight": first}}))
    with pytest.raises(CheckpointError, match=f"weight 'extra.weight' is listed in {INDEX} under '{first}'"):
        from_hf(tmp_path)
    (tmp_path / INDEX).write_text(json.dumps({**index, "weight_map": {"a": "../model-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the folder"):
        from_hf(tmp_path)
    (tmp_path / INDEX).write_text("{}")
    with pytest.raises(CheckpointError, match="is not a valid shard index"):
        from_hf(tmp_path)
    (tmp_path / INDEX).unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        from_hf(tmp_path)


def test_pytorch_model_bin_imports(tiny_hf, tmp_path):
    ref = tiny_hf("gpt2")
    ref.config.save_pretrained(tmp_path)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ids = _ids(ref.config.vocab_size)
    assert (_logits(from_hf(tmp_path), ids) - _logits(ref, ids)).abs().max().item() < F32_ATOL


def _ours(preset: str, vocab: int, *overrides: str):
    cfg = load(preset, [f"model.vocab_size={vocab}", "model.n_layer=2", "model.d_model=64", "model.block_size=32",
                        "model.dropout=0.0", *overrides]).model
    torch.manual_seed(0)
    return build(cfg).eval()


def test_to_hf_writes_shards_transformers_loads(tmp_path):
    ours = _ours("llama-tiny", 101, "model.n_kv_head=2")
    with pytest.raises(AttnlabError, match="max_shard_size needs a path"):
        to_hf(ours, max_shard_size="100KB")
    with pytest.raises(AttnlabError, match="max_shard_size='lots' is not a size"):
        to_hf(ours, tmp_path / "bad", max_shard_size="lots")
    assert not (tmp_path / "bad").exists()
    to_hf(ours, tmp_path / "hf", max_shard_size=100_000)
    out = tmp_path / "hf"
    shards = _shards(out)
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert set(json.loads((out / INDEX).read_text())["weight_map"].values()) == set(shards)
    ids = _ids(101)
    expected = _logits(ours, ids)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert (_logits(reloaded, ids) - expected).abs().max().item() < F32_ATOL
    assert (_logits(from_hf(out), ids) - expected).abs().max().item() < F32_ATOL


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FAMILIES = [  # (preset, overrides, special tokens added to the BPE, AutoModel class, expected roles)
    ("gpt-tiny", ["model.bias=true"], ["[PAD]"], "AutoModelForCausalLM",
     {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "[PAD]"}),
    ("llama-tiny", [], ["<s>", "</s>", "<unk>"], "AutoModelForCausalLM",
     {"eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}),
    ("t5-tiny", ["model.n_decoder_layer=2"], ["<pad>", "</s>", "<unk>"], "AutoModelForSeq2SeqLM",
     {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}),
    ("bert-tiny", [], BERT_SPECIALS, "AutoModelForMaskedLM",
     {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}),
]


@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train_bpe(TEXTS, vocab_size=300)


@pytest.mark.parametrize(("preset", "overrides", "specials", "auto", "roles"), FAMILIES,
                         ids=[f[0] for f in FAMILIES])
def test_tokenizer_travels_with_the_model(preset, overrides, specials, auto, roles, bpe, tmp_path):
    tok = bpe.with_special_tokens(specials)
    ours = _ours(preset, 320, *overrides)
    to_hf(ours, tmp_path, tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert {role: getattr(hf_tok, role) for role in roles} == roles
    assert hf_tok.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT)
    assert hf_tok.decode(tok.encode(TEXT)) == TEXT
    config = json.loads((tmp_path / "config.json").read_text())
    for role in ("eos_token", "bos_token", "pad_token"):
        if role in roles:
            assert config[f"{role}_id"] == tok.token_id(roles[role]) == getattr(hf_tok, f"{role}_id")
    getattr(transformers, auto).from_pretrained(tmp_path)  # the model folder still loads
    back, back_tok = from_hf(tmp_path, with_tokenizer=True)
    assert back_tok.encode(TEXT) == tok.encode(TEXT) and back_tok.special_ids == tok.special_ids


def test_tokenizer_as_a_path_and_errors(bpe, tmp_path):
    file = bpe.save(tmp_path / "tok" / "tokenizer.json")
    ours = _ours("gpt-tiny", 300, "model.bias=true")
    to_hf(ours, tmp_path / "hf", tokenizer=file)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").encode(TEXT) == bpe.encode(TEXT)
    assert from_hf(tmp_path / "hf", with_tokenizer=True)[1].encode(TEXT) == bpe.encode(TEXT)
    small = _ours("gpt-tiny", 200, "model.bias=true")
    with pytest.raises(AttnlabError, match="the tokenizer has 300 tokens but the model's vocab_size is 200"):
        to_hf(small, tmp_path / "small", tokenizer=bpe)
    assert not (tmp_path / "small").exists()
    with pytest.raises(AttnlabError, match="tokenizer must be an attnlab Tokenizer"):
        to_hf(ours, tmp_path / "x", tokenizer=42)
    to_hf(ours, tmp_path / "bare")
    assert from_hf(tmp_path / "bare", with_tokenizer=True)[1] is None
