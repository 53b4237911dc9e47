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
