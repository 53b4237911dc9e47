"""The official ``openai`` client against ``attnlab serve``'s app over real HTTP (uvicorn on a thread), on the
tiny chat model saved as a run folder: replies stop at the end of the turn, content parts, max_completion_tokens,
logprobs equal to log_softmax of the model, streaming, the API key and cross-origin refusals."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import torch

from attnlab.cli._chat import load_chat_model
from attnlab.serve.app import create_app
from attnlab.serve.engine import Engine
from attnlab.serve.runner import ServeConfig, start_in_thread
from attnlab.serve.security import SecurityConfig
from tests.generate._chat import save_run

openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install openai)")

KEY = "sk-test-key"
NAME = "tiny-chat"
ANN = [{"role": "user", "content": "My name is Ann."}]
REPLY = "Nice to meet you, Ann."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, engine) of a server on the tiny chat model's run folder (template from the checkpoint), key KEY."""
    torch.set_num_threads(1)
    run = save_run(tmp_path_factory.mktemp("chat") / "run")
    model, tok, template, device, _ = load_chat_model(str(run), "cpu")
    engine = Engine(model, tok, device, NAME, max_tokens_cap=32, template=template)
    running = start_in_thread(create_app(engine, security=SecurityConfig(api_key=KEY)),
                              ServeConfig(port=0, access_log=False))
    yield running.url, engine
    running.stop()
    assert engine.close(5)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key=KEY, max_retries=0, timeout=30)


def test_models_and_a_reply_that_stops_at_end_of_turn(client):
    assert [m.id for m in client.models.list().data] == [NAME]
    done = client.chat.completions.create(model=NAME, messages=ANN, temperature=0)
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == REPLY  # no <|im_end|>, nothing after it
    assert done.choices[0].finish_reason == "stop"
    second = client.chat.completions.create(model=NAME, temperature=0, messages=ANN + [
        {"role": "assistant", "content": REPLY}, {"role": "user", "content": "What is my name?"}])
    assert second.choices[0].message.content == "Your name is Ann."


def test_content_parts_and_developer_role(client):
    parts = client.chat.completions.create(model=NAME, temperature=0, messages=[
        {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": [{"type": "text", "text": "My name "}, {"type": "text", "text": "is Ann."}]}])
    plain = client.chat.completions.create(model=NAME, temperature=0,
                                           messages=[{"role": "system", "content": "Be kind."}] + ANN)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


def test_max_completion_tokens_is_honoured(client):
    done = client.chat.completions.create(model=NAME, messages=ANN, temperature=0, max_completion_tokens=2)
    assert done.usage.completion_tokens == 2 and done.choices[0].finish_reason == "length"
    assert REPLY.startswith(done.choices[0].message.content) and done.choices[0].message.content


def test_logprobs_equal_log_softmax_of_the_model(client, served):
    _, engine = served
    done = client.chat.completions.create(model=NAME, messages=ANN, temperature=0, logprobs=True, top_logprobs=2)
    content = done.choices[0].logprobs.content
    ids = engine.chat_ids(ANN)
    with torch.no_grad():
        for step, item in enumerate(content):
            logp = torch.log_softmax(engine.model(torch.tensor([ids])).float()[0, -1], dim=-1)  # (V,)
            top = torch.topk(logp, 2)
            chosen = int(top.indices[0])  # greedy
            assert item.token == engine.tokenizer.decode([chosen]), step
            assert abs(item.logprob - float(logp[chosen])) < 1e-5
            assert [t.token for t in item.top_logprobs] == [engine.tokenizer.decode([int(i)]) for i in top.indices]
            for got, want in zip(item.top_logprobs, top.values.tolist(), strict=True):
                assert abs(got.logprob - want) < 1e-5
            ids.append(chosen)
        assert int(torch.argmax(engine.model(torch.tensor([ids]))[0, -1])) in engine.chat_stop_ids  # then it stopped
    assert "".join(t.token for t in content) == REPLY


def test_streaming(client):
    chunks = list(client.chat.completions.create(model=NAME, messages=ANN, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 1
    pieces = list(client.completions.create(model=NAME, prompt="Hello there", max_tokens=6, temperature=0,
                                            stream=True))
    whole = client.completions.create(model=NAME, prompt="Hello there", max_tokens=6, temperature=0)
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text


def test_errors_become_the_clients_exceptions(client):
    with pytest.raises(openai.BadRequestError, match="wat"):
        client.chat.completions.create(model=NAME, messages=ANN, extra_body={"wat": 1})
    with pytest.raises(openai.NotFoundError, match=NAME):
        client.chat.completions.create(model="gpt-4o", messages=ANN)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=NAME, prompt="Hello", max_tokens=10_000)


def test_a_wrong_key_gets_401(served):
    wrong = openai.OpenAI(base_url=f"{served[0]}/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=NAME, messages=ANN)


def test_a_cross_origin_text_plain_post_is_refused(served):
    url, engine = served
    before = engine.stats()["served"]
    req = urllib.request.Request(f"{url}/v1/chat/completions", method="POST",
                                 data=b'{"messages": [{"role": "user", "content": "hi"}]}',
                                 headers={"Content-Type": "text/plain", "Origin": "http://evil.example",
                                          "Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code in (403, 415)
    assert engine.stats()["served"] == before  # nothing ran
