"""CUDA-only paths: bf16 + compiled training on Flex, CUDA-graph decoding, Flex backward, MFU.

Skipped without a CUDA device (CI is CPU-only); run them on a GPU machine with
``bash benchmarks/gpu_suite.sh tests``.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.utils import counters

from attnlab import config
from attnlab.attention import attention, masks
from attnlab.generate import FastDecoder, generate
from attnlab.models import build
from attnlab.train.loop import train

pytestmark = [pytest.mark.cuda, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "val_loss" not in r]


def test_compiled_bf16_window_training_runs_flex_once_compiled(tmp_path, tiny_cfg, fresh_dynamo):
    window = {"model.attention.window": 16, "model.block_size": 256, "train.seq_len": 256, "train.max_steps": 6,
              "train.eval_every": 3, "train.device": "cuda", "train.dtype": "bfloat16"}
    train(tiny_cfg(tmp_path / "eager", **window), progress=False, log=lambda s: None)
    lines: list[str] = []
    counters.clear()
    train(tiny_cfg(tmp_path / "compiled", **window, **{"train.compile": "true"}), progress=False, log=lines.append)
    assert "compiled attention: flex (sliding_window)" in lines  # auto: structured mask on CUDA
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # training step and validation, once each
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=2e-2)  # bf16
    rows = [json.loads(line) for line in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("mfu", 0) > 0 for r in rows)  # a known GPU peak gives an MFU figure


def test_flex_backward_matches_eager_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 512, 64, device="cuda", generator=gen, requires_grad=True) for _ in range(3))
    mask = masks.sliding_window(64)
    grads = []
    for backend in ("flex", "eager"):
        out = attention(q, k, v, mask=mask, backend=backend)
        grads.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for got, want in zip(*grads, strict=False):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


def test_cuda_graph_decoding_equals_eager_greedy():
    torch.manual_seed(0)
    cfg = config.load("gpt-tiny", ["model.vocab_size=512", "model.n_layer=2"])
    model = build(cfg).cuda().eval()
    ids = torch.randint(0, 512, (2, 12), device="cuda")
    dec = FastDecoder(model, batch_size=2, max_len=48)
    assert dec.path.startswith("static-cache+compile(reduce-overhead)")
    for _ in range(2):  # the second call replays the captured graphs
        assert torch.equal(dec.generate(ids, 32, temperature=0.0), generate(model, ids, 32, temperature=0.0))
    assert dec.compiles == 1
