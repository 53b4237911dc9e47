"""Time to quality: validation loss vs training wall time, attnlab's recipe vs nanoGPT's.

Both train the same model size on the same batches of the embedded corpus (attnlab's data
pipeline: the preset's tokenizer, memmapped tokens, ``get_batch``), in one process, with
their steps interleaved (whichever has trained less time goes next), so machine load hits
both alike. Each gets the same training-time budget; validation (the same fixed held-out
windows, the same mean next-token cross-entropy) runs at regular marks of a model's own
training time and is not counted in it.

- nanoGPT: its ``model.py`` (its init), its ``configure_optimizers`` (AdamW), and the recipe
  of its small-model config (``train_shakespeare_char.py``, as its README runs it on CPU
  with dropout 0): lr 1e-3, betas (0.9, 0.99), weight decay 0.1, 100 warm-up steps, cosine
  to 1e-4 over the run, gradient clip 1.0.
- attnlab: ``attnlab.models.build``, ``attnlab.train.optim.build_optimizer`` and
  ``attnlab.train.schedule.lr_at`` with the preset plus ``--attnlab`` overrides (default:
  Muon for the hidden matrices, lr 0.03 there and 3e-3 for the rest, 10 warm-up steps,
  min lr 3e-4; the best of four settings tried in 90-second runs).

Both schedules span the steps the model is expected to run in the budget (its step time is
measured first). nanoGPT's ``model.py`` comes from ``--nanogpt`` (see ``vs_nanogpt.py``)::

    python benchmarks/time_to_quality.py --nanogpt third_party/nanogpt --threads 1
    python benchmarks/time_to_quality.py --nanogpt third_party/nanogpt --device cuda --budget-s 120   # GPU: bf16

On CUDA both run under bf16 autocast (nanoGPT's own default there) with fused AdamW, uncompiled.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import default_device, device_label  # noqa: E402
from vs_nanogpt import StepFn, attnlab_loss, load_nanogpt, nanogpt_loss, nanogpt_model, run_cli  # noqa: E402

from attnlab.config import load  # noqa: E402
from attnlab.data import prepare  # noqa: E402
from attnlab.models import build  # noqa: E402
from attnlab.train.health import clip_gradients  # noqa: E402
from attnlab.train.loop import autocast_for  # noqa: E402
from attnlab.train.optim import build_optimizer, set_lr  # noqa: E402
from attnlab.train.schedule import lr_at  # noqa: E402

NANOGPT_RECIPE = {"lr": 1e-3, "min_lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.1, "warmup": 100,
                  "grad_clip": 1.0}
DEFAULT_ATTNLAB = ["train.optimizer=muon", "train.warmup_steps=10", "train.lr=3e-3", "train.muon_lr=0.03",
                   "train.min_lr=3e-4"]


def nanogpt_lr(step: int, total: int) -> float:
    """nanoGPT's schedule: linear warm-up, cosine decay to ``min_lr`` at ``total``, then flat."""
    r = NANOGPT_RECIPE
    if step < r["warmup"]:
        return r["lr"] * (step + 1) / (r["warmup"] + 1)
    frac = min(1.0, (step - r["warmup"]) / max(1, total - r["warmup"]))
    return r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * frac)) * (r["lr"] - r["min_lr"])


