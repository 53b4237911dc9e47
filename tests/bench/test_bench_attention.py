"""The attention benchmark on tiny sizes: every backend gets a row, numbers are sane, schema is stable."""

import json

import pytest
import torch

from attnlab.attention import masks
from attnlab.attention.backends import BACKENDS, eager
from attnlab.bench import BenchSettings, allowed_pairs, attention_flops, available_backends, format_table, run_benchmark
from attnlab.bench import attention as bench

# Compiled backends (flex) take seconds per shape; they are listed, but not timed here.
FAST = [b for b in available_backends() if b != "flex"]
ROW_KEYS = {"backend", "mask", "seq_len", "head_dim", "heads", "batch", "dtype", "mode", "status", "dispatched",
            "ms", "times_ms", "tflops", "flops", "allowed_pairs", "peak_mem_bytes"}
TOP_KEYS = {"schema_version", "benchmark", "created", "torch", "device", "settings", "timing", "flops",
            "memory_method", "available_backends", "rows"}


def tiny(**kw) -> BenchSettings:
    base = dict(seq_lens=[32, 64], head_dims=[16], heads=2, batch=1, masks=["causal", "sliding_window:16", "none"],
                backends=FAST, modes=["fwd", "fwd+bwd"], repeats=1, warmup=0, device="cpu")
    base.update(kw)
    return BenchSettings(**base)


@pytest.mark.parametrize("t, w", [(64, 16), (50, 7), (10, 32)])
def test_allowed_pairs_counts(t, w):
    causal = t * (t + 1) // 2
    window = sum(min(q + 1, w) for q in range(t))  # each query sees itself and up to w-1 before
    assert allowed_pairs(None, t) == t * t
    assert allowed_pairs(masks.causal(), t, chunk=7) == causal
    assert allowed_pairs(bench.parse_mask(f"sliding_window:{w}"), t, chunk=7) == window


def test_flops_count_only_allowed_pairs():
    assert attention_flops(64 * 64, 2, 3, 16, "fwd") == 4 * 2 * 3 * 64 * 64 * 16
    assert attention_flops(100, 1, 1, 8, "fwd+bwd") == 3.5 * 4 * 100 * 8


def test_sliding_window_fallback_matches_the_library(monkeypatch):
    ref = torch.tensor([[0 <= q - k < 5 for k in range(12)] for q in range(12)])
    assert torch.equal(bench.sliding_window_mask(5).dense(1, 1, 12, 12, "cpu")[0, 0], ref)
    monkeypatch.delattr(masks, "sliding_window", raising=False)
    assert torch.equal(bench.sliding_window_mask(5).dense(1, 1, 12, 12, "cpu")[0, 0], ref)


def test_tiny_run_has_a_row_per_backend_and_sane_numbers():
    res = run_benchmark(tiny())
    assert set(res) == TOP_KEYS and res["schema_version"] == 1
    rows = res["rows"]
    assert len(rows) == len(FAST) * 3 * 2 * 2
    assert all(set(r) == ROW_KEYS for r in rows)
    json.loads(json.dumps(res))  # plain JSON, no tensors
    by = {(r["backend"], r["mask"], r["seq_len"], r["mode"]): r for r in rows}
    for backend in ("eager", "sdpa", "auto", "sdpa-math"):
        for mode in ("fwd", "fwd+bwd"):
            r = by[(backend, "causal", 64, mode)]
            assert r["status"] == "ok", r
            assert r["ms"] > 0 and len(r["times_ms"]) == 1
            assert r["tflops"] == pytest.approx(r["flops"] / (r["ms"] * 1e-3) / 1e12)
            assert r["allowed_pairs"] == 64 * 65 // 2
    assert by[("auto", "none", 32, "fwd")]["dispatched"] == "sdpa"
    assert by[("eager", "causal", 32, "fwd")]["dispatched"] == "eager"
    # sliding_window:16 at T=64 allows fewer pairs than causal, none allows all
    assert by[("sdpa", "sliding_window:16", 64, "fwd")]["flops"] < by[("sdpa", "causal", 64, "fwd")]["flops"] \
        < by[("sdpa", "none", 64, "fwd")]["flops"]
    # the efficient-attention kernel has no CPU implementation: reported, not skipped
    r = by[("sdpa-efficient", "causal", 32, "fwd")]
    assert r["status"].startswith("unsupported: ") and r["ms"] is None
    assert "unsupported" in format_table(rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_impossible_kernel_on_cuda_is_reported():
    res = run_benchmark(tiny(device="cuda", dtype="float32", backends=["sdpa-flash"], masks=["causal"], modes=["fwd"]))
    assert all(r["status"].startswith("unsupported: ") for r in res["rows"])  # flash needs fp16/bf16


def test_new_registered_backends_are_picked_up(monkeypatch):
    monkeypatch.setitem(BACKENDS, "eager_copy", eager)
    assert "eager_copy" in available_backends()
    res = run_benchmark(tiny(backends=["eager_copy"], seq_lens=[16], masks=["causal"], modes=["fwd"]))
    assert res["rows"][0]["status"] == "ok" and res["rows"][0]["dispatched"] == "eager_copy"


@pytest.mark.parametrize("kw, message", [
    ({"backends": ["nope"]}, "unknown backend 'nope'; available: eager, sdpa"),
    ({"masks": ["window"]}, "unknown mask 'window'"),
    ({"masks": ["sliding_window:0"]}, "unknown mask"),
    ({"modes": ["bwd"]}, "unknown mode 'bwd'"),
    ({"seq_lens": [0]}, "seq_lens must be positive"),
])
def test_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(tiny(**kw))
