"""Attention forward+backward peak memory and time: chunked vs dense, sliding window, CPU.

Each configuration runs in a fresh subprocess (so peaks do not mix). Memory is the
growth of the process's peak resident set size (``ru_maxrss``) over the steps, measured
after the inputs exist and after one tiny (T=256) step has paid one-time initialisation:
tracemalloc does not see torch's allocations, RSS does. Time is the median of ``--iters``
forward+backward steps after one warm-up step.

    python benchmarks/attention_memory.py                       # T = 2k..16k, window 512
    python benchmarks/attention_memory.py --lengths 2048 4096 --dense-max 4096
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attnlab.attention import attention  # noqa: E402
from attnlab.attention.masks import Mask  # noqa: E402


def window_mask(window: int) -> Mask:
    """Causal sliding window: query p sees keys p - window + 1 .. p."""
    return Mask(lambda b, h, q, k: (q >= k) & (q - k < window), "sliding_window", key=("sliding_window", window))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(backend: str, t: int, window: int, iters: int, threads: int) -> dict:
    """One configuration, in this process: peak RSS growth (MiB) and median step time (ms)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    b, h, d = 1, 4, 64
    small = torch.randn(b, h, 256, d, requires_grad=True)  # one-time init (lazy imports, thread pools)
    attention(small, small, small, mask=window_mask(window), backend=backend).sum().backward()
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))  # (B, H, T, D)
    mask = window_mask(window)

    def step() -> None:
        out = attention(q, k, v, mask=mask, backend=backend)  # (B, H, T, D)
        out.sum().backward()
        q.grad = k.grad = v.grad = None

    for x in (q, k, v):  # allocate the gradient buffers once so the baseline includes them
        x.grad = torch.zeros_like(x)
    q.grad = k.grad = v.grad = None
    before = peak_rss_mib()
    times = []
    for i in range(iters + 1):
        start = time.perf_counter()
        step()
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return {"backend": backend, "T": t, "window": window, "peak_mib": round(peak_rss_mib() - before, 1),
            "ms": round(statistics.median(times), 1), "B": b, "H": h, "D": d, "dtype": "float32"}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in sorted({r["backend"] for r in rows}):
        rs = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["T"])
        ts = [r["T"] for r in rs]
        ax_m.plot(ts, [r["peak_mib"] for r in rs], "o-", label=backend)
        ax_t.plot(ts, [r["ms"] for r in rs], "o-", label=backend)
    for ax, label in ((ax_m, "peak RSS growth, fwd+bwd (MiB)"), (ax_t, "fwd+bwd time (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"attention, causal sliding window {rows[0]['window']}, B=1 H=4 D=64 fp32, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--backends", nargs="+", default=["chunked", "sdpa", "eager"])
    ap.add_argument("--dense-max", type=int, default=8192, help="largest T for sdpa (eager: half of it)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_memory-cpu.json"))
    ap.add_argument("--one", nargs=2, metavar=("BACKEND", "T"), help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()

    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.window, args.iters, args.threads)))
        return
    rows = []
    print(f"{'backend':>8} {'T':>6} {'peak MiB':>9} {'ms':>9}")
    for t in args.lengths:
        for backend in args.backends:
            limit = {"sdpa": args.dense_max, "eager": args.dense_max // 2}.get(backend, t)
            if t > limit:
                continue
            cmd = [sys.executable, __file__, "--one", backend, str(t), "--window", str(args.window),
                   "--iters", str(args.iters), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{backend:>8} {t:>6} {row['peak_mib']:>9.1f} {row['ms']:>9.1f}", flush=True)
    chunk = {r["T"]: r["peak_mib"] for r in rows if r["backend"] == "chunked"}
    ts = sorted(chunk)
    growth = {f"{a}->{b}": round(chunk[b] / chunk[a], 2) for a, b in zip(ts, ts[1:], strict=False) if chunk[a] > 0}
    if growth:
        print("chunked peak-memory growth per doubling of T:", growth)
    result = {
        "benchmark": "attention_memory",
        "method": "fresh subprocess per row; after inputs + a T=256 init step, "
                  "peak_mib = growth of ru_maxrss over warm-up + timed fwd+bwd steps",
        "device": f"cpu ({args.threads} threads, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "chunked_growth_per_doubling": growth,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
