"""Serving load test: N concurrent streaming clients against `attnlab serve`, --max-batch 1 vs 8 vs 32.

Starts the server in this process (the same Engine / HTTP server `attnlab serve` runs) on
a checkpoint, and for each setting (max batch; joining running batches or not) fires ``--clients`` threads that each
send ``--requests`` streaming ``/v1/completions`` requests one after the other (greedy,
``max_tokens`` fixed, ``stream_options.include_usage`` for exact token counts). Checks that
every request sent completed with ``[DONE]``, a finish reason and at least one token (no
error, none lost) and that each request's text is the same under every setting (batching
must not change greedy output). Reports requests/s, generated tokens/s, latency and
time-to-first-token percentiles, and writes ``results/serve_load-<device>.{json,md}``.

    python benchmarks/serve_load.py                    # trains a throw-away gpt-tiny first (~1 min)
    python benchmarks/serve_load.py --ckpt runs/gpt-tiny --clients 32 --requests 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attnlab import config  # noqa: E402
from attnlab.cli._common import load_for_inference  # noqa: E402
from attnlab.serve import BatchConfig, Engine, ServeConfig, make_server, start_in_thread  # noqa: E402
from attnlab.serve.client import stream_events  # noqa: E402

PROMPTS = ["ROMEO:", "KING HENRY:\nWhat say you", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "O", "Good morrow, cousin", "JULIET:\nWherefore art thou", "To be, or not", "MENENIUS:\nEither you must"]


def train_tiny(out: Path) -> Path:
    """A throw-away gpt-tiny (4 layers, d_model 256, block 128) trained 40 steps on the embedded Shakespeare."""
    from attnlab.train import train

    cfg = config.load("gpt-tiny", [f"train.out_dir={out}", "train.max_steps=40", "train.eval_every=0",
                                   "train.ckpt_every=0", "train.device=cpu", "train.warmup_steps=5",
                                   "data.tokenizer=bpe:1024", f"data.cache_dir={out.parent / 'cache'}"])
    train(cfg, progress=False, log=lambda s: None)
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 (nearest rank) in milliseconds."""
    xs = sorted(values)
    pick = lambda q: xs[min(len(xs) - 1, max(0, round(q * len(xs) + 0.5) - 1))] * 1000  # noqa: E731
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99)}


def one_request(base: str, body: dict) -> dict:
    """Send one streaming request; its text, token count, finish reason, latency and time to first token."""
    start = time.perf_counter()
    first, texts, finish, tokens = None, [], None, 0
    for chunk in stream_events(base, "/v1/completions", body, timeout=600):
        if "error" in chunk:
            raise RuntimeError(f"error event: {chunk['error']}")
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk["choices"]:
            if choice["text"] and first is None:
                first = time.perf_counter() - start
            texts.append(choice["text"])
            finish = choice["finish_reason"] or finish
    return {"text": "".join(texts), "tokens": tokens, "finish": finish, "latency": time.perf_counter() - start,
            "ttft": first if first is not None else time.perf_counter() - start}


