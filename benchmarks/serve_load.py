"""Serving load test: the new server (FastAPI on uvicorn) against today's (the stdlib server of ce57869).

Both run as ``python -m attnlab serve CKPT`` subprocesses on the same checkpoint, with the same
flags (``--max-batch 32``, one torch thread each), one after the other, alternating over
``--rounds`` rounds so that a noisy neighbour on a shared CPU hits both alike. Today's server is
extracted from git (``git archive ce57869 src``) into a temporary folder and run with
``PYTHONPATH`` pointing there; the new one runs from this checkout.

For each server ``--clients`` threads each send ``--requests`` streaming ``/v1/completions``
requests one after the other (greedy, ``max_tokens`` fixed per request: 1/8, 1/4, 1/2 or all of
``--max-tokens`` in turn, ``stream_options.include_usage`` for exact token counts), each client
over ONE persistent ``http.client`` connection: a server that closes it after a response
(HTTP/1.0, as today's) costs a reconnect, counted. Checks that every request completed with
``[DONE]``, a finish reason and at least one token, and compares each request's text between the
two servers (greedy: it should not change). Reports requests/s, generated tokens/s, latency and
time-to-first-token percentiles, errors and reconnects into ``results/serve_load-<device>.{json,md}``.

    python benchmarks/serve_load.py                    # trains a throw-away gpt-tiny first (~1 min)
    python benchmarks/serve_load.py --ckpt runs/gpt-tiny --rounds 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TODAY = "ce57869"  # the last commit with the standard-library server
PROMPTS = ["ROMEO:", "KING HENRY:\nWhat say you", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "O", "Good morrow, cousin", "JULIET:\nWherefore art thou", "To be, or not", "MENENIUS:\nEither you must"]


def train_tiny(out: Path) -> Path:
    """A throw-away gpt-tiny (4 layers, d_model 256, block 128) trained 40 steps on the embedded Shakespeare."""
    from attnlab import config
    from attnlab.train import train

    cfg = config.load("gpt-tiny", [f"train.out_dir={out}", "train.max_steps=40", "train.eval_every=0",
                                   "train.ckpt_every=0", "train.device=cpu", "train.warmup_steps=5",
                                   "data.tokenizer=bpe:1024", f"data.cache_dir={out.parent / 'cache'}"])
    train(cfg, progress=False, log=lambda s: None)
    return out


def extract_today(into: Path) -> Path:
    """``src/`` of commit ``TODAY`` under ``into`` (``git archive | tar -x``)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", TODAY, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 (nearest rank) in milliseconds."""
    xs = sorted(values) or [0.0]
    pick = lambda q: xs[min(len(xs) - 1, max(0, round(q * len(xs) + 0.5) - 1))] * 1000  # noqa: E731
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99)}


class Client(http.client.HTTPConnection):
    """One persistent connection; ``connects`` counts how often it had to (re)connect."""

    connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()


def one_request(conn: Client, body: dict) -> dict:
    """One streaming request on ``conn``; its text, token count, finish reason, latency, TTFT and HTTP version."""
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:200]!r}")
    first, texts, finish, tokens, done = None, [], None, 0, False
    while line := resp.readline():
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: "):]
        if data == b"[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"error event: {chunk['error']}")
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk["choices"]:
            if choice["text"] and first is None:
                first = time.perf_counter() - start
            texts.append(choice["text"])
            finish = choice["finish_reason"] or finish
    resp.read()  # the rest (the last chunk of a chunked body), so that the connection can be reused
    if not done:
        raise RuntimeError("the stream ended without [DONE]")
    end = time.perf_counter() - start
    return {"text": "".join(texts), "tokens": tokens, "finish": finish, "latency": end,
            "ttft": first if first is not None else end, "http": resp.version}