class Trainee:
    """One recipe: a model, its optimizer and schedule, its training clock and its curve."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn: StepFn, opt: Any, schedule: Any,
                 clip: Any, device: torch.device,
                 amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        self.name, self.model, self.loss_fn, self.opt = name, model, loss_fn, opt
        self.schedule, self.clip, self.device, self.amp = schedule, clip, device, amp
        self.step_no = 0
        self.train_s = 0.0
        self.curve: list[dict[str, float]] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.to(self.device), y.to(self.device)  # (B, T) each
        t0 = time.perf_counter()
        self.schedule(self.opt, self.step_no)
        with self.amp():
            loss = self.loss_fn(x, y)
        loss.backward()
        self.clip(self.model.parameters())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        value = loss.item()  # waits for the device: the step is over
        self.train_s += time.perf_counter() - t0
        self.step_no += 1
        return value

    @torch.no_grad()
    def validate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean next-token loss over the fixed held-out windows (all batches full, so = per token)."""
        self.model.eval()
        with self.amp():
            loss = statistics.mean(self.loss_fn(x.to(self.device), y.to(self.device)).item() for x, y in batches)
        self.model.train()
        self.curve.append({"train_s": round(self.train_s, 2), "step": self.step_no, "val_loss": round(loss, 4)})
        return loss


def first_reach(curve: list[dict[str, float]], target: float) -> float | None:
    """Training time at which ``curve`` first gets to ``target`` (linear between evaluations), or None."""
    for prev, cur in zip(curve, curve[1:], strict=False):
        if cur["val_loss"] <= target:
            span = prev["val_loss"] - cur["val_loss"]
            frac = (prev["val_loss"] - target) / span if span > 0 else 1.0
            return prev["train_s"] + frac * (cur["train_s"] - prev["train_s"])
    return None


