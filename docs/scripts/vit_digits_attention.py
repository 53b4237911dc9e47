"""Draw where a ViT's class token looks: its attention over the 4×4 patch grid of a few test digits.

Needs a finished ``image-classify`` run (see ``configs/finetune/digits-vit.yaml``)::

    attnlab data prepare digits --out data/digits
    attnlab finetune image-classify digits-vit
    python docs/scripts/vit_digits_attention.py runs/digits-vit --out docs/vit-digits-attention.png

One row per digit: the image, then for each layer the class token's attention over the
patches (mean over heads; its weight on itself is left out, so a map sums to less than
one), then the last layer's map laid over the image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from attnlab.finetune import load_finetuned  # noqa: E402
from attnlab.models.vit import class_token_attention  # noqa: E402


def pick(examples: list[dict], label_column: str, n: int) -> list[dict]:
    """The first example of each of the ``n`` smallest labels (varied digits, deterministic)."""
    first: dict = {}
    for r in examples:
        first.setdefault(r[label_column], r)
    return [first[k] for k in sorted(first)[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished image-classify run folder (or its model/ folder)")
    ap.add_argument("--data", default=None, help="examples to draw (default: the run's data.test)")
    ap.add_argument("--n", type=int, default=6, help="how many digits (one per label)")
    ap.add_argument("--out", default="docs/vit-digits-attention.png", help="PNG to write")
    args = ap.parse_args()

    task, model, _ = load_finetuned(args.run)
    examples = pick(task.read(args.data or task.cfg.data.test), task.opt.label_column, args.n)
    images = torch.stack([task.image_tensor(r) for r in examples])  # (N, C, H, W)
    with torch.no_grad():
        logits, weights = model(images, return_weights=True)
    maps = class_token_attention(weights, model.grid).mean(dim=2)  # (L, N, gh, gw), mean over heads
    preds = [task.state["labels"][i] for i in logits.argmax(-1).tolist()]
    n_layers, n = maps.shape[0], len(examples)
    vmax = float(maps.max())
    patch = model.patch_embed.patch_size

    fig, axes = plt.subplots(n, n_layers + 2, figsize=(1.3 * (n_layers + 2), 1.35 * n), squeeze=False)
    for row, r in enumerate(examples):
        img = images[row, 0]  # (H, W)
        axes[row, 0].imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1)
        for layer in range(n_layers):  # one colour scale for all maps, square-root stretched
            axes[row, layer + 1].imshow(maps[layer, row].numpy(), cmap="viridis", norm=PowerNorm(0.5, 0, vmax))
        over = axes[row, -1]
        up = maps[-1, row].repeat_interleave(patch, 0).repeat_interleave(patch, 1)  # (H, W)
        over.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1)
        red = torch.zeros(*up.shape, 4)  # (H, W, RGBA): red, opaque where attention is high
        red[..., 0] = 1.0
        red[..., 3] = 0.8 * up / up.max()
        over.imshow(red.numpy())
        if row == 0:
            for col, title in enumerate(["digit"] + [f"layer {i + 1}" for i in range(n_layers)]):
                axes[0, col].set_title(title, fontsize=8)
        if row == 0:
            over.set_title("last layer on digit", fontsize=8)
        axes[row, 0].set_ylabel(f"{r[task.opt.label_column]} → {preds[row]}", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("ViT on 8×8 digits: class-token attention over 2×2-pixel patches (label → prediction)", fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
