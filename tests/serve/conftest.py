"""Serve-test fixtures: the tiny trained model loaded once, and the reference decode."""

from __future__ import annotations

import pytest
import torch

from attnlab.cli._common import load_for_inference
from attnlab.generate import generate

PENALTY = 3.0  # the tiny model's greedy text is all newlines without a repetition penalty


@pytest.fixture(scope="session")
def serve_model(trained_run):
    """(model, tokenizer, device) of the tiny trained run, on the CPU, one torch thread."""
    torch.set_num_threads(1)
    model, tok, _, device = load_for_inference(str(trained_run), "cpu")
    return model, tok, device


@pytest.fixture(scope="session")
def reference():
    """``ref(engine, prompt, n, **kw)``: the continuation text by ``generate`` alone, up to EOS
    (greedy with repetition penalty 3 unless ``kw`` says otherwise)."""

    def ref(engine, prompt: str, n: int, **kw) -> str:
        ids = engine.tokenizer.encode(prompt)
        kw = {"temperature": 0.0, "repetition_penalty": PENALTY, **kw}
        out = generate(engine.model, torch.tensor([ids]), n, eos_token_id=engine.tokenizer.eos_id, **kw)
        new = out[0, len(ids):].tolist()
        eos = engine.tokenizer.eos_id
        return engine.tokenizer.decode(new[: new.index(eos)] if eos in new else new)

    return ref
