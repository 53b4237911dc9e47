"""Training throughput: tokens/s (and MFU on CUDA) of attnlab's training step.

Measures the exact step `attnlab train` runs (forward, cross-entropy, backward,
clip, fused AdamW on CUDA) on random tokens, after warm-up, and records the result
in ``benchmarks/results/train_throughput-<device>.json``.

    python benchmarks/train_throughput.py                     # gpt-tiny on CPU (or gpt2-124m on CUDA)
    python benchmarks/train_throughput.py --preset gpt2-124m --batch-size 16 --seq-len 1024 --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import device_label  # noqa: E402

from attnlab.config import load  # noqa: E402
from attnlab.models import build  # noqa: E402
from attnlab.precision import resolve_precision  # noqa: E402
from attnlab.train.metrics import flops_per_token, peak_flops  # noqa: E402
from attnlab.train.optim import build_optimizer  # noqa: E402


def main() -> None:
    on_cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-124m" if on_cuda else "gpt-tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024 if on_cuda else 0)
    ap.add_argument("--vocab-size", type=int, default=0,
                    help="override (gpt-tiny takes its tokenizer's size: 4096 here)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=on_cuda)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file to write (default benchmarks/results/...)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if on_cuda else "cpu")
    cfg = load(args.preset)
    if args.vocab_size or cfg.model.vocab_size == 0:
        cfg.model.vocab_size = args.vocab_size or 4096
    seq_len = args.seq_len or cfg.train.seq_len or cfg.model.block_size
    cfg.train.compile = args.compile
    torch.manual_seed(0)
    model = build(cfg).to(device)
    opt = build_optimizer(model, cfg.train, device.type)
    step_model = torch.compile(model) if args.compile else model
    precision = resolve_precision(cfg.train.dtype, device)  # the preset's dtype (auto: bf16 where native)
    amp = precision.autocast(device)
    V = cfg.model.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = [torch.randint(0, V, (args.batch_size, seq_len + 1), generator=gen).to(device) for _ in range(4)]

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        x, y = b[:, :-1], b[:, 1:]
        with amp:
            logits = step_model(x)
        loss = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for i in range(args.iters):
        t = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1000
    tokens = args.batch_size * seq_len
    tok_s = tokens / (ms / 1000)
    n_params = model.num_params()
    peak = peak_flops(device)
    mfu = flops_per_token(cfg.model, seq_len, n_params) * tok_s / peak if peak else None
    dev_name = device_label("cuda" if on_cuda else "cpu")
    result = {
        "benchmark": "train_throughput",
        "preset": args.preset,
        "device": dev_name,
        "torch": torch.__version__,
        "params": n_params,
        "batch_size": args.batch_size,
        "seq_len": seq_len,
        "vocab_size": V,
        "dtype": precision.reason,
        "compile": args.compile,
        "ms_per_iter_median": round(ms, 2),
        "ms_per_iter_min": round(min(times) * 1000, 2),
        "ms_per_iter_max": round(max(times) * 1000, 2),
        "tokens_per_s": round(tok_s),
        "mfu": round(mfu, 4) if mfu else None,
        "warmup_s": round(warmup_s, 1),
        "iters": args.iters,
        "ms_per_iter_all": [round(t * 1000, 2) for t in times],
    }
    print(f"{'preset':<12}{'device':<28}{'params':>12}{'B x T':>12}{'ms/iter':>10}{'tokens/s':>12}{'MFU':>8}")
    print(f"{args.preset:<12}{dev_name[:27]:<28}{n_params:>12,}{f'{args.batch_size}x{seq_len}':>12}{ms:>10.1f}"
          f"{tok_s:>12,.0f}{(f'{mfu:.1%}' if mfu else '-'):>8}")
    tag = f"{'cuda' if on_cuda else 'cpu'}-{args.preset}{'-compiled' if args.compile else ''}"
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"train_throughput-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    png = out.with_suffix(".png")
    plot(times, result, png)
    print(f"wrote {out} and {png.name}")


def plot(times: list[float], result: dict, path: Path) -> None:
    """Per-iteration step time after warm-up, with the median marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(times) + 1), [t * 1000 for t in times], "o-", ms=3)
    ax.axhline(result["ms_per_iter_median"], color="gray", ls="--", label=f"median {result['ms_per_iter_median']} ms")
    ax.set_xlabel("iteration (after warm-up)")
    ax.set_ylabel("ms / iteration")
    ax.set_title(f"{result['preset']} on {result['device'][:30]}: {result['tokens_per_s']:,} tokens/s")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
