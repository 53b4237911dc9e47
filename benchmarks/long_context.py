"""Long context: the gpt2-124m-32k training step with a sliding window vs full causal attention,
and RoPE scaling beyond the training length.

Part 1 times the training step (forward, float32 cross-entropy, backward, clip, AdamW) of the
``gpt2-124m-32k`` preset at batch 1 x T, once with its 1024-token sliding window and once with
full causal attention. Each variant runs in its own child process, so its peak memory (CUDA:
``max_memory_allocated``; CPU: growth of the process's peak RSS) and its compile counters are its
own. Before timing, ``prepare_masks`` runs the step's forward once without the attention math:
it records which backend ``auto`` picks and builds the Flex block mask / chunked plan the
compiled graph then reads as constants. The run fails unless the backend is the expected one
(window: Flex on CUDA, chunked on CPU; full causal: SDPA), if a compiled step breaks its graph, or if the timed
steps recompile (dynamo's recompile limit is set to fail rather than fall back).

Part 2 trains a small RoPE model at seq_len 128 on the embedded corpus (``attnlab.train``) and
evaluates its validation loss at 128, 256 and 512 tokens with ``model.rope_scaling`` none, linear
(position interpolation) and ntk, factors 2 and 4, loading the same weights each time.

    python benchmarks/long_context.py                 # CUDA: 124M at 32768 tokens, bf16, compiled
    python benchmarks/long_context.py --threads 1     # CPU: 2 layers, d 256, 4 heads, 4096 tokens, fp32

Writes ``benchmarks/results/long_context-<device>.{json,md}``, with the H100 reference of issue 7
quoted beside our numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import device_label  # noqa: E402

from attnlab.attention.backends import flex, prepare_masks  # noqa: E402
from attnlab.config import Config, load  # noqa: E402
from attnlab.errors import AttnlabError  # noqa: E402
from attnlab.models import build  # noqa: E402
from attnlab.train.distributed import enable_activation_checkpointing  # noqa: E402
from attnlab.train.loop import autocast_for  # noqa: E402
from attnlab.train.objectives import token_loss  # noqa: E402
from attnlab.train.optim import build_optimizer  # noqa: E402

PRESET = "gpt2-124m-32k"
RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = {
    "what": "issue 7 reference, NOT ours: nanoGPT GPT-2 124M, 32k tokens, batch 1, bf16, torch.compile, one H100",
    "rows": [
        {"variant": "full causal (SDPA)", "ms_per_iter": 223.0, "tokens_per_s": 147_000, "peak_gib": None},
        {"variant": "sliding window 1024 (FlexAttention)", "ms_per_iter": 76.6, "tokens_per_s": 428_000,
         "peak_gib": 21.5},
    ],
}
ROPE_SCALINGS = [("none", 1.0), ("linear", 2.0), ("linear", 4.0), ("ntk", 2.0), ("ntk", 4.0)]


# -- part 1: the training step -----------------------------------------------------------


def bench_config(args: argparse.Namespace, window: int | None) -> Config:
    """The preset, shrunk as the arguments say, with ``window`` (None: full causal)."""
    cfg = load(PRESET)
    m = cfg.model
    for name in ("n_layer", "d_model", "n_head", "vocab_size"):
        if getattr(args, name):
            setattr(m, name, getattr(args, name))
    m.block_size = max(m.block_size, args.seq_len)
    cfg.model = dataclasses.replace(m, attention=dataclasses.replace(m.attention, window=window))  # re-validated
    cfg.train.dtype = args.dtype
    return cfg


def expected_backend(window: int | None, device: torch.device) -> str:
    """What ``auto`` must pick for a training step: Flex (CUDA) / chunked (CPU) for the window, SDPA for causal."""
    if window is None:
        return "sdpa"
    return "flex" if device.type == "cuda" else "chunked"


def compile_counts() -> dict[str, int]:
    """Dynamo's running totals of compiled graphs, graph breaks and recompiles."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values()))}