def start_server(name: str, pythonpath: str, ckpt: str, args) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    env.pop("ATTNLAB_API_KEY", None)
    cmd = [sys.executable, "-m", "attnlab", "serve", ckpt, "--port", str(port), "--device", "cpu",
           "--max-batch", str(args.max_batch), "--gather-ms", str(args.gather_ms),
           "--max-concurrency", str(args.clients * 2), "--max-tokens-cap", str(args.max_tokens), "--no-request-log"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                c.close()
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the {name} server did not answer /health within 180 s")


def stop_server(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def server_stats(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/health")
    return json.loads(c.getresponse().read()).get("stats", {})


def run_load(name: str, pythonpath: str, ckpt: str, args) -> dict:
    """Start the ``name`` server, run the load against it, stop it; every request's outcome plus aggregates."""
    proc, port = start_server(name, pythonpath, ckpt, args)
    try:
        body = {"temperature": 0, "repetition_penalty": 1.5, "stream": True,
                "stream_options": {"include_usage": True}}
        warm = Client("127.0.0.1", port, timeout=600)
        one_request(warm, {**body, "prompt": "warm-up", "max_tokens": 4})
        warm.close()
        results: dict[tuple[int, int], dict] = {}
        errors: list[str] = []
        connects = [0] * args.clients
        barrier = threading.Barrier(args.clients + 1)

        def client(c: int) -> None:
            conn = Client("127.0.0.1", port, timeout=600)
            barrier.wait()
            for r in range(args.requests):
                try:
                    n = max(1, args.max_tokens >> (3 - (c + 3 * r) % 4))  # max/8, max/4, max/2 or max
                    results[(c, r)] = one_request(conn, {**body, "prompt": PROMPTS[(c + r) % len(PROMPTS)],
                                                         "max_tokens": n})
                except Exception as e:  # noqa: BLE001 — counted and reported
                    errors.append(f"client {c} request {r}: {type(e).__name__}: {e}")
                    conn.close()
            connects[c] = conn.connects
            conn.close()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        stats = server_stats(port)
    finally:
        log = stop_server(proc)
    done = [v for v in results.values() if v["finish"] in ("stop", "length") and v["tokens"] >= 1]
    tokens = sum(v["tokens"] for v in results.values())
    return {
        "server": name, "sent": args.clients * args.requests, "completed": len(done), "errors": errors,
        "wall_s": wall, "requests_per_s": len(done) / wall, "tokens_per_s": tokens / wall, "tokens": tokens,
        "reconnects": sum(connects) - args.clients, "http_versions": sorted({v["http"] for v in results.values()}),
        "latency_ms": percentiles([v["latency"] for v in results.values()]),
        "ttft_ms": percentiles([v["ttft"] for v in results.values()]),
        "server_stats": stats, "tracebacks_in_log": log.count("Traceback"),
        "texts": {f"{c}/{r}": v["text"] for (c, r), v in sorted(results.items())},
    }


def markdown(rows: list[dict], summary: dict, meta: dict) -> str:
    lines = [f"# Serving load test: new server vs today's ({meta['date']})", "",
             f"{meta['clients']} concurrent streaming clients × {meta['requests']} requests each over one "
             f"persistent connection per client, greedy, max_tokens {meta['max_tokens']} // 8, // 4, // 2 or all of "
             f"it in turn, `--max-batch {meta['max_batch']}`, on {meta['device']} ({meta['model']}). "
             f"{meta['note']}", "",
             "| round | server | HTTP | sent | completed | errors | reconnects | req/s | tokens/s "
             "| latency p50 / p90 / p99 ms | TTFT p50 / p90 / p99 ms | largest batch run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat, ttft = r["latency_ms"], r["ttft_ms"]
        http_v = "/".join(f"{v // 10}.{v % 10}" for v in r["http_versions"])
        lines.append(f"| {r['round']} | {r['server']} | {http_v} | {r['sent']} | {r['completed']} "
                     f"| {len(r['errors'])} | {r['reconnects']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} "
                     f"| {lat['p50']:.0f} / {lat['p90']:.0f} / {lat['p99']:.0f} "
                     f"| {ttft['p50']:.0f} / {ttft['p90']:.0f} / {ttft['p99']:.0f} "
                     f"| {r['server_stats'].get('max_batch_seen', '?')} |")
    lines += ["", "Median over the rounds:", "",
              "| server | req/s | latency p50 ms | latency p99 ms | TTFT p50 ms | TTFT p99 ms | errors | reconnects |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['requests_per_s']:.2f} | {s['latency_p50_ms']:.0f} | {s['latency_p99_ms']:.0f} "
                     f"| {s['ttft_p50_ms']:.0f} | {s['ttft_p99_ms']:.0f} | {s['errors']} | {s['reconnects']} |")
    tc = meta["text_check"]
    own = ", ".join(f"{v} between {k.split('_')[2]}'s own runs" for k, v in tc.items() if k.endswith("_runs")
                    and "any" not in k)
    lines += ["", f"New / today's requests/s (medians): {meta['speedup']:.2f}. Greedy text: "
              f"{tc['differ_between_any_runs']} of {tc['requests']} requests differ between runs ({own}): batch "
              "composition changes the float sums, and a near-tie can flip a greedy token on either server. "
              "Latency: request sent to `[DONE]`; TTFT: request sent to the first "
              "non-empty text chunk; tokens from `stream_options.include_usage`; reconnects: new TCP connections a "
              "client had to open after its first (today's server speaks HTTP/1.0 and closes after each answer). "
              "The CPU is shared with other jobs: compare rows of one run only.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="run or checkpoint folder (default: train a throw-away gpt-tiny)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after the other")
    ap.add_argument("--max-tokens", type=int, default=64,
                    help="the longest request; requests ask for 1/8, 1/4, 1/2 or all of it in turn")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--gather-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=5, help="runs of each server, alternating (today's first)")
    ap.add_argument("--only", choices=["new", "today"], default=None, help="run one server only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="fail when the new server's median requests/s is below today's by more than this fraction")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or str(train_tiny(Path(tmp) / "run"))
        servers = {"today": str(extract_today(Path(tmp))), "new": str(ROOT / "src")}
        names = [args.only] if args.only else ["today", "new"]
        rows = []
        for rnd in range(args.rounds):
            for name in names if rnd % 2 == 0 else names[::-1]:
                row = run_load(name, servers[name], ckpt, args)
                row["round"] = rnd + 1
                rows.append(row)
                print(f"round {rnd + 1} {name}: {row['requests_per_s']:.2f} req/s, {len(row['errors'])} errors, "
                      f"{row['reconnects']} reconnects", file=sys.stderr, flush=True)
        from attnlab.cli._common import load_for_inference

        model = load_for_inference(ckpt, "cpu")[0]
        n_params, context = sum(p.numel() for p in model.parameters()), model.max_context
    texts = [r.pop("texts") for r in rows]
    keys = sorted({k for t in texts for k in t})
    differ = lambda runs: sum(len({texts[i].get(k) for i in runs}) > 1 for k in keys)  # noqa: E731
    text_check = {"requests": len(keys), "differ_between_any_runs": differ(range(len(rows))),
                  **{f"differ_between_{name}_runs": differ([i for i, r in enumerate(rows) if r["server"] == name])
                     for name in names}}
    mismatches = [{"request": k, "run": f"{r['server']} round {r['round']}", "text": t[k], "first_run": texts[0][k]}
                  for r, t in zip(rows[1:], texts[1:], strict=True) for k in t if t[k] != texts[0].get(k)]
    med = lambda name, get: statistics.median(get(r) for r in rows if r["server"] == name)  # noqa: E731
    summary = {name: {"requests_per_s": med(name, lambda r: r["requests_per_s"]),
                      "latency_p50_ms": med(name, lambda r: r["latency_ms"]["p50"]),
                      "latency_p99_ms": med(name, lambda r: r["latency_ms"]["p99"]),
                      "ttft_p50_ms": med(name, lambda r: r["ttft_ms"]["p50"]),
                      "ttft_p99_ms": med(name, lambda r: r["ttft_ms"]["p99"]),
                      "errors": sum(len(r["errors"]) for r in rows if r["server"] == name),
                      "reconnects": sum(r["reconnects"] for r in rows if r["server"] == name)} for name in names}
    speedup = (summary["new"]["requests_per_s"] / summary["today"]["requests_per_s"]
               if {"new", "today"} <= set(summary) else float("nan"))
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
                      f"{args.threads} torch thread per server)",
            "model": f"{args.ckpt or 'throw-away gpt-tiny (40 training steps)'}, {n_params / 1e6:.2f} M params, "
                     f"context {context}",
            "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
            "max_batch": args.max_batch, "gather_ms": args.gather_ms, "rounds": args.rounds, "today": TODAY,
            "text_check": text_check, "speedup": speedup,
            "note": "Each server is a `python -m attnlab serve` subprocess; the clients are threads of the benchmark "
                    f"process using http.client. Today's server: the stdlib one of commit {TODAY}."}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load-cpu.json").write_text(json.dumps({"meta": meta, "summary": summary, "results": rows,
                                                          "text_mismatches": mismatches[:20]}, indent=2) + "\n")
    md = markdown(rows, summary, meta)
    (out / "serve_load-cpu.md").write_text(md)
    print(md)
    ok = all(r["completed"] == r["sent"] and not r["errors"] and not r["tracebacks_in_log"] for r in rows)
    for r in rows:
        for e in r["errors"][:5]:
            print(f"{r['server']} round {r['round']}: {e}", file=sys.stderr)
    if "new" in summary and summary["new"]["reconnects"]:
        ok = False
        print("FAILED: the new server closed keep-alive connections", file=sys.stderr)
    if speedup == speedup and speedup < 1 - args.tolerance:
        ok = False
        print(f"FAILED: the new server is slower ({speedup:.2f} x today's requests/s)", file=sys.stderr)
    print("OK: no error, no lost request, keep-alive reused, not slower" if ok else "FAILED (see above)",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
