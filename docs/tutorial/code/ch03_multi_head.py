"""Chapter 3: multi-head attention, what different heads attend to, and GQA / MQA.

Part 1 trains a one-layer, four-head decoder (attnlab's ``DecoderLM``) on a lookup
task: at position t, output the pair (x[t-1], x[t-3]) of earlier digits. No single
attention pattern can fetch both tokens at once, so heads split the work; we read
their weights with ``attnlab.viz.capture_attention``.

Part 2 measures the KV cache of multi-head (MHA), grouped-query (GQA) and
multi-query (MQA) attention with ``KVCache.nbytes()``.

    .venv/bin/python docs/tutorial/code/ch03_multi_head.py --out docs/tutorial/figures
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attnlab.attention import MultiHeadAttention  # noqa: E402
from attnlab.config import ModelConfig  # noqa: E402
from attnlab.models import build  # noqa: E402
from attnlab.viz import capture_attention, plot_attention  # noqa: E402

DIGITS, SEQ_LEN, OFFSETS = 10, 16, (1, 3)
STEPS = 300
KV_LENGTHS = [128, 512, 2048]


def lookup_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random digits x (n, T) and targets y[t] = 10·x[t-1] + x[t-3] (a pair of digits as one class)."""
    x = torch.randint(0, DIGITS, (n, SEQ_LEN), generator=gen)
    y = DIGITS * x.roll(OFFSETS[0], dims=1) + x.roll(OFFSETS[1], dims=1)  # (n, T); wrong for t < 3, ignored
    return x, y


def train_lookup(gen: torch.Generator) -> tuple[torch.nn.Module, list[float]]:
    """One block, four heads, learned positions; ~300 Adam steps."""
    cfg = ModelConfig(arch="decoder", vocab_size=DIGITS * DIGITS, block_size=SEQ_LEN, n_layer=1, n_head=4,
                      d_model=64, position="learned")
    model = build(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    start = max(OFFSETS)
    losses = []
    for _ in range(STEPS):
        x, y = lookup_batch(64, gen)
        logits = model(x)  # (B, T, 100)
        loss = F.cross_entropy(logits[:, start:].reshape(-1, DIGITS * DIGITS), y[:, start:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def head_report(model: torch.nn.Module, gen: torch.Generator) -> tuple[dict, torch.Tensor, float]:
    """Accuracy, and each head's mean weight on the keys 0..4 positions back."""
    x, y = lookup_batch(512, gen)
    with torch.no_grad(), capture_attention(model, layers=[0]) as cap:
        pred = model(x).argmax(-1)  # (B, T)
    start = max(OFFSETS)
    acc = (pred[:, start:] == y[:, start:]).float().mean().item()
    w = cap.weights[0]  # (B, H, T, T)
    mean = w.mean(0)  # (H, T, T)
    queries = torch.arange(start, SEQ_LEN)  # queries t >= 3 look back at keys t - o
    by_offset = {h: [mean[h, queries, queries - o].mean().item() for o in range(5)] for h in range(mean.shape[0])}
    return by_offset, w, acc


def kv_cache_bytes() -> list[dict]:
    """KV cache size of an 8-head, 4-layer model with 8 (MHA), 2 (GQA) and 1 (MQA) key/value heads."""
    rows = []
    for name, n_kv in (("MHA", 8), ("GQA", 2), ("MQA", 1)):
        cfg = ModelConfig(arch="decoder", vocab_size=256, block_size=max(KV_LENGTHS), n_layer=4, n_head=8,
                          n_kv_head=n_kv, d_model=256)
        model = build(cfg).eval()
        for length in KV_LENGTHS:
            cache = model.make_cache()
            with torch.no_grad():
                model(torch.zeros(1, length, dtype=torch.long), cache=cache)  # prefill fills the cache
            formula = 2 * cfg.n_layer * length * n_kv * cfg.head_dim * 4  # K and V, fp32
            rows.append({"name": name, "n_kv_head": n_kv, "length": length, "bytes": cache.nbytes(),
                         "formula": formula,
                         "params_attn": sum(p.numel() for m in model.modules()
                                            if isinstance(m, MultiHeadAttention) for p in m.parameters())})
    return rows


def draw_kv(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, marker in (("MHA", "o"), ("GQA", "s"), ("MQA", "^")):
        sel = [r for r in rows if r["name"] == name]
        ax.loglog([r["length"] for r in sel], [r["bytes"] / 2**20 for r in sel], marker + "-",
                  label=f"{name} ({sel[0]['n_kv_head']} KV heads)")
    ax.set_xlabel("cached tokens")
    ax.set_ylabel("KV cache (MiB, fp32)")
    ax.set_title("KV cache of a 4-layer, 8-head, d=256 decoder")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, losses = train_lookup(gen)
    print(f"trained {STEPS} steps in {time.perf_counter() - t0:.1f} s: loss {losses[0]:.3f} -> {losses[-1]:.4f}")
    by_offset, weights, acc = head_report(model, gen)
    print(f"accuracy on fresh sequences: {acc:.3f}")
    print("mean weight on the key o positions back:   o=0    o=1    o=2    o=3    o=4")
    for h, row in by_offset.items():
        print(f"  head {h}                                  " + " ".join(f"{v:6.2f}" for v in row))
    tokens = [str(t) for t in lookup_batch(1, torch.Generator().manual_seed(1))[0][0].tolist()]
    x = torch.tensor([[int(t) for t in tokens]])
    with torch.no_grad(), capture_attention(model, layers=[0]) as cap:
        model(x)
    plot_attention(cap.weights, tokens, out_dir / "ch03_heads.png", heads=cap.heads,
                   title="one layer, four heads: target (x[t-1], x[t-3])")
    print(f"wrote {out_dir / 'ch03_heads.png'}")

    rows = kv_cache_bytes()
    print(f"{'':4} {'KV heads':>8} {'tokens':>7} {'nbytes()':>10} {'2·L·T·Hkv·D·4':>14} {'attn params':>11}")
    for r in rows:
        print(f"{r['name']:4} {r['n_kv_head']:8d} {r['length']:7d} {r['bytes']:10d} {r['formula']:14d} "
              f"{r['params_attn']:11d}")
    draw_kv(rows, out_dir / "ch03_kv_cache.png")
    print(f"wrote {out_dir / 'ch03_kv_cache.png'}")
    return {"accuracy": acc, "head_offsets": by_offset, "kv": rows, "final_loss": losses[-1]}


def default_out() -> Path:
    return Path(__file__).resolve().parents[1] / "figures"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out(), help="folder for the figures")
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and does not fight other processes
    main(parser.parse_args().out)