def run_setting(model, tok, device, setting: str, args) -> dict:
    """Serve with ``setting`` (``B`` or ``B:nojoin``) and run the load; every request's outcome plus aggregates."""
    max_batch, _, mode = setting.partition(":")
    max_batch, join = int(max_batch), mode != "nojoin"
    limits = BatchConfig(max_batch=max_batch, gather_ms=args.gather_ms, max_concurrency=args.clients * 2, join=join)
    engine = Engine(model, tok, device, "bench", max_tokens_cap=args.max_tokens, batch=limits)
    server = make_server(engine, ServeConfig(port=0, log_requests=False))
    thread = start_in_thread(server)
    base = "http://{}:{}".format(*server.server_address[:2])
    body = {"temperature": 0, "repetition_penalty": 1.5, "stream": True,
            "stream_options": {"include_usage": True}}
    one_request(base, {**body, "prompt": "warm-up", "max_tokens": 4})
    results: dict[tuple[int, int], dict] = {}
    errors: list[str] = []
    barrier = threading.Barrier(args.clients + 1)

    def client(c: int) -> None:
        barrier.wait()
        for r in range(args.requests):
            try:
                n = args.max_tokens >> (3 - (c + 3 * r) % 4)  # max/8, max/4, max/2 or max
                results[(c, r)] = one_request(base, {**body, "prompt": PROMPTS[(c + r) % len(PROMPTS)],
                                                     "max_tokens": n})
            except Exception as e:  # noqa: BLE001 — counted and reported
                errors.append(f"client {c} request {r}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stats = engine.stats()
    server.shutdown()
    server.drain(10)
    server.server_close()
    thread.join(5)
    done = [v for v in results.values() if v["finish"] in ("stop", "length") and v["tokens"] >= 1]
    sent = args.clients * args.requests
    tokens = sum(v["tokens"] for v in results.values())
    return {
        "max_batch": max_batch, "join": join, "sent": sent, "completed": len(done), "errors": errors, "wall_s": wall,
        "requests_per_s": len(done) / wall, "tokens_per_s": tokens / wall, "tokens": tokens,
        "latency_ms": percentiles([v["latency"] for v in results.values()]),
        "ttft_ms": percentiles([v["ttft"] for v in results.values()]),
        "server_stats": stats, "texts": {f"{c}/{r}": v["text"] for (c, r), v in sorted(results.items())},
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Serving load test ({meta['date']})", "",
             f"{meta['clients']} concurrent streaming clients × {meta['requests']} requests each, greedy, "
             f"max_tokens {meta['max_tokens']} // 8, // 4, // 2 or all of it in turn, "
             f"on {meta['device']} ({meta['model']}). {meta['note']}", "",
             "| max batch | join | sent | completed | errors | req/s | tokens/s | latency p50 / p90 / p99 ms "
             "| TTFT p50 / p90 / p99 ms | largest batch run | batches | joined |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat, ttft = r["latency_ms"], r["ttft_ms"]
        join = "–" if r["max_batch"] == 1 else ("yes" if r["join"] else "no")
        lines.append(f"| {r['max_batch']} | {join} | {r['sent']} | {r['completed']} | {len(r['errors'])} "
                     f"| {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} "
                     f"| {lat['p50']:.0f} / {lat['p90']:.0f} / {lat['p99']:.0f} "
                     f"| {ttft['p50']:.0f} / {ttft['p90']:.0f} / {ttft['p99']:.0f} "
                     f"| {r['server_stats']['max_batch_seen']} | {r['server_stats']['batches']} "
                     f"| {r['server_stats']['joined']} |")
    lines += ["", f"Same text for every request under every setting: {meta['same_text']}. Latency: request sent "
              "to `[DONE]`; TTFT: request sent to the first non-empty text chunk; tokens counted from "
              "`stream_options.include_usage`. The CPU is shared with other jobs: compare rows of one run only.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="run or checkpoint folder (default: train a throw-away gpt-tiny)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after the other")
    ap.add_argument("--max-tokens", type=int, default=64,
                    help="the longest request; requests ask for 1/8, 1/4, 1/2 or all of it in turn")
    ap.add_argument("--settings", default="1,8:nojoin,8,32",
                    help="comma-separated server settings to compare: MAX_BATCH, or MAX_BATCH:nojoin for no joining "
                         "of running batches")
    ap.add_argument("--gather-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or str(train_tiny(Path(tmp) / "run"))
        model, tok, ckpt_info, device = load_for_inference(ckpt, "auto")
        n_params = sum(p.numel() for p in model.parameters())
        rows = [run_setting(model, tok, device, setting, args) for setting in args.settings.split(",")]
    texts = [r.pop("texts") for r in rows]
    same = all(t == texts[0] for t in texts[1:])
    dev = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU ({platform.machine()}, {os.cpu_count()} cores shared with other jobs, {args.threads} torch thread)"
    meta = {"date": time.strftime("%Y-%m-%d"), "device": dev, "torch": torch.__version__,
            "model": f"{args.ckpt or 'throw-away gpt-tiny (40 training steps)'}, {n_params / 1e6:.2f} M params, "
                     f"context {model.max_context}",
            "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
            "gather_ms": args.gather_ms, "same_text": same,
            "note": "Server and clients run in one process (clients are threads using urllib)."}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"serve_load-{device.type}"
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    md = markdown(rows, meta)
    (out / f"{name}.md").write_text(md)
    print(md)
    ok = same and all(r["completed"] == r["sent"] and not r["errors"] for r in rows)
    for r in rows:
        for e in r["errors"][:5]:
            print(f"max_batch {r['max_batch']} join {r['join']}: {e}", file=sys.stderr)
    print("OK: no error, no lost request" if ok else "FAILED: errors, lost requests or differing text",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
