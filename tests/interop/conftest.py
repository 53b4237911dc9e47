"""Fixtures shared by the Hugging Face interop tests."""

import json

import pytest


@pytest.fixture
def write_config(tmp_path):
    """A function writing ``config.json`` from keyword fields into a fresh folder, returning the folder."""

    def write(**cfg):
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        return tmp_path

    return write


@pytest.fixture
def check_greedy():
    """A function checking that an imported decoder greedily decodes ``n`` tokens as ``transformers`` does,
    with and without our KV cache."""
    import torch

    from attnlab.generate import generate

    def check(ref, ours, prompt, n: int = 8) -> None:
        cached = generate(ours, prompt, n, temperature=0, use_cache=True)
        uncached = generate(ours, prompt, n, temperature=0, use_cache=False)
        assert torch.equal(cached, uncached)
        expected = ref.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n,
                                min_new_tokens=n, pad_token_id=0, eos_token_id=None)
        assert torch.equal(cached, expected)

    return check


TINY_HF = {  # family → (transformers config class, model class, config fields): random tiny checkpoints
    # (T5: as many decoder as encoder layers: transformers 5.23 sizes the decode cache by num_layers)
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             {"vocab_size": 101, "n_positions": 32, "n_embd": 64, "n_layer": 2, "n_head": 4}),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              {"vocab_size": 101, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
               "rms_norm_eps": 1e-5, "rope_theta": 500.0}),
    "t5": ("T5Config", "T5ForConditionalGeneration",
           {"vocab_size": 61, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_decoder_layers": 2,
            "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
            "decoder_start_token_id": 0}),
}


@pytest.fixture
def tiny_hf():
    """A function building a random tiny ``transformers`` model of a family in :data:`TINY_HF`, float32, eval mode,
    its weights perturbed (by ``spread`` · N(0, 1)) so that norm gains and biases are not trivial."""
    import torch
    import transformers

    def build(family: str, seed: int = 0, spread: float = 0.05, **kw):
        config_cls, model_cls, fields = TINY_HF[family]
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**{**fields, **kw}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(spread * torch.randn_like(p))
        return model.float().eval()

    return build
