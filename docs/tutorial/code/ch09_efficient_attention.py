"""Chapter 9: efficient attention — sliding window, local+global, block-sparse, linear attention; \
time and memory vs length.

Run: .venv/bin/python docs/tutorial/code/ch09_efficient_attention.py [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from attnlab.attention import attention, block_sparse, causal, linear_attention, local_global, sliding_window
from attnlab.bench.attention import allowed_pairs, peak_memory, time_call

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "figures"
SEQ_LENS = (256, 512, 1024, 2048, 4096)
EAGER_MAX = 2048  # the eager backend's T×T weights: 4 heads × 4096² floats would be 256 MiB per copy
HEADS, HEAD_DIM = 4, 64
WINDOW, GLOBAL, BLOCK = 128, 16, 64
DEVICE = torch.device("cpu")


def block_layout(t: int) -> torch.Tensor:
    """A causal block-sparse layout: each 64-token query block sees itself, the previous block and block 0."""
    n = t // BLOCK
    qb, kb = torch.arange(n).view(-1, 1), torch.arange(n).view(1, -1)
    return (kb <= qb) & ((qb - kb <= 1) | (kb == 0))  # (nQB, nKB)


def variants(t: int) -> dict:
    """Name → (function of q, k, v, the mask it applies or None)."""
    window = sliding_window(WINDOW)
    lg = local_global(WINDOW, GLOBAL, causal=True)
    bs = block_sparse(block_layout(t), BLOCK)
    return {
        "causal, eager (weights materialised)": (
            lambda q, k, v: attention(q, k, v, mask=causal(), backend="eager"), causal()),
        "causal, sdpa": (lambda q, k, v: attention(q, k, v, mask=causal(), backend="sdpa"), causal()),
        f"sliding window {WINDOW}, sdpa (dense mask)": (
            lambda q, k, v: attention(q, k, v, mask=window, backend="sdpa"), window),
        f"sliding window {WINDOW}, chunked": (
            lambda q, k, v: attention(q, k, v, mask=window, backend="chunked"), window),
        f"local {WINDOW} + {GLOBAL} global, chunked": (
            lambda q, k, v: attention(q, k, v, mask=lg, backend="chunked"), lg),
        f"block-sparse {BLOCK}, chunked": (lambda q, k, v: attention(q, k, v, mask=bs, backend="chunked"), bs),
        "linear attention (elu+1), causal": (lambda q, k, v: linear_attention(q, k, v, causal=True), None),
    }


def draw_masks(path: Path) -> None:
    t = 256
    shown = {"causal": causal(), f"sliding window {WINDOW // 4}": sliding_window(WINDOW // 4),
             f"local {WINDOW // 4} + {GLOBAL // 2} global (causal)":
                 local_global(WINDOW // 4, GLOBAL // 2, causal=True),
             f"block-sparse ({BLOCK // 2}-token blocks)":
                 block_sparse(block_layout(t * 2)[: t // 32, : t // 32], BLOCK // 2)}
    q, k = torch.arange(t).view(1, 1, t, 1), torch.arange(t).view(1, 1, 1, t)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    for ax, (name, m) in zip(axes, shown.items(), strict=False):
        grid = m(zero, zero, q, k).expand(1, 1, t, t)[0, 0]  # (T, T) bool
        ax.imshow(grid, cmap="Greys", interpolation="nearest")
        ax.set_title(f"{name}\n{grid.float().mean():.0%} of pairs", fontsize=9)
        ax.set(xlabel="key", ylabel="query")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    torch.set_num_threads(1)  # one thread: reproducible timings, and no slowdown on a busy 2-core machine
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    draw_masks(out_dir / "ch09_masks.png")
    rows: dict[str, list[tuple[int, float, float, float]]] = {}
    print(f"forward pass, batch 1, {HEADS} heads, head dim {HEAD_DIM}, float32, "
          f"CPU ({torch.get_num_threads()} threads)")
    print(f"{'variant':40s} {'T':>5s} {'pairs':>6s} {'ms':>8s} {'peak MiB':>9s}")
    for t in SEQ_LENS:
        g = torch.Generator().manual_seed(t)
        q, k, v = (torch.randn(1, HEADS, t, HEAD_DIM, generator=g) for _ in range(3))  # (B, H, T, D)
        reference = attention(q, k, v, mask=sliding_window(WINDOW), backend="sdpa")
        for name, (fn, mask) in variants(t).items():
            if "eager" in name and t > EAGER_MAX:
                continue
            def call(fn=fn, q=q, k=k, v=v):
                with torch.no_grad():
                    return fn(q, k, v)
            ms = min(time_call(call, DEVICE, warmup=1, repeats=2))
            mib = max((peak_memory(call, DEVICE) or 0) / 2**20, 0.1)  # RSS estimate, floored for the log plot
            density = (allowed_pairs(mask, t) if mask is not None else t * t) / (t * t)
            rows.setdefault(name, []).append((t, ms, mib, density))
            print(f"{name:40s} {t:5d} {density:6.1%} {ms:8.2f} {mib:9.1f}")
        err = (attention(q, k, v, mask=sliding_window(WINDOW), backend="chunked") - reference).abs().max().item()
        print(f"{'  chunked vs sdpa, same window: max |diff|':40s} {t:5d} {err:.1e}")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, pts in rows.items():
        ts, ms, mib, _ = zip(*pts, strict=False)
        style = "--" if "sdpa" in name or "eager" in name else "-"
        axes[0].plot(ts, ms, style, marker="o", ms=3, label=name)
        axes[1].plot(ts, mib, style, marker="o", ms=3, label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="ms (forward)",
                title="Time vs length (CPU, log-log)")
    axes[1].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="peak extra MiB (RSS)",
                title="Peak memory vs length (CPU)")
    for ax in axes:
        ax.set_xticks(SEQ_LENS, [str(t) for t in SEQ_LENS])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "ch09_time_memory.png", dpi=100)
    plt.close(fig)
    print(f"\nwrote ch09_masks.png, ch09_time_memory.png ({time.time() - t0:.1f} s)")
    longest = {name: pts[-1][1] for name, pts in rows.items()}
    return {"ms_at_longest": longest, "seq_len": SEQ_LENS[-1]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the figures")
    main(parser.parse_args().out)
