"""``attnlab serve``: a chat run served with a key from the environment, stopped by SIGTERM; bad flags and models
refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from attnlab.serve.client import request as call

ANN = [{"role": "user", "content": "My name is Ann."}]


def test_cli_serves_a_chat_run_with_a_key_and_stops_on_sigterm(tmp_path):
    from tests.generate._chat import save_run

    run = save_run(tmp_path / "run")
    env = {**os.environ, "ATTNLAB_API_KEY": "k1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "attnlab", "serve", str(run), "--port", "0", "--device", "cpu",
                             "--no-request-log"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner, weights, template, explorer = (proc.stderr.readline() for _ in range(4))
        assert "http://" in banner and "API key required" in banner, banner
        assert "weights" in weights and "ChatML" in template, (weights, template)
        base = banner.split(" on ")[1].split()[0]
        assert explorer.strip().endswith(f"{base}/explorer"), explorer
        status, body = call(base, "/explorer/api/attention", {"text": "My name is Ann."}, api_key="k1")
        assert status == 200 and body["tokens"] and body["n_layer"] == 2, body
        status, body = call(base, "/v1/chat/completions", {"messages": ANN, "temperature": 0})
        assert status == 401, body
        req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps({"messages": ANN, "temperature": 0})
                                     .encode(), headers={"Content-Type": "application/json",
                                                         "Authorization": "Bearer k1"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["choices"][0]["message"]["content"] == "Nice to meet you, Ann."
        proc.send_signal(signal.SIGTERM)
        rc, err = proc.wait(timeout=20), proc.stderr.read()
        assert rc == 0 and "stopped" in err and "Traceback" not in err, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_an_encoder(trained_archs, capsys, one_line_error):
    from attnlab.cli import main

    code = main(["serve", str(trained_archs["bert-tiny"]), "--port", "0", "--device", "cpu"])
    one_line_error(capsys, code, "decoder-only")


@pytest.mark.parametrize("flag,value", [("--max-batch", "0"), ("--max-concurrency", "0"), ("--request-timeout", "-1"),
                                        ("--gather-ms", "-5"), ("--read-timeout", "0"), ("--keepalive-timeout", "nan"),
                                        ("--max-connections", "0"), ("--cors-origin", "example.org"),
                                        ("--api-key", " "), ("--port", "70000")])
def test_cli_refuses_bad_flags_in_one_line(trained_run, capsys, one_line_error, flag, value):
    from attnlab.cli import main

    code = main(["serve", str(trained_run), "--port", "0", "--device", "cpu", flag, value])
    one_line_error(capsys, code, flag)


def test_the_explorer_twin_shares_weights_but_not_capture_hooks():
    from attnlab.cli.serve import _explorer
    from attnlab.viz.capture import attention_layers, capture_attention
    from tests.generate._chat import chat_model, chat_tokenizer

    model = chat_model()
    explorer = _explorer(model, chat_tokenizer(), "tiny")
    twin = explorer.model
    assert twin is not model
    assert all(a is b for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    with capture_attention(twin):
        assert all(m.capture is None for m in attention_layers(model))  # the served model is untouched
        assert all(m.capture is not None for m in attention_layers(twin))
