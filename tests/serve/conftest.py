"""Serve-test fixtures: the tiny trained model and the tiny chat model loaded once, engines and app clients
around them, and the reference decode."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from attnlab.cli._common import load_for_inference
from attnlab.generate import generate
from attnlab.serve.app import create_app
from attnlab.serve.batcher import BatchConfig
from attnlab.serve.engine import Engine
from tests.generate._chat import chat_model, chat_tokenizer

PENALTY = 3.0  # the tiny model's greedy text is all newlines without a repetition penalty


@pytest.fixture(scope="session")
def serve_model(trained_run):
    """(model, tokenizer, device) of the tiny trained run, on the CPU, one torch thread."""
    torch.set_num_threads(1)
    model, tok, _, device = load_for_inference(str(trained_run), "cpu")
    return model, tok, device


@pytest.fixture(scope="session")
def chat_parts():
    """(model, tokenizer, device) of the tiny ChatML chat model (tests/generate/_chat.py)."""
    torch.set_num_threads(1)
    return chat_model(), chat_tokenizer(), torch.device("cpu")


@pytest.fixture
def make_client():
    """``make_client(model, tok, device, name=..., cap=..., **batch_limits) -> (TestClient, Engine)``; the
    clients and engines are closed after the test."""
    made: list[tuple[TestClient, Engine]] = []

    def make(model, tok, device, name: str = "tiny", cap: int = 32, template=None, **limits):
        engine = Engine(model, tok, device, name, max_tokens_cap=cap, batch=BatchConfig(**limits), template=template)
        client = TestClient(create_app(engine), base_url="http://localhost")  # a loopback Host
        client.__enter__()  # one event loop for every request of the test, concurrent ones included
        made.append((client, engine))
        return client, engine

    yield make
    for client, engine in made:
        client.__exit__(None, None, None)
        assert engine.close(5)


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
