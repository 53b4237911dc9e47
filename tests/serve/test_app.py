"""The FastAPI app: OpenAI shapes, parity with generate, streaming, stop strings, chat through the template,
n choices, logprobs, limits (429, 408) and errors as OpenAI JSON."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from attnlab.generate.text import held_back
from attnlab.serve.client import sse_events

PENALTY = 3.0  # as in conftest.reference
CAP = 32
ANN = [{"role": "user", "content": "My name is Ann."}]


@pytest.fixture
def tiny(serve_model, make_client):
    """(TestClient, Engine) on the tiny pretrained model."""
    return make_client(*serve_model, cap=CAP)


@pytest.fixture
def chat(chat_parts, make_client):
    """(TestClient, Engine) on the tiny ChatML chat model."""
    return make_client(*chat_parts, name="tiny-chat", cap=CAP)


def post(client, path: str, body: dict):
    """(status, JSON) of a non-streamed request, or (status, [chunks]) of a streamed one."""
    r = client.post(path, json=body)
    if r.headers["content-type"].startswith("text/event-stream"):
        return r.status_code, sse_events(r.text)
    return r.status_code, r.json()


def test_health_and_models(tiny):
    client, engine = tiny
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["model"] == "tiny"
    assert {"served", "failed", "cancelled", "running", "queued"} <= set(health.json()["stats"])
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["id"] == "tiny"
    assert body["data"][0]["context_length"] == engine.context == 64
    assert "/v1/chat/completions" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_health_is_503_when_the_worker_stopped(tiny, monkeypatch):
    from attnlab.serve.batcher import Batcher

    client, engine = tiny
    monkeypatch.setattr(Batcher, "alive", property(lambda self: False))  # as if the worker thread had died
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["error"]["code"] == "unavailable"
    status, body = post(client, "/v1/chat/completions", {"messages": ANN, "max_tokens": 2})
    assert status == 503 and body["error"]["code"] == "unavailable" and body["error"]["type"] == "server_error"
    monkeypatch.undo()
    assert client.get("/health").status_code == 200
    engine.close(5)
    assert client.get("/health").json()["error"]["code"] == "shutting_down"
    status, body = post(client, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert status == 503 and body["error"]["code"] == "shutting_down"


def test_completion_greedy_matches_generate(tiny, reference):
    client, engine = tiny
    status, body = post(client, "/v1/completions", {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 20,
                                                     "temperature": 0, "repetition_penalty": PENALTY})
    assert status == 200
    assert body["object"] == "text_completion" and body["model"] == "tiny" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["text"] == reference(engine, "ROMEO:", 20)
    assert len(set(choice["text"])) > 3 and choice["finish_reason"] in ("stop", "length")
    n_prompt = len(engine.tokenizer.encode("ROMEO:"))
    assert body["usage"]["prompt_tokens"] == n_prompt
    assert body["usage"]["total_tokens"] == n_prompt + body["usage"]["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == 20


def test_echo_prepends_the_prompt(tiny):
    client, _ = tiny
    req = {"prompt": ["ROMEO:"], "max_tokens": 6, "temperature": 0, "repetition_penalty": PENALTY}
    plain = post(client, "/v1/completions", req)[1]["choices"][0]["text"]
    assert post(client, "/v1/completions", {**req, "echo": True})[1]["choices"][0]["text"] == "ROMEO:" + plain
    chunks = post(client, "/v1/completions", {**req, "echo": True, "stream": True})[1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "ROMEO:" + plain


@pytest.mark.parametrize("is_chat", [False, True])
def test_stream_concatenates_to_plain_answer(tiny, is_chat):
    client, _ = tiny
    path = "/v1/chat/completions" if is_chat else "/v1/completions"
    req = {"messages": [{"role": "user", "content": "Good morrow"}]} if is_chat else {"prompt": "Good morrow"}
    req.update(max_tokens=16, temperature=0, repetition_penalty=PENALTY)
    _, plain = post(client, path, req)
    status, chunks = post(client, path, {**req, "stream": True})
    assert status == 200
    if is_chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        joined = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert joined == plain["choices"][0]["message"]["content"]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    else:
        joined = "".join(c["choices"][0]["text"] for c in chunks)
        assert joined == plain["choices"][0]["text"]
    assert len(set(joined)) > 3
    assert len(chunks) > 2 and len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_trims_text(tiny, stream):
    client, _ = tiny
    req = {"prompt": "ROMEO:", "max_tokens": 24, "temperature": 0, "repetition_penalty": PENALTY}
    full = post(client, "/v1/completions", req)[1]["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3 and full.find(stop) > 0
    status, body = post(client, "/v1/completions", {**req, "stop": ["@@never@@", stop], "stream": stream})
    assert status == 200
    if stream:
        text, finish = "".join(c["choices"][0]["text"] for c in body), body[-1]["choices"][0]["finish_reason"]
    else:
        text, finish = body["choices"][0]["text"], body["choices"][0]["finish_reason"]
    assert text == full[: full.find(stop)] and finish == "stop"


def test_held_back_tail():
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello", ["world"]) == 0
    assert held_back("ab\ufffd", []) == 1
    assert held_back("xEN", ["END", "N!"]) == 2


def test_seeded_sampling_matches_generate_and_n_gets_seed_plus_i(tiny, reference):
    client, engine = tiny
    req = {"prompt": "ROMEO:", "max_tokens": 16, "temperature": 0.9, "top_p": 0.9, "seed": 3}
    first, second = (post(client, "/v1/completions", req)[1]["choices"][0]["text"] for _ in range(2))
    assert first == second == reference(engine, "ROMEO:", 16, temperature=0.9, top_p=0.9, seed=3,
                                        repetition_penalty=1.0)
    other = post(client, "/v1/completions", {**req, "seed": 4})[1]["choices"][0]["text"]
    assert other != first
    body = post(client, "/v1/completions", {**req, "n": 2})[1]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == [first, other]
    chunks = post(client, "/v1/completions", {**req, "n": 2, "stream": True})[1]
    assert ["".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in (0, 1)] \
        == [first, other]


def test_stream_include_usage(tiny):
    client, _ = tiny
    req = {"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0, "repetition_penalty": PENALTY}
    plain = post(client, "/v1/completions", req)[1]
    chunks = post(client, "/v1/completions", {**req, "stream": True, "stream_options": {"include_usage": True}})[1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == plain["choices"][0]["text"]


def test_concurrent_requests_batch_and_match_generate(tiny, reference):
    client, engine = tiny
    req = {"prompt": "KING:", "max_tokens": 10, "temperature": 0, "repetition_penalty": PENALTY}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: post(client, "/v1/completions", {**req, "stream": i % 2 == 1}), range(8)))
    assert all(status == 200 for status, _ in results)
    expected = reference(engine, "KING:", 10)
    for i, (_, body) in enumerate(results):
        text = "".join(c["choices"][0]["text"] for c in body) if i % 2 else body["choices"][0]["text"]
        assert text == expected
    stats = client.get("/health").json()["stats"]
    assert stats["running"] == stats["queued"] == 0 and stats["served"] == 8
    assert stats["max_batch_seen"] > 1


def test_429_at_the_concurrency_limit_cancels_the_submitted_choices(serve_model, make_client):
    client, engine = make_client(*serve_model, max_concurrency=2)
    status, body = post(client, "/v1/completions", {"prompt": "KING:", "max_tokens": 4, "n": 3})
    assert status == 429 and body["error"]["type"] == "rate_limit_error", body
    end = time.monotonic() + 10  # the two submitted choices were cancelled: the worker drops them
    while (stats := engine.stats())["queued"] + stats["running"] and time.monotonic() < end:
        time.sleep(0.01)
    assert stats["cancelled"] + stats["served"] == 2, stats
    assert post(client, "/v1/completions", {"prompt": "KING:", "max_tokens": 4, "n": 2})[0] == 200


@pytest.mark.parametrize("stream", [False, True])
def test_408_past_the_request_timeout_is_json(serve_model, make_client, stream):
    client, _ = make_client(*serve_model, request_timeout=0.001, gather_ms=20)
    r = client.post("/v1/completions", json={"prompt": "KING:", "max_tokens": 8, "stream": stream})
    assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"


# --------------------------------------------------------------------------- chat on the tiny chat model

def chat_reply(client, messages, **kw) -> dict:
    status, body = post(client, "/v1/chat/completions", {"messages": messages, "temperature": 0, **kw})
    assert status == 200, body
    return body


def test_chat_stops_at_end_of_turn(chat):
    client, engine = chat
    body = chat_reply(client, ANN, max_tokens=CAP)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Nice to meet you, Ann."}
    assert choice["finish_reason"] == "stop"
    reply_ids = engine.tokenizer.encode("Nice to meet you, Ann.")
    assert body["usage"]["completion_tokens"] == len(reply_ids)  # the end-of-turn token is not counted
    assert body["usage"]["prompt_tokens"] == len(engine.chat_ids(ANN))


@pytest.mark.parametrize("stream", [False, True])
def test_plain_template_reply_ends_at_the_newline(chat_parts, make_client, stream):
    from attnlab.data.chat import ChatTemplate

    client, engine = make_client(*chat_parts, template=ChatTemplate.plain())
    assert engine.chat_stop_strings == ["\n"]
    status, body = post(client, "/v1/chat/completions", {"messages": ANN, "temperature": 0, "stream": stream})
    if stream:
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in body)
        finish = body[-1]["choices"][0]["finish_reason"]
    else:
        text, finish = body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]
    assert status == 200 and (text, finish) == ("Nice to meet you, Ann.", "stop")  # no leading space, no newline


def test_chat_second_turn_uses_the_template(chat):
    client, _ = chat
    messages = ANN + [{"role": "assistant", "content": "Nice to meet you, Ann."},
                      {"role": "user", "content": "What is my name?"}]
    assert chat_reply(client, messages)["choices"][0]["message"]["content"] == "Your name is Ann."


def test_chat_content_parts_and_developer_role(chat):
    client, _ = chat
    plain = chat_reply(client, [{"role": "system", "content": "Be kind."}] + ANN)
    parts = chat_reply(client, [{"role": "developer", "content": [{"type": "text", "text": "Be "},
                                                                   {"type": "text", "text": "kind."}]},
                                {"role": "user", "content": [{"type": "text", "text": "My name is Ann."}]}])
    assert parts["choices"][0]["message"] == plain["choices"][0]["message"]
    assert parts["usage"] == plain["usage"]


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
def test_chat_max_completion_tokens(chat, field):
    client, engine = chat
    body = chat_reply(client, ANN, **{field: 2})
    assert body["usage"]["completion_tokens"] == 2 and body["choices"][0]["finish_reason"] == "length"
    tok = engine.tokenizer
    assert body["choices"][0]["message"]["content"] == tok.decode(tok.encode("Nice to meet you, Ann.")[:2])


def test_chat_n_choices_streamed_interleaved(chat):
    client, _ = chat
    body = chat_reply(client, ANN, n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert {c["message"]["content"] for c in body["choices"]} == {"Nice to meet you, Ann."}
    status, chunks = post(client, "/v1/chat/completions", {"messages": ANN, "temperature": 0, "n": 2, "stream": True})
    order = [c["choices"][0]["index"] for c in chunks]
    assert status == 200 and set(order) == {0, 1} and order != sorted(order)  # interleaved
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert "".join(c["delta"].get("content", "") for c in mine) == "Nice to meet you, Ann."
        assert mine[-1]["finish_reason"] == "stop"


def test_chat_logprobs_shape(chat):
    client, engine = chat
    body = chat_reply(client, ANN, logprobs=True, top_logprobs=3)
    content = body["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == "Nice to meet you, Ann."
    for t in content:
        assert len(t["top_logprobs"]) == 3 and t["logprob"] <= 0
        assert t["top_logprobs"][0]["token"] == t["token"]  # greedy: the chosen token is the most likely
        assert bytes(t["bytes"]).decode() == t["token"]
    assert chat_reply(client, ANN)["choices"][0]["logprobs"] is None


def test_completion_logprobs_shape(chat):
    client, _ = chat
    status, body = post(client, "/v1/completions", {"prompt": "Hello there", "max_tokens": 4, "temperature": 0,
                                                     "logprobs": 2})
    lp = body["choices"][0]["logprobs"]
    assert status == 200 and "".join(lp["tokens"]) == body["choices"][0]["text"]
    n = body["usage"]["completion_tokens"]
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n > 1
    assert all(len(top) <= 2 for top in lp["top_logprobs"]) and lp["text_offset"][0] == 0


def test_a_chat_longer_than_the_context_is_a_400(chat):
    client, engine = chat
    status, body = post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "tea " * 200}]})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["param"] == "messages" and "context is 128 tokens" in body["error"]["message"]


# --------------------------------------------------------------------------- errors

LONG = "the " * 40  # about 40 tokens: room for fewer than CAP in the context of 64


@pytest.mark.parametrize("path,body,status,param,code", [
    ("/v1/completions", {"prompt": "hi", "best_of": 2}, 400, "best_of", "unsupported"),
    ("/v1/completions", {"prompt": "hi", "frequency_penalty": 0.5}, 400, "frequency_penalty", "unsupported"),
    ("/v1/completions", {"prompt": "hi", "wat": 1}, 400, "wat", "unknown_field"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": CAP + 1}, 400, "max_tokens", "max_tokens_exceeded"),
    ("/v1/completions", {"prompt": LONG, "max_tokens": CAP}, 400, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "the " * 70}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "empty_prompt"),
    ("/v1/completions", {"prompt": "hi", "n": 9}, 400, "n", "invalid_value"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "name": "x"}]}, 400, "messages[0].name",
     "unknown_field"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role",
     "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0]", "invalid_value"),
    ("/v1/chat/completions", {"messages": [], "max_tokens": 2}, 400, "messages", "invalid_value"),
    ("/v1/chat/completions", {"messages": ANN, "max_tokens": 2, "max_completion_tokens": 3}, 400,
     "max_completion_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": ANN, "top_logprobs": 2}, 400, "top_logprobs", "invalid_value"),
    ("/v1/chat/completions", {"messages": ANN, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs",
     "invalid_value"),
])
def test_errors_are_openai_json(tiny, path, body, status, param, code):
    client, _ = tiny
    got, answer = post(client, path, body)
    assert got == status, answer
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code, err
    assert err["message"] and "\n" not in err["message"] and "Traceback" not in err["message"]
    assert client.get("/health").status_code == 200  # the server keeps serving


@pytest.mark.parametrize("method,path,status,code", [("GET", "/nowhere", 404, "not_found"),
                                                     ("POST", "/v1/nowhere", 404, "not_found"),
                                                     ("GET", "/v1/completions", 405, "method_not_allowed"),
                                                     ("DELETE", "/v1/models", 405, "method_not_allowed")])
def test_routes_and_methods_are_openai_json(tiny, method, path, status, code):
    client, _ = tiny
    r = client.request(method, path, content=json.dumps({"prompt": "hi"}) if method == "POST" else None,
                       headers={"Content-Type": "application/json"})
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_the_error_names_the_fix_for_the_context(tiny):
    client, _ = tiny
    _, answer = post(client, "/v1/completions", {"prompt": LONG, "max_tokens": CAP})
    assert "context is 64 tokens" in answer["error"]["message"] and "lower max_tokens to" in answer["error"]["message"]
