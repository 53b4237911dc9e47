"""Chapter 6: the Transformer block — residual + LayerNorm, pre vs post norm, and the three architectures.

Run: .venv/bin/python docs/tutorial/code/ch06_transformer_block.py [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from attnlab import config
from attnlab.blocks import Block
from attnlab.models import build

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "figures"
D_MODEL = 64
DEPTHS = (6, 12, 24, 48)


def block_stack(placement: str, n_layer: int) -> nn.ModuleList:
    """``n_layer`` blocks (4 heads, d_model 64, LayerNorm, GELU MLP) with PyTorch's default init."""
    cfg = config.load("gpt-tiny", ["model.vocab_size=256", "model.n_head=4", f"model.d_model={D_MODEL}",
                                   f"model.norm_placement={placement}"]).model
    torch.manual_seed(0)
    return nn.ModuleList(Block(cfg) for _ in range(n_layer))


def probe(placement: str, n_layer: int) -> dict[str, list[float]]:
    """Push a random batch through the stack and back; a linear head + cross-entropy on random labels.

    Returns the RMS of the residual stream after each block, the norm of the gradient
    arriving at each block's input, and the norm of each block's parameter gradient.
    """
    blocks = block_stack(placement, n_layer)
    torch.manual_seed(1)
    x = torch.randn(8, 32, D_MODEL)  # (B, T, d): a unit-variance residual stream
    labels = torch.randint(0, 10, (8 * 32,))
    head = nn.Linear(D_MODEL, 10)
    inputs, rms = [], []
    h = x.requires_grad_()
    for block in blocks:
        h.retain_grad()
        inputs.append(h)
        h = block(h)  # (B, T, d); mask=None: every token sees every token
        rms.append(h.pow(2).mean().sqrt().item())
    if placement == "pre":  # a pre-norm stack ends with one more norm before the head
        h = F.layer_norm(h, (D_MODEL,))
    F.cross_entropy(head(h).flatten(0, 1), labels).backward()
    return {
        "rms": rms,
        "input_grad": [t.grad.norm().item() for t in inputs],
        "param_grad": [torch.cat([p.grad.flatten() for p in b.parameters()]).norm().item() for b in blocks],
    }


def three_architectures() -> dict[str, int]:
    """Build the encoder, decoder and encoder–decoder presets and push a batch through each."""
    ids = torch.randint(0, 1000, (2, 16))  # (B, T)
    sizes = {}
    for preset in ("bert-tiny", "gpt-tiny", "t5-tiny"):
        cfg = config.load(preset, ["model.vocab_size=1000"])
        torch.manual_seed(0)
        model = build(cfg).eval()
        m = cfg.model
        with torch.no_grad():
            if m.arch == "encoder_decoder":
                out = model(ids, decoder_input_ids=ids[:, :5])  # (B, 5, V): teacher-forced decoder logits
            else:
                out = model(ids)  # (B, T, V)
        sizes[preset] = sum(p.numel() for p in model.parameters())
        layers = f"{m.n_layer}+{m.n_decoder_layer or m.n_layer}" if m.arch == "encoder_decoder" else str(m.n_layer)
        print(f"{preset:9s} {m.arch:15s} {type(model).__name__:18s} layers {layers:4s} d_model {m.d_model:3d} "
              f"{m.norm}/{m.norm_placement:4s} {m.position:8s} params {sizes[preset]:>9,}  "
              f"{tuple(ids.shape)} -> {tuple(out.shape)}")
    return sizes


def main(out_dir: Path) -> dict:
    torch.set_num_threads(1)  # one thread: reproducible timings, and no slowdown on a busy 2-core machine
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result: dict = {}
    deep = {p: probe(p, 24) for p in ("pre", "post")}
    print("== 24 blocks at initialisation ==")
    print("placement  stream RMS after block 1 / 24   input grad block 1 / 24   param grad block 1 / 24")
    for p, r in deep.items():
        print(f"{p:9s}  {r['rms'][0]:10.3f} / {r['rms'][-1]:.3f}      {r['input_grad'][0]:10.4f} / "
              f"{r['input_grad'][-1]:.4f}      {r['param_grad'][0]:8.4f} / {r['param_grad'][-1]:.4f}")
        result[f"{p}_rms_last"] = r["rms"][-1]

    print("\n== parameter gradient of the LAST block, by depth ==")
    last_grad = {p: [probe(p, n)["param_grad"][-1] for n in DEPTHS] for p in ("pre", "post")}
    for p, g in last_grad.items():
        print(f"{p:9s} " + "  ".join(f"{n} layers: {v:.3f}" for n, v in zip(DEPTHS, g, strict=False)))
        result[f"{p}_last_grad_48"] = g[-1]

    print("\n== the three architectures (vocabulary 1000) ==")
    result["params"] = three_architectures()

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    layers = range(1, 25)
    for p, style in (("pre", "o-"), ("post", "s-")):
        axes[0].plot(layers, deep[p]["rms"], style, ms=3, label=f"{p}-norm")
        axes[1].plot(layers, deep[p]["param_grad"], style, ms=3, label=f"{p}-norm")
        axes[2].plot(DEPTHS, last_grad[p], style, ms=4, label=f"{p}-norm")
    axes[0].set(xlabel="block", ylabel="RMS", title="Residual stream after each block")
    axes[1].set(xlabel="block", ylabel="gradient norm", title="Parameter gradient per block", ylim=(0, None))
    axes[2].set(xlabel="number of blocks", ylabel="gradient norm", title="Last block's gradient vs depth",
                ylim=(0, None))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "ch06_pre_vs_post.png", dpi=100)
    plt.close(fig)
    print(f"\nwrote ch06_pre_vs_post.png ({time.time() - t0:.1f} s)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the figures")
    main(parser.parse_args().out)
