"""The OpenAI-compatible server: shapes, greedy parity with generate, streaming, stop strings, errors, concurrency."""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from attnlab.generate.text import held_back as _held_back
from attnlab.serve import Engine, ServeConfig, make_server, start_in_thread
from attnlab.serve.client import request as call
from attnlab.serve.client import sse_events
from attnlab.serve.protocol import chat_prompt

CAP = 32
BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def served(serve_model):
    """(base url, engine) of a server on an ephemeral port, shut down afterwards."""
    model, tok, device = serve_model
    engine = Engine(model, tok, device, "tiny", max_tokens_cap=CAP)
    server = make_server(engine, ServeConfig(port=0, max_body_bytes=BODY_LIMIT, log_requests=False))
    thread = start_in_thread(server)
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", engine
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert engine.close(5)


PENALTY = 3.0  # as in conftest.reference


def test_health_and_models(served):
    base, engine = served
    status, health = call(base, "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"
    assert set(health["stats"]) == {"served", "failed", "cancelled", "batches", "joined", "max_batch_seen", "running",
                                   "queued"}
    status, body = call(base, "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert body["data"][0]["id"] == "tiny" and body["data"][0]["context_length"] == engine.context == 64


def test_completion_greedy_matches_generate(served, reference):
    base, engine = served
    status, body = call(base, "/v1/completions", {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 20,
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


def test_chat_uses_plain_template(served, reference):
    base, engine = served
    messages = [{"role": "system", "content": "Speak."}, {"role": "user", "content": "Who is there?"}]
    assert chat_prompt({"messages": messages}) == "system: Speak.\nuser: Who is there?\nassistant:"
    status, body = call(base, "/v1/chat/completions", {"messages": messages, "max_tokens": 12, "temperature": 0,
                                                         "repetition_penalty": PENALTY})
    assert status == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] == reference(engine, chat_prompt({"messages": messages}), 12)


@pytest.mark.parametrize("chat", [False, True])
def test_stream_concatenates_to_plain_answer(served, chat):
    base, _ = served
    path = "/v1/chat/completions" if chat else "/v1/completions"
    req = ({"messages": [{"role": "user", "content": "Good morrow"}]} if chat else {"prompt": "Good morrow"})
    req.update(max_tokens=16, temperature=0, repetition_penalty=PENALTY)
    _, plain = call(base, path, req)
    status, text = call(base, path, {**req, "stream": True})
    assert status == 200
    chunks = sse_events(text)
    if chat:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
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
def test_stop_string_trims_text(served, stream):
    base, _ = served
    req = {"prompt": "ROMEO:", "max_tokens": 24, "temperature": 0, "repetition_penalty": PENALTY}
    full = call(base, "/v1/completions", req)[1]["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3 and full.find(stop) > 0
    expected = full[: full.find(stop)]
    status, body = call(base, "/v1/completions", {**req, "stop": ["@@never@@", stop], "stream": stream})
    assert status == 200
    if stream:
        chunks = sse_events(body)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        text, finish = body["choices"][0]["text"], body["choices"][0]["finish_reason"]
    assert text == expected and finish == "stop"


def test_seeded_sampling_matches_generate(served, reference):
    base, engine = served
    req = {"prompt": "ROMEO:", "max_tokens": 16, "temperature": 0.9, "top_p": 0.9, "seed": 3}
    first, second = (call(base, "/v1/completions", req)[1]["choices"][0]["text"] for _ in range(2))
    assert first == second == reference(engine, "ROMEO:", 16, temperature=0.9, top_p=0.9, seed=3,
                                        repetition_penalty=1.0)
    other = call(base, "/v1/completions", {**req, "seed": 4})[1]["choices"][0]["text"]
    assert other != first


def test_stream_include_usage(served):
    base, _ = served
    req = {"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0, "repetition_penalty": PENALTY}
    plain = call(base, "/v1/completions", req)[1]
    chunks = sse_events(call(base, "/v1/completions", {**req, "stream": True,
                                                        "stream_options": {"include_usage": True}})[1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == plain["choices"][0]["text"]


def test_held_back_tail():
    assert _held_back("hello wor", ["world"]) == 3
    assert _held_back("hello", ["world"]) == 0
    assert _held_back("ab\ufffd", []) == 1
    assert _held_back("xEN", ["END", "N!"]) == 2


LONG = "the " * 70


@pytest.mark.parametrize("path,body,raw,status,param", [
    ("/v1/completions", None, b"{not json", 400, None),
    ("/v1/completions", None, b"[1, 2]", 400, None),
    ("/v1/completions", {"prompt": 5}, None, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "8"}, None, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": True}, None, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, None, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, None, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, None, 400, "stream"),
    ("/v1/completions", {"prompt": "hi", "stop": [1]}, None, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "seed": 1.5}, None, 400, "seed"),
    ("/v1/completions", {"prompt": "hi", "repetition_penalty": 0}, None, 400, "repetition_penalty"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, None, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, None, 400, "stream_options"),
    ("/v1/completions", {"prompt": "hi", "stream": True, "stream_options": {"include_usage": 1}}, None, 400,
     "stream_options"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": CAP + 1}, None, 400, "max_tokens"),
    ("/v1/completions", {"prompt": LONG, "max_tokens": CAP}, None, 400, "max_tokens"),
    ("/v1/completions", {"prompt": ""}, None, 400, "prompt"),
    ("/v1/completions", {"prompt": "x" * BODY_LIMIT}, None, 413, None),
    ("/v1/chat/completions", {"messages": "hi"}, None, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, None, 400, "messages[0]"),
    ("/v1/nowhere", {"prompt": "hi"}, None, 404, None),
    ("/nowhere", None, None, 404, None),
])
def test_errors_are_openai_json(served, path, body, raw, status, param):
    base, _ = served
    got, answer = call(base, path, body, raw=raw)
    assert got == status, answer
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert "Traceback" not in err["message"]
    assert call(base, "/health")[0] == 200  # the server keeps serving


def test_context_error_names_the_fix(served):
    base, _ = served
    _, answer = call(base, "/v1/completions", {"prompt": LONG, "max_tokens": CAP})
    assert "context is 64 tokens" in answer["error"]["message"]
    assert answer["error"]["code"] == "context_length_exceeded"


def test_eight_concurrent_requests(served, reference):
    base, engine = served
    req = {"prompt": "KING:", "max_tokens": 10, "temperature": 0, "repetition_penalty": PENALTY}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: call(base, "/v1/completions", {**req, "stream": i % 2 == 1}), range(8)))
    assert all(status == 200 for status, _ in results)
    expected = reference(engine, "KING:", 10)
    for i, (_, body) in enumerate(results):
        text = ("".join(c["choices"][0]["text"] for c in sse_events(body)) if i % 2
                else body["choices"][0]["text"])
        assert text == expected
    stats = call(base, "/health")[1]["stats"]
    assert stats["running"] == stats["queued"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_on_signal(trained_run, sig):
    proc = subprocess.Popen([sys.executable, "-m", "attnlab", "serve", str(trained_run), "--port", "0", "--quiet",
                             "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "http://" in line, line
        base = line.split(" on ")[1].split()[0]
        assert call(base, "/health")[0] == 200
        proc.send_signal(sig)
        rc, err = proc.wait(timeout=10), proc.stderr.read()
        assert rc == 0, err[-2000:]
        assert "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_an_encoder(trained_archs, capsys, one_line_error):
    from attnlab.cli import main

    code = main(["serve", str(trained_archs["bert-tiny"]), "--port", "0", "--device", "cpu"])
    one_line_error(capsys, code, "decoder-only")


@pytest.mark.parametrize("flag,value", [("--max-batch", "0"), ("--max-concurrency", "0"),
                                        ("--request-timeout", "-1"), ("--gather-ms", "-5")])
def test_cli_refuses_bad_limits(trained_run, capsys, one_line_error, flag, value):
    from attnlab.cli import main

    code = main(["serve", str(trained_run), "--port", "0", "--device", "cpu", flag, value])
    one_line_error(capsys, code, flag)


def test_official_openai_client(served, reference):
    """The official ``openai`` client talks to the server: completions, chat, streaming, errors."""
    openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install openai)")
    base, engine = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    extra = {"repetition_penalty": PENALTY}
    assert [m.id for m in client.models.list().data] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="ROMEO.", max_tokens=10, temperature=0, extra_body=extra)
    assert done.choices[0].text == reference(engine, "ROMEO.", 10)
    assert done.usage.completion_tokens <= 10 and done.choices[0].finish_reason in ("stop", "length")
    chunks = client.completions.create(model="tiny", prompt="ROMEO.", max_tokens=10, temperature=0, stream=True,
                                       extra_body=extra)
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=8, temperature=0, extra_body=extra)
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    pieces = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=8, temperature=0, stream=True, extra_body=extra)
    assert "".join(c.choices[0].delta.content or "" for c in pieces) == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="ROMEO.", max_tokens=10_000)
