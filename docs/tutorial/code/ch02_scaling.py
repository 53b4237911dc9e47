"""Chapter 2: why scaled dot-product attention divides by √d.

With q and k of d independent unit-variance entries, q·k has variance d. Without
the 1/√d factor the scores spread further apart as d grows, the softmax saturates
(one weight near 1, the rest near 0, entropy near 0) and its gradient vanishes.
We measure this with attnlab's ``attention`` at ``scale=1.0`` (no scaling) and at
the default scale 1/√d.

    .venv/bin/python docs/tutorial/code/ch02_scaling.py --out docs/tutorial/figures
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from attnlab.attention import attention  # noqa: E402

DIMS = [16, 32, 64, 128, 256, 512, 1024]
N_KEYS = 64  # keys per query
N_QUERIES = 256  # queries averaged over


def softmax_stats(d: int, scale: float | None, gen: torch.Generator) -> dict[str, float]:
    """Entropy, largest weight and softmax gradient size of the attention weights for random q, k ∈ N(0, 1)^d."""
    q = torch.randn(1, 1, N_QUERIES, d, generator=gen, dtype=torch.float64)  # (B, H, Tq, D)
    k = torch.randn(1, 1, N_KEYS, d, generator=gen, dtype=torch.float64)  # (B, H, Tk, D)
    v = torch.randn(1, 1, N_KEYS, 1, generator=gen, dtype=torch.float64)  # (B, H, Tk, 1)
    _, w = attention(q, k, v, scale=scale, backend="eager", return_weights=True)  # w: (1, 1, Tq, Tk)
    # The softmax Jacobian ∂w/∂s = diag(w) - w wᵀ: its norm is how much learning signal reaches the scores.
    s2 = (w ** 2).sum(-1)  # (1, 1, Tq)
    jacobian = (s2 - 2 * (w ** 3).sum(-1) + s2 ** 2).clamp_min(0).sqrt()  # Frobenius norm, (1, 1, Tq)
    entropy = -(w * w.clamp_min(1e-300).log()).sum(-1)  # (1, 1, Tq) in nats
    return {
        "entropy": entropy.mean().item(),
        "max_weight": w.max(-1).values.mean().item(),
        "grad_norm": jacobian.mean().item(),
    }


def draw(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    d = [r["d"] for r in rows]
    axes[0].loglog(d, [r["var_qk"] for r in rows], "o-", label="Var(q·k)")
    axes[0].loglog(d, [r["var_scaled"] for r in rows], "s-", label="Var(q·k/√d)")
    axes[0].loglog(d, d, "k:", label="d")
    axes[0].set_title("score variance")
    for ax, key, title in ((axes[1], "max_weight", "mean largest weight"),
                           (axes[2], "entropy", "mean entropy of the weights (nats)"),
                           (axes[3], "grad_norm", "softmax gradient ‖∂w/∂s‖")):
        ax.semilogx(d, [r[f"{key}_raw"] for r in rows], "o-", color="tab:red", label="q·k (no scaling)")
        ax.semilogx(d, [r[f"{key}_scaled"] for r in rows], "s-", color="tab:blue", label="q·k/√d")
        ax.set_title(title)
    axes[1].set_ylim(0, 1)
    axes[2].axhline(math.log(N_KEYS), color="gray", ls=":", label=f"uniform: ln {N_KEYS}")
    for ax in axes:
        ax.set_xlabel("head dimension d")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'d':>5} {'Var(q·k)':>9} {'Var(/√d)':>9} | {'max w raw':>9} {'max w √d':>9} | "
          f"{'H raw':>6} {'H √d':>6} | {'|J| raw':>8} {'|J| √d':>8}")
    for d in DIMS:
        q = torch.randn(20_000, d, generator=gen)
        k = torch.randn(20_000, d, generator=gen)
        qk = (q * k).sum(-1)  # 100k samples of q·k
        raw = softmax_stats(d, 1.0, gen)
        scaled = softmax_stats(d, None, gen)  # None: the default 1/√d
        row = {"d": d, "var_qk": qk.var().item(), "var_scaled": (qk / math.sqrt(d)).var().item()}
        row.update({f"{key}_raw": val for key, val in raw.items()})
        row.update({f"{key}_scaled": val for key, val in scaled.items()})
        rows.append(row)
        print(f"{d:5d} {row['var_qk']:9.1f} {row['var_scaled']:9.3f} | {row['max_weight_raw']:9.3f} "
              f"{row['max_weight_scaled']:9.3f} | {row['entropy_raw']:6.3f} {row['entropy_scaled']:6.3f} | "
              f"{row['grad_norm_raw']:8.4f} {row['grad_norm_scaled']:8.4f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    draw(rows, out_dir / "ch02_scaling.png")
    print(f"wrote {out_dir / 'ch02_scaling.png'}")
    return {"rows": rows}


def default_out() -> Path:
    return Path(__file__).resolve().parents[1] / "figures"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out(), help="folder for the figures")
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and does not fight other processes
    main(parser.parse_args().out)