def graph_break_reasons() -> dict[str, int]:
    """Dynamo's graph-break reasons (first line of each) and how often each happened."""
    from torch._dynamo.utils import counters

    out: dict[str, int] = {}
    for reason, n in counters["graph_break"].items():
        line = " ".join(str(reason).split())[:160]
        out[line] = out.get(line, 0) + int(n)
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return token_loss(model(x), y)  # scalar, float32


def measure(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """Time one variant's training step in this process (see the module docstring)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    window = args.window if variant == "window" else None
    cfg = bench_config(args, window)
    rss0 = peak_rss_mib()
    torch.manual_seed(0)
    model = build(cfg).to(device)
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    opt = build_optimizer(model, cfg.train, device.type)
    amp = autocast_for(device, cfg.train.dtype)
    T, V = args.seq_len, cfg.model.vocab_size
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(0, V, (1, T + 1), generator=gen)  # (1, T + 1) random tokens
    x, y = w[:, :-1].to(device), w[:, 1:].to(device)  # (1, T) each

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Which backend auto picks for the training step (inside torch.compile dispatches are not
    # recorded), and its per-shape caches (Flex block mask, chunked plan) built before tracing.
    with amp:
        used = prepare_masks(functools.partial(_loss, model), x, y, grad=True)
    ran = sorted({r["backend"] for r in used if r["q_shape"][-2] == T})
    want = expected_backend(window, device)
    if ran != [want]:
        raise AttnlabError(f"{variant}: attention ran on {ran}, expected only '{want}' (auto fell back?)")

    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never silently run eager after the limit
    step_loss = functools.partial(_loss, model)
    if args.compile:
        step_loss = torch.compile(step_loss)

    def step() -> float:
        with amp:
            loss = step_loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    before = compile_counts()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(args.iters):
        sync()
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - t0)
    after = compile_counts()
    if args.compile and after["graph_breaks"] and args.strict_graph:
        raise AttnlabError(f"{variant}: the compiled step has {after['graph_breaks']} graph breaks: "
                           f"{graph_break_reasons()}")
    if after["graphs"] != before["graphs"] or after["recompiles"] != before["recompiles"]:
        raise AttnlabError(f"{variant}: the timed steps recompiled ({before} -> {after})")
    if not all(math.isfinite(v) for v in losses):
        raise AttnlabError(f"{variant}: non-finite loss {losses}")
    ms = statistics.median(times) * 1e3
    out: dict[str, Any] = {
        "variant": variant, "window": window, "backend": want, "seq_len": T, "batch_size": 1,
        "params": model.num_params(), "ms_per_iter": round(ms, 2), "ms_min": round(min(times) * 1e3, 2),
        "tokens_per_s": round(T / (ms / 1e3)), "warmup_s": round(warm_s, 1), "compile": args.compile,
        "compile_counts": after, "graph_break_reasons": graph_break_reasons(), "loss_last": round(losses[-1], 4),
        "flex_stats": flex.stats(),
    }
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_what"] = "torch.cuda.max_memory_allocated over the timed steps"
    else:
        out["peak_mib"] = round(peak_rss_mib() - rss0, 1)
        out["peak_what"] = "growth of the process's peak RSS from before the model was built"
    return out


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """:func:`measure` in a fresh child process (own memory peak, own compile state)."""
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--variant", variant, "--child-out", str(dest), "--no-rope"]
        for name, value in vars(args).items():
            if name in ("variant", "child_out", "rope", "out_dir") or value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                cmd.append(flag if value else "--no-" + flag[2:])
            else:
                cmd += [flag, str(value)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AttnlabError(f"{variant} run failed: {proc.stderr.strip().splitlines()[-1:]}")
        return json.loads(dest.read_text())


# -- part 2: RoPE scaling beyond the training length ----------------------------------------


def rope_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """Train a small RoPE model at ``--rope-train-len`` and evaluate it at 1x, 2x and 4x that length."""
    from attnlab.data import prepare
    from attnlab.eval import evaluate_lm
    from attnlab.eval.context import extend_model
    from attnlab.train import train
    from attnlab.train.checkpoint import load_model

    L = args.rope_train_len
    lengths = [L, 2 * L, 4 * L]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "model.vocab_size": 0, "model.block_size": L, "model.n_layer": 4, "model.n_head": 4, "model.d_model": 128,
            "model.attention.window": "null", "data.tokenizer": "bpe:4096", "data.val_fraction": 0.05,
            "data.cache_dir": args.data_cache, "train.out_dir": f"{tmp}/run", "train.batch_size": 16,
            "train.seq_len": L, "train.max_steps": args.rope_steps, "train.warmup_steps": 30, "train.lr": 2e-3,
            "train.min_lr": 1e-4, "train.eval_every": 0, "train.eval_batches": 8, "train.ckpt_every": 0,
            "train.device": "cpu", "train.dtype": "float32", "train.compile": "false", "train.threads": args.threads,
        }
        cfg = load(PRESET, [f"{k}={v}" for k, v in overrides.items()])
        t0 = time.perf_counter()
        summary = train(cfg, progress=False, log=lambda s: None)
        train_s = time.perf_counter() - t0
        base, ckpt = load_model(summary["checkpoint"])
        data = prepare(ckpt.config.data, progress=False)
        rows = []
        for kind, factor in ROPE_SCALINGS:
            model = extend_model(base, lengths[-1], kind, factor)  # same weights: RoPE has none
            row: dict[str, Any] = {"scaling": kind, "factor": factor}
            with torch.no_grad():
                for n in lengths:
                    res = evaluate_lm(model, data, split="val", batch_size=8, seq_len=n, max_batches=args.rope_batches)
                    row[str(n)] = round(res["loss"], 4)
            rows.append(row)
    return {"train_len": L, "lengths": lengths, "steps": args.rope_steps, "train_s": round(train_s, 1),
            "params": base.num_params(), "final_train_val_loss": round(summary["val_loss"], 4),
            "model": "preset gpt2-124m-32k shrunk: 4 layers, d 128, 4 heads, full causal, bpe:4096, fp32 CPU",
            "rows": rows}


# -- report ---------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    mem = "peak GiB" if m["device_type"] == "cuda" else "peak RSS growth MiB"
    lines = [f"# Long context ({m['device']}, torch {m['torch']}, {m['date']})", "",
             f"Training step of `{PRESET}`: {m['model']}, batch 1 x {m['seq_len']}, {m['dtype']}, "
             f"compile {m['compile']}, activation checkpointing {m['activation_checkpointing']}; "
             f"median of {m['iters']} steps after {m['warmup']} warm-up. Random tokens.", "",
             f"| ours | backend | ms/iter | tokens/s | {mem} | graph breaks |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        name = f"window {r['window']}" if r["window"] else "full causal"
        peak = r.get("peak_gib", r.get("peak_mib"))
        breaks = r["compile_counts"]["graph_breaks"] if r["compile"] else "– (eager)"
        lines.append(f"| {name} | {r['backend']} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:,} | {peak} "
                     f"| {breaks} |")
    for r in res["rows"]:
        if r["compile"] and r["graph_break_reasons"]:
            lines += ["", f"Graph breaks ({r['variant']}): " + "; ".join(
                f"{n} x {why}" for why, n in r["graph_break_reasons"].items())]
    if len(res["rows"]) == 2:
        w, f = res["rows"]
        lines += ["", f"Window speed-up over full causal (ours): {f['ms_per_iter'] / w['ms_per_iter']:.2f}x."]
    ref = res["reference"]
    lines += ["", f"Reference ({ref['what']}):", "", "| reference | ms/iter | tokens/s | peak GiB |",
              "|---|---|---|---|"]
    for r in ref["rows"]:
        lines.append(f"| {r['variant']} | {r['ms_per_iter']} | {r['tokens_per_s']:,} | {r['peak_gib'] or '–'} |")
    lines += ["", f"Reference window speed-up: {223.0 / 76.6:.2f}x."]
    if m["device_type"] != "cuda":
        T, W = m["seq_len"], res["rows"][0]["window"] or m["seq_len"]
        pairs = T * (T + 1) / 2 / (W * (W + 1) / 2 + (T - W) * W) if T > W else 1.0
        lines += ["", "These CPU numbers are a shrunk model at a shorter length; they are not comparable with the "
                  "H100 reference. On CPU the window runs on the chunked backend (blockwise PyTorch, Flex has no CPU "
                  "backward) while full causal runs SDPA's fused kernel; at this length the window removes only "
                  f"{pairs:.1f}x of the causal (query, key) pairs. The CUDA run (124M, 32768 tokens, bf16, compiled) "
                  "is not measured yet."]
    rope = res.get("rope")
    if rope:
        L = rope["train_len"]
        lines += ["", f"## RoPE scaling beyond the training length ({L} tokens)", "",
                  f"{rope['model']}, {rope['params']:,} parameters, trained {rope['steps']} steps "
                  f"({rope['train_s']} s) at {L} tokens; val loss (nats/token) of the same weights:", "",
                  "| rope_scaling | " + " | ".join(str(n) for n in rope["lengths"]) + " |",
                  "|---|" + "---|" * len(rope["lengths"])]
        for r in rope["rows"]:
            name = r["scaling"] if r["scaling"] == "none" else f"{r['scaling']} x{r['factor']:g}"
            lines.append(f"| {name} | " + " | ".join(f"{r[str(n)]:.3f}" for n in rope["lengths"]) + " |")
        lines += ["", "The same weights throughout: linear scaling (position interpolation) is meant to be followed by "
                  "a short fine-tune at the longer length and, applied as-is, also moves the positions inside the "
                  "trained length; ntk rescales RoPE's base and keeps its highest frequency. Each length evaluates "
                  "its own windows of the val split, so compare rows within a column."]
    return "\n".join(lines) + "\n"


def main() -> None:
    on_cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=32768 if on_cuda else 4096)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--n-layer", type=int, default=0 if on_cuda else 2, help="0: the preset's")
    ap.add_argument("--d-model", type=int, default=0 if on_cuda else 256, help="0: the preset's")
    ap.add_argument("--n-head", type=int, default=0 if on_cuda else 4, help="0: the preset's")
    ap.add_argument("--vocab-size", type=int, default=0 if on_cuda else 4096, help="0: the preset's (50257)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 on CUDA")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=on_cuda)
    ap.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--warmup", type=int, default=3 if on_cuda else 1)
    ap.add_argument("--iters", type=int, default=10 if on_cuda else 5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--strict-graph", action=argparse.BooleanOptionalAction, default=False,
                    help="fail when the compiled step has graph breaks")
    ap.add_argument("--rope", action=argparse.BooleanOptionalAction, default=True, help="part 2 (CPU, ~1-2 min)")
    ap.add_argument("--rope-train-len", type=int, default=128)
    ap.add_argument("--rope-steps", type=int, default=300)
    ap.add_argument("--rope-batches", type=int, default=6)
    ap.add_argument("--data-cache", default=".attnlab-cache")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--variant", choices=["window", "full"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:  # child process: one variant
        Path(args.child_out).write_text(json.dumps(measure(args, args.variant)))
        return
    device = torch.device("cuda" if on_cuda else "cpu")
    rows = []
    for variant in ("window", "full"):
        rows.append(run_variant(args, variant))
        r = rows[-1]
        print(f"{variant:>6}: {r['backend']:>7} {r['ms_per_iter']:9.1f} ms/iter {r['tokens_per_s']:>9,} tokens/s "
              f"peak {r.get('peak_gib', r.get('peak_mib'))}")
    cfg = bench_config(args, args.window).model
    meta = {"device": device_label(device), "device_type": device.type, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "seq_len": args.seq_len, "compile": args.compile,
            "activation_checkpointing": args.activation_checkpointing, "iters": args.iters, "warmup": args.warmup,
            "dtype": "bf16 autocast" if (args.dtype == "auto" and on_cuda) or args.dtype == "bfloat16" else "fp32",
            "model": f"{cfg.n_layer} layers, d {cfg.d_model}, {cfg.n_head} heads, vocab {cfg.vocab_size}, RoPE, "
                     f"{rows[0]['params']:,} params"}
    res: dict[str, Any] = {"meta": meta, "rows": rows, "reference": REFERENCE}
    if args.rope:
        res["rope"] = rope_experiment(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"long_context-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    try:
        main()
    except AttnlabError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
