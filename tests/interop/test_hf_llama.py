"""Llama import from Hugging Face: logits and greedy-decoding parity with transformers (GQA, RoPE)."""

import os

import pytest

from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop.hf import from_hf
from attnlab.models import DecoderLM
from tests.interop._parity import F32_ATOL, SPECIAL_IDS, V, max_logit_diff, random_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers(tied, tmp_path, tiny_hf):
    ref = tiny_hf("llama", **SPECIAL_IDS, tie_word_embeddings=tied)
    ours = from_hf(ref)
    assert isinstance(ours, DecoderLM)
    cfg = ours.config
    assert (cfg.n_head, cfg.kv_heads, cfg.rope_theta, cfg.norm_eps) == (4, 2, 500.0, 1e-5)
    assert (ours.lm_head.weight is ours.tok_emb.weight) == tied
    assert max_logit_diff(ours, ref, random_ids()) < F32_ATOL
    ref.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert max_logit_diff(from_hf(tmp_path), ref, random_ids()) < F32_ATOL


def test_linear_rope_scaling_matches_transformers(tiny_hf):
    ref = tiny_hf("llama", **SPECIAL_IDS, seed=5,
                  rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
    ours = from_hf(ref)
    assert (ours.config.rope_scaling, ours.config.rope_scaling_factor) == ("linear", 2.0)
    assert max_logit_diff(ours, ref, random_ids()) < F32_ATOL


def test_greedy_decoding_matches_transformers(check_greedy, tiny_hf):
    ref = tiny_hf("llama", **SPECIAL_IDS, seed=3)
    check_greedy(ref, from_hf(ref), random_ids(4)[:1, :5])



def test_clear_errors(write_config, tiny_hf):
    base = {"model_type": "llama", "vocab_size": V, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4}
    with pytest.raises(AttnlabError, match="rope scaling 'yarn' is not supported; supported: default, linear"):
        from_hf(write_config(**base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(AttnlabError, match="rope scaling 'dynamic' is not supported"):
        from_hf(write_config(**base, rope_scaling={"type": "dynamic", "factor": 2.0}))
    with pytest.raises(AttnlabError, match="attention_bias: true is not supported"):
        from_hf(write_config(**base, attention_bias=True))
    with pytest.raises(AttnlabError, match="mlp_bias: true is not supported"):
        from_hf(tiny_hf("llama", **SPECIAL_IDS, mlp_bias=True))
    with pytest.raises(AttnlabError, match="head_dim 32 with hidden_size / num_attention_heads = 64 / 4"):
        from_hf(write_config(**base, head_dim=32))
    with pytest.raises(AttnlabError, match="hidden_act 'gelu' is not supported"):
        from_hf(write_config(**base, hidden_act="gelu"))
    with pytest.raises(CheckpointError, match="Llama config.json lacks 'intermediate_size'"):
        from_hf(write_config(model_type="llama", vocab_size=V, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4))
    with pytest.raises(AttnlabError) as err:
        from_hf(write_config(**base, attention_bias=True))
    assert "\n" not in str(err.value)  # one line, as the CLI prints it
