"""The request schemas: a bad value is a 400 naming its field, strict types, no NaN, no lone surrogates, unknown
fields refused; bodies FastAPI cannot parse are 400s too, never 500s."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from attnlab.generate import SamplingConfig
from attnlab.serve.job import RequestError
from attnlab.serve.schemas import ChatRequest, CompletionRequest, validation_error


def refused(model, body: dict) -> RequestError:
    """The RequestError a body gets (from pydantic's errors, or raised by a validator)."""
    try:
        model.model_validate(body)
    except ValidationError as e:
        return validation_error(e.errors())
    except RequestError as e:
        return e
    raise AssertionError(f"{body} was accepted")


@pytest.mark.parametrize("field,value", [
    ("seed", 2**64), ("seed", 10**30), ("seed", 1e23), ("seed", -1), ("seed", 1.5), ("seed", True),
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -1), ("temperature", 2.5),
    ("temperature", "hot"),
    ("top_p", 0), ("top_p", 1.5), ("top_p", math.nan),
    ("max_tokens", 0), ("max_tokens", "8"), ("max_tokens", True), ("max_tokens", 2.0),
    ("repetition_penalty", 0), ("repetition_penalty", math.nan), ("repetition_penalty", 11),
    ("n", 0), ("n", 9), ("n", 10**6), ("logprobs", 6), ("logprobs", -1), ("stream", "yes"), ("echo", 1),
    ("stop", ""), ("stop", [1]), ("stop", ["a"] * 5), ("stop", []), ("user", 5), ("model", ["tiny"]),
    ("best_of", 0), ("presence_penalty", 1.0), ("frequency_penalty", math.nan),
])
def test_bad_completion_value_is_a_400_naming_the_field(field, value):
    err = refused(CompletionRequest, {"prompt": "hi", field: value})
    assert err.status == 400 and err.param is not None and err.param.split("[")[0] == field, err.body()
    assert err.message.startswith(f"'{field}") and "\n" not in err.message


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": "\ud800"}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": []}, "tools"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": 1}},
     "stream_options.include_usage"),
    ({"messages": [{"role": "user", "content": "hi"}], "\ud800": 1}, None),
])
def test_bad_chat_request_names_the_field(body, param):
    err = refused(ChatRequest, body)
    assert err.status == 400 and err.param == param, err.body()
    assert "\n" not in err.message


def test_a_good_request_builds_the_sampling_options():
    req = CompletionRequest.model_validate({"prompt": "hi", "max_tokens": 7, "temperature": 0, "top_p": 1, "seed": 3,
                                            "repetition_penalty": 1.5, "stop": "\n", "stream": True, "logprobs": 2,
                                            "frequency_penalty": 0, "best_of": 1, "user": "u-1"})
    s = req.sampling([0, 5], choice=1)
    assert s.config == SamplingConfig(max_new_tokens=7, temperature=0.0, top_p=1.0, seed=4, repetition_penalty=1.5)
    assert s.stop == ["\n"] and s.stop_ids == [0, 5] and s.stream and not s.include_usage and s.logprobs == 2
    chat = ChatRequest.model_validate({"messages": [{"role": "developer", "content": "Be brief."}],
                                       "max_completion_tokens": 3, "logprobs": True})
    assert chat.sampling([]).max_tokens == 3 and chat.sampling([]).logprobs == 0
    assert chat.messages[0].as_template_message() == {"role": "system", "content": "Be brief."}
    assert ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}]}).sampling([]).logprobs is None


def test_null_means_the_default_but_an_unknown_null_is_refused():
    req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "n": None, "stream": None,
                                      "logprobs": None, "top_logprobs": None, "stop": None, "seed": None})
    assert req.n == 1 and req.stream is False and req.sampling([]).logprobs is None
    assert CompletionRequest.model_validate({"prompt": "x", "echo": None}).echo is False
    assert refused(CompletionRequest, {"prompt": None}).param == "prompt"
    assert refused(CompletionRequest, {"prompt": "x", "functions": None}).code == "unknown_field"


def test_the_largest_seed_wraps_for_the_next_choice():
    req = CompletionRequest.model_validate({"prompt": "hi", "seed": 2**63 - 1, "n": 2})
    assert [req.sampling([], i).config.seed for i in (0, 1)] == [2**63 - 1, 0]


# --------------------------------------------------------------------------- end to end: never a 500

@pytest.fixture
def client(serve_model, make_client):
    return make_client(*serve_model, cap=8)[0]


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("raw,param", [
    (b'{"prompt": "hi", "temperature": NaN}', "temperature"),
    (b'{"prompt": "hi", "temperature": -Infinity}', "temperature"),
    (b'{"prompt": "hi", "seed": 18446744073709551616}', "seed"),
    (b'{"prompt": "hi", "seed": 1000000000000000000000000000000}', "seed"),
    (b'{"prompt": "\\ud800"}', "prompt"),
    (b'{"prompt": "hi", "\\udfff": 1}', None),
    (b'{"prompt": "hi", "stop": ["ok", "\\ud800x"]}', "stop[1]"),
    (b'{"prompt": "hi", "n": 1000000000}', "n"),
    (b'{not json', None),
    (b'[1, 2]', None),
    (b'"prompt"', None),
    (b'null', None),
    (b'', None),
    (b'{"prompt": "\xff\xfe"}', None),  # not UTF-8
    (b'[' * 100_000 + b']' * 100_000, None),
    (b'{"prompt": ' + b'[' * 100_000 + b']' * 100_000 + b'}', None),
    (b'{"prompt": "hi", "stop": ' + b'[' * 500 + b']' * 500 + b'}', "stop[0]"),
    (b'{"prompt": "hi", "x": ' + b'[' * 500 + b']' * 500 + b'}', "x"),
])
def test_malformed_bodies_are_400s(client, raw, param):
    r = client.post("/v1/completions", content=raw, headers=JSON)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"], err
    assert r.content.isascii()  # escaped: a lone surrogate echoed back cannot break the encoding
    ok = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2
