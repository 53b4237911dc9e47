"""GPT-2 import from Hugging Face: logits and greedy-decoding parity with transformers."""

import os

import pytest
import torch

from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop.hf import from_hf
from attnlab.models import DecoderLM
from tests.interop._parity import F32_ATOL, SPECIAL_IDS, V, max_logit_diff, random_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


@pytest.mark.parametrize("kw", [{}, {"activation_function": "gelu", "n_inner": 80, "scale_attn_weights": False}])
def test_logits_match_transformers(kw, tiny_hf):
    ref = tiny_hf("gpt2", **SPECIAL_IDS, **kw)
    ours = from_hf(ref)
    assert isinstance(ours, DecoderLM) and ours.config.tie_embeddings
    assert ours.lm_head.weight is ours.tok_emb.weight
    assert max_logit_diff(ours, ref, random_ids()) < F32_ATOL


def test_from_saved_directory_and_bare_model(tmp_path, tiny_hf):
    ref = tiny_hf("gpt2", **SPECIAL_IDS, seed=2)
    ref.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert max_logit_diff(from_hf(tmp_path), ref, random_ids()) < F32_ATOL
    bare = transformers.GPT2Model(ref.config).eval()  # no head: logits from the tied embedding
    bare.load_state_dict(ref.transformer.state_dict())
    assert max_logit_diff(from_hf(bare), ref, random_ids()) < F32_ATOL


def test_greedy_decoding_matches_transformers(check_greedy, tiny_hf):
    ref = tiny_hf("gpt2", **SPECIAL_IDS, seed=3)
    check_greedy(ref, from_hf(ref), random_ids(4)[:1, :5])



def test_clear_errors(write_config, tiny_hf):
    base = {"model_type": "gpt2", "vocab_size": V, "n_embd": 64, "n_layer": 2, "n_head": 4}
    with pytest.raises(AttnlabError, match="activation_function 'silu' is not supported"):
        from_hf(write_config(**base, activation_function="silu"))
    with pytest.raises(AttnlabError, match="scale_attn_by_inverse_layer_idx is not supported"):
        from_hf(write_config(**base, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(AttnlabError, match="architecture GPT2ForSequenceClassification is not supported"):
        from_hf(write_config(**base, architectures=["GPT2ForSequenceClassification"]))
    with pytest.raises(CheckpointError, match="GPT-2 config.json lacks 'n_embd'"):
        from_hf(write_config(model_type="gpt2", vocab_size=V, n_layer=2, n_head=4))
    ref = tiny_hf("gpt2", **SPECIAL_IDS)
    ref.transformer.h[0].attn.register_buffer("extra", torch.zeros(1))
    with pytest.raises(CheckpointError, match="weight 'transformer.h.0.attn.extra' has no place"):
        from_hf(ref)
