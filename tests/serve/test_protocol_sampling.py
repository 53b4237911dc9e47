"""The server reads a request's decoding options into one SamplingConfig: a bad value is a 400 naming its field."""

import math

import pytest

from attnlab.generate import SamplingConfig
from attnlab.serve.protocol import RequestError, Sampling, parse_sampling


@pytest.mark.parametrize("field,value", [
    ("seed", 10**23), ("seed", 1e23), ("seed", -1), ("seed", 1.5),
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -1), ("temperature", 2.5),
    ("temperature", "hot"),
    ("top_p", 0), ("top_p", 1.5), ("top_p", math.nan),
    ("max_tokens", 0), ("max_tokens", "8"), ("max_tokens", True),
    ("repetition_penalty", 0), ("repetition_penalty", math.nan), ("repetition_penalty", 11),
])
def test_bad_value_is_a_400_naming_the_field(field, value):
    with pytest.raises(RequestError) as info:
        parse_sampling({"prompt": "hi", field: value})
    err = info.value
    assert err.status == 400 and err.param == field and err.code == "invalid_value"
    assert err.message.startswith(f"'{field}': must") and "\n" not in err.message


def test_good_request_builds_the_config():
    s = parse_sampling({"prompt": "hi", "max_tokens": 7, "temperature": 0, "top_p": 1, "seed": 3,
                        "repetition_penalty": 1.5, "stop": "\n", "stream": True})
    assert s.config == SamplingConfig(max_new_tokens=7, temperature=0.0, top_p=1.0, seed=3, repetition_penalty=1.5)
    assert s.max_tokens == 7 and s.stop == ["\n"] and s.stream and not s.include_usage
    assert Sampling().config == SamplingConfig() and Sampling().max_tokens is None


def test_nan_in_the_json_body_is_a_400(serve_model):
    """End to end: Python's json reads NaN / Infinity; the answer is a 400, not a 500."""
    from attnlab.serve import Engine, ServeConfig, make_server, start_in_thread
    from attnlab.serve.client import request as call

    model, tok, device = serve_model
    engine = Engine(model, tok, device, "tiny", max_tokens_cap=8)
    server = make_server(engine, ServeConfig(port=0, log_requests=False))
    thread = start_in_thread(server)
    host, port = server.server_address[:2]
    base = f"http://{host}:{port}"
    try:
        for raw, param in [(b'{"prompt": "hi", "temperature": NaN}', "temperature"),
                           (b'{"prompt": "hi", "temperature": -Infinity}', "temperature"),
                           (b'{"prompt": "hi", "seed": 100000000000000000000000}', "seed")]:
            status, answer = call(base, "/v1/completions", None, raw=raw)
            assert status == 400 and answer["error"]["param"] == param, answer
        assert call(base, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "temperature": 0})[0] == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert engine.close(5)