def build_pair(args: argparse.Namespace, data: Any, cfg: Any, steps: dict[str, int]) -> list[Trainee]:
    """The two recipes, freshly initialised, with schedules spanning ``steps[name]`` steps."""
    nano = load_nanogpt(args.nanogpt)
    device = torch.device(args.device)
    # bf16 on CUDA; fp32 on CPU, as its recorded CPU results were measured (auto would pick bf16 on an AMX CPU)
    amp = functools.partial(autocast_for, device, "auto" if device.type == "cuda" else "float32")
    tc = cfg.train
    tc.max_steps = steps["attnlab"]
    torch.manual_seed(tc.seed)
    ours = build(cfg).to(device)
    opt = build_optimizer(ours, tc, device.type)
    attn = Trainee("attnlab", ours, attnlab_loss(ours), opt,
                   schedule=lambda o, s: set_lr(o, lr_at(s, tc), tc.lr),
                   clip=lambda ps: clip_gradients(list(ps), tc.grad_clip), device=device, amp=amp)
    torch.manual_seed(1337)
    theirs = nanogpt_model(nano, cfg).to(device)
    r = NANOGPT_RECIPE
    opt_n = theirs.configure_optimizers(r["weight_decay"], r["lr"], r["betas"], device.type)
    total = steps["nanoGPT"]

    def nano_schedule(o: Any, s: int) -> None:
        for g in o.param_groups:
            g["lr"] = nanogpt_lr(s, total)

    base = Trainee("nanoGPT", theirs, nanogpt_loss(theirs), opt_n, schedule=nano_schedule,
                   clip=lambda ps: torch.nn.utils.clip_grad_norm_(ps, r["grad_clip"]), device=device, amp=amp)
    return [attn, base]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, help="folder holding nanoGPT's model.py")
    ap.add_argument("--preset", default="gpt-tiny", help="model size and data for both")
    ap.add_argument("--attnlab", nargs="*", default=DEFAULT_ATTNLAB, help="dotted overrides of attnlab's recipe")
    ap.add_argument("--budget-s", type=float, default=210.0, help="training seconds per model")
    ap.add_argument("--eval-every-s", type=float, default=15.0)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=str(default_device()), choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/time_to_quality-<device>)")
    ap.add_argument("--plot", default=None, help="PNG (default docs/time-to-quality-<device>.png)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load(args.preset, args.attnlab)
    data = prepare(cfg.data, progress=False)
    cfg.model.vocab_size = data.vocab_size
    cfg.model.dropout = 0.0
    B, T = cfg.train.batch_size, cfg.train.seq_len or cfg.model.block_size
    val = list(data.eval_batches("val", B, T, args.eval_batches))

    # Calibrate: step times of both (5 steps each, interleaved) give each schedule's length.
    probe = build_pair(args, data, cfg, {"attnlab": 1000, "nanoGPT": 1000})
    for s in range(6):
        for t in probe:
            t.step(*data.get_batch("train", s, B, T, seed=cfg.train.seed))
    per_step = {t.name: t.train_s / t.step_no for t in probe}
    steps = {n: max(NANOGPT_RECIPE["warmup"] + 1, int(args.budget_s / s)) for n, s in per_step.items()}
    print(f"calibration: s/step {per_step} -> schedule steps {steps}")

    pair = build_pair(args, data, cfg, steps)
    for t in pair:
        t.validate(val)
    marks = {t.name: args.eval_every_s for t in pair}
    while any(t.train_s < args.budget_s for t in pair):
        t = min((t for t in pair if t.train_s < args.budget_s), key=lambda t: t.train_s)
        t.step(*data.get_batch("train", t.step_no, B, T, seed=cfg.train.seed))  # same batch at the same step
        if t.train_s >= marks[t.name] or t.train_s >= args.budget_s:
            marks[t.name] += args.eval_every_s
            v = t.validate(val)
            print(f"{t.name:8s} {t.train_s:7.1f}s step {t.step_no:5d} val {v:.4f}", flush=True)

    attn, base = pair
    target = base.curve[-1]["val_loss"]
    t_reach = first_reach(attn.curve, target)
    base_time = base.curve[-1]["train_s"]
    m = cfg.model
    result = {
        "benchmark": "time_to_quality",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device_label(args.device),
        "device_type": args.device,
        "torch": torch.__version__,
        "model": {"preset": args.preset, "n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model,
                  "vocab_size": m.vocab_size, "block_size": m.block_size, "bias": m.bias, "dropout": 0.0},
        "data": {"source": cfg.data.source, "tokenizer": cfg.data.tokenizer, "batch": [B, T],
                 "val_windows": sum(len(x) for x, _ in val)},
        "budget_s": args.budget_s,
        "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
        "nanogpt_recipe": {**NANOGPT_RECIPE, "schedule_steps": steps["nanoGPT"],
                           "source": "config/train_shakespeare_char.py (dropout 0 as in its README's CPU run)"},
        "attnlab_recipe": {"overrides": args.attnlab, "optimizer": cfg.train.optimizer, "lr": cfg.train.lr,
                           "muon_lr": cfg.train.muon_lr, "min_lr": cfg.train.min_lr, "betas": [cfg.train.beta1,
                           cfg.train.beta2], "warmup_steps": cfg.train.warmup_steps,
                           "weight_decay": cfg.train.weight_decay, "schedule_steps": steps["attnlab"]},
        "seconds_per_step": {k: round(v, 4) for k, v in per_step.items()},
        "nanogpt_final_val_loss": target,
        "nanogpt_time_s": base_time,
        "attnlab_final_val_loss": attn.curve[-1]["val_loss"],
        "attnlab_time_to_nanogpt_final_s": None if t_reach is None else round(t_reach, 1),
        "ratio": None if t_reach is None else round(t_reach / base_time, 3),
        "curves": {t.name: t.curve for t in pair},
    }
    stem = Path(args.out) if args.out else Path(__file__).parent / "results" / f"time_to_quality-{args.device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    report = markdown(result)
    stem.with_suffix(".md").write_text(report)
    png = (Path(args.plot) if args.plot
           else Path(__file__).resolve().parents[1] / "docs" / f"time-to-quality-{args.device}.png")
    plot(result, png)
    print(report)
    print(f"wrote {stem.with_suffix('.json')}, .md and {png}")


def markdown(res: dict[str, Any]) -> str:
    """The result as a short markdown report."""
    m, a, n = res["model"], res["attnlab_recipe"], res["nanogpt_recipe"]
    reach = res["attnlab_time_to_nanogpt_final_s"]
    verdict = ("never reached it within the budget" if reach is None
               else f"reached it after {reach} s, {res['ratio']}x nanoGPT's time ("
               + ("meets" if res["ratio"] <= 0.5 else "misses") + " the ≤ 0.5x target)")
    rows = ["| recipe | s/step (calibration) | s/step (run) | steps | final val loss |", "|---|---|---|---|---|"]
    for name, curve in res["curves"].items():
        run = curve[-1]["train_s"] / max(curve[-1]["step"], 1)
        rows.append(f"| {name} | {res['seconds_per_step'][name]} | {run:.3f} | {curve[-1]['step']} | "
                    f"{curve[-1]['val_loss']} |")
    return "\n".join([
        f"# Time to quality ({res['device']}, torch {res['torch']}, {res['date']})",
        "",
        f"Model: {m['n_layer']} layers, {m['n_head']} heads, d {m['d_model']}, vocab {m['vocab_size']}, block "
        f"{m['block_size']}, bias {m['bias']}, no dropout; data `{res['data']['source']}` "
        f"(`{res['data']['tokenizer']}`), batch {res['data']['batch'][0]} x {res['data']['batch'][1]}, the same "
        f"batch at the same step for both; validation on the same {res['data']['val_windows']} held-out windows. "
        f"Budget {res['budget_s']:.0f} s of training time each (evaluation not counted), steps interleaved in one "
        + (f"process, on {res['device']}, bf16 autocast, no compile." if res.get("device_type") == "cuda" else
           "process, `torch.set_num_threads(1)` on a 2-core machine shared with other jobs (load average "
           f"{res['load_average_1_5_15min_at_end']} at the end), fp32, no compile."),
        "",
        f"nanoGPT recipe: its model.py and configure_optimizers, lr {n['lr']}, betas {tuple(n['betas'])}, wd "
        f"{n['weight_decay']}, warm-up {n['warmup']}, cosine to {n['min_lr']} over {n['schedule_steps']} steps, "
        f"clip {n['grad_clip']} ({n['source']}).",
        f"attnlab recipe: `{' '.join(a['overrides'])}` on `{m['preset']}`: {a['optimizer']}, lr {a['lr']}"
        + (f", muon_lr {a['muon_lr']}" if a["optimizer"] == "muon" else "")
        + f", betas {tuple(a['betas'])}, wd {a['weight_decay']}, warm-up {a['warmup_steps']}, cosine to "
        f"{a['min_lr']} over {a['schedule_steps']} steps, clip 1.0.",
        "",
        *rows,
        "",
        f"nanoGPT's final validation loss {res['nanogpt_final_val_loss']} (after {res['nanogpt_time_s']} s); "
        f"attnlab {verdict}.",
        "",
        "Each schedule's length is the budget divided by the step time measured in 6 calibration steps; "
        "when the machine's load changes after them, a recipe runs more (or fewer) steps than its schedule "
        "spans and trains on at its final learning rate (both recipes alike).",
        "",
    ])


def plot(res: dict[str, Any], path: Path) -> None:
    """Validation loss vs training time for both recipes, nanoGPT's final loss marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in res["curves"].items():
        ax.plot([p["train_s"] for p in curve[1:]], [p["val_loss"] for p in curve[1:]], "o-", ms=3, label=name)
    ax.axhline(res["nanogpt_final_val_loss"], color="gray", ls="--", lw=1, label="nanoGPT final")
    if res["attnlab_time_to_nanogpt_final_s"] is not None:
        ax.axvline(res["attnlab_time_to_nanogpt_final_s"], color="gray", ls=":", lw=1)
    ax.set_xlabel("training time (s, evaluation excluded)")
    ax.set_ylabel("validation loss (nats / token)")
    where = "CUDA" if res.get("device_type") == "cuda" else "CPU"
    ax.set_title(f"{res['model']['preset']} on {where}: time to nanoGPT's final loss ratio {res['ratio']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(main)
