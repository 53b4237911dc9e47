"""bf16 and int8 weight-only inference weights (attnlab.generate.quantize) and the --dtype/--quantize flags."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnlab import config
from attnlab.cli import main
from attnlab.errors import AttnlabError
from attnlab.generate import generate
from attnlab.generate.quantize import Int8Linear, prepare_weights, quantize_rows
from attnlab.models import build
from attnlab.serve.client import request as call

CPU = torch.device("cpu")


def _model(**extra) -> nn.Module:
    overrides = {"model.vocab_size": 96, "model.block_size": 32, "model.n_layer": 2, "model.n_head": 2,
                 "model.d_model": 64, **extra}
    torch.manual_seed(0)
    return build(config.load("gpt-tiny", [f"{k}={v}" for k, v in overrides.items()])).eval()


def test_quantize_rows_round_trips_within_half_a_step():
    w = torch.randn(40, 64)
    q, scales = quantize_rows(w)
    assert q.dtype == torch.int8 and scales.shape == (40,)
    assert q.abs().max() <= 127
    err = (q.float() * scales[:, None] - w).abs()  # (40, 64)
    assert (err <= scales[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("rows", [1, 5, 8])
def test_int8_linear_matches_fp32_within_stated_tolerance(rows):
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    x = torch.randn(2, rows, 128)
    ref = lin(x)  # (2, rows, 48)
    q = Int8Linear.from_linear(lin).to(torch.bfloat16)
    y = q(x)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    # int8 weights (half a step per weight) and bf16 activations/outputs: 2% of the output's scale
    rel = (y.float() - ref).abs().max() / ref.abs().max()
    assert rel < 0.02, rel
    # against the dequantized weight in fp32, only bf16 rounding remains
    deq = x @ (q.weight_int8.float() * q.scales.float()[:, None]).T + q.bias.float()
    assert ((y.float() - deq).abs().max() / deq.abs().max()) < 0.01


def test_int8_linear_refuses_a_width_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="multiple of 16"):
        Int8Linear(torch.zeros(4, 24, dtype=torch.int8), torch.ones(4))


def test_int8_model_keeps_the_tied_embedding_and_generates_the_same_cached_and_uncached():
    model = _model()
    ref = copy.deepcopy(model)
    report = prepare_weights(model, CPU, "bfloat16", "int8")
    assert report.int8_linears == 2 * 6 + 1 and report.tied_head and not report.kept_linears
    assert isinstance(model.lm_head, Int8Linear) and model.tok_emb.weight.dtype == torch.bfloat16
    assert "int8 weight-only" in report.line() and "torch._weight_int8pack_mm" in report.line()
    x = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        a, b = ref(x), model(x).float()  # (2, 12, 96)
    assert (a - b).abs().max() / a.abs().max() < 0.05
    cached = generate(model, x[:1, :4], 10, temperature=0.0)
    uncached = generate(model, x[:1, :4], 10, temperature=0.0, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_int8_keeps_linears_of_a_width_the_kernel_cannot_take_and_says_so():
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8))
    report = prepare_weights(model, CPU, "auto", "int8")
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], nn.Linear)
    assert report.kept_linears == ("2",) and "1 kept in bf16" in report.line()
    assert model(torch.randn(3, 32)).dtype == torch.bfloat16


def test_bf16_casts_every_weight_and_float32_leaves_them():
    model = _model()
    report = prepare_weights(model, CPU, "bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert report.line().startswith("weights: bfloat16")
    model = _model()
    assert prepare_weights(model, CPU, "float32").line().startswith("weights: float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize(("dtype", "quantize", "device", "needle"), [
    ("float32", "int8", CPU, "computes in bfloat16"),
    ("auto", "int8", torch.device("meta"), "runs on the CPU"),
    ("auto", "int4", CPU, "unknown --quantize"),
    ("half", "none", CPU, "unknown dtype"),
])
def test_unsupported_combinations_are_refused_with_one_line(dtype, quantize, device, needle):
    with pytest.raises(AttnlabError, match=needle) as e:
        prepare_weights(nn.Linear(16, 16), device, dtype, quantize)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("flags", "needle"), [
    (["--dtype", "bfloat16"], "weights: bfloat16"),
    (["--quantize", "int8"], "weights: int8 weight-only"),
    (["--dtype", "float32"], "weights: float32"),
])
def test_cli_generate_runs_with_the_weight_flags_and_says_which_ran(capsys, trained_run, flags, needle):
    args = ["generate", str(trained_run), "--prompt", "ROMEO", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(args + flags) == 0
    out = capsys.readouterr()
    assert out.out.startswith("ROMEO")
    lines = [line for line in out.err.splitlines() if line.startswith("weights:")]
    assert len(lines) == 1 and needle in lines[0], out.err


def test_cli_generate_int8_with_compile_matches_int8_plain(capsys, trained_run, monkeypatch):
    real_compile = torch.compile  # dynamo traces the int8 step (fullgraph), no kernel generation: fast
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, fullgraph=True, dynamic=False,
                                                                        backend="eager"))
    args = ["generate", str(trained_run), "--prompt", "ROMEO", "--max-new-tokens", "8", "--temperature", "0",
            "--quantize", "int8"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--compile"]) == 0
    assert capsys.readouterr().out == plain


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_cli_refuses_int8_on_float32_with_one_line(capsys, trained_run, one_line_error, command):
    code = main([command, str(trained_run), "--dtype", "float32", "--quantize", "int8"])
    one_line_error(capsys, code, "--quantize int8 computes in bfloat16")


def test_cli_serve_int8_says_so_and_answers(trained_run):
    proc = subprocess.Popen([sys.executable, "-m", "attnlab", "serve", str(trained_run), "--port", "0",
                             "--no-request-log", "--device", "cpu", "--quantize", "int8"],
                            stderr=subprocess.PIPE, text=True)
    try:
        banner, weights = proc.stderr.readline(), proc.stderr.readline()
        assert "http://" in banner, banner
        assert weights.startswith("attnlab serve: weights: int8 weight-only"), weights
        base = banner.split(" on ")[1].split()[0]
        status, body = call(base, "/v1/completions", {"prompt": "KING:", "max_tokens": 4, "temperature": 0})
        assert status == 200 and body["choices"][0]["text"] is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
