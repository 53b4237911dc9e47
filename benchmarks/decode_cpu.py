"""CPU decoding with bf16 and int8 weights: speed beside ``transformers``, and the quality it costs.

Speed: a GPT-2-124M-shaped attnlab model (``configs/gpt2-124m.yaml``, random weights) decodes
greedily, exactly ``--new-tokens`` tokens per row after a ``--prompt-len`` random prompt, at each
batch size, as five rows on the same weights:

- attnlab fp32 / bf16 / int8: :func:`attnlab.generate.generate` after
  :func:`attnlab.generate.quantize.prepare_weights` (``float32``; ``bfloat16``: every weight bf16;
  ``int8``: int8 weight-only linears, LM head included, ``torch._weight_int8pack_mm`` on bf16
  activations).
- transformers fp32 / bf16: ``GPT2LMHeadModel.generate`` on the same weights
  (:func:`attnlab.interop.export.to_hf`), cast with ``.to(dtype)``.

Every row is warmed up by a short call (``--warmup-tokens``), then all are timed end to end
(prefill included) in ``--repeats`` interleaved rounds, so a change of load on a shared machine
hits every row alike; tokens/s = batch · new tokens / median seconds.

Quality: on a small model trained on the embedded corpus (``--run``, e.g. ``attnlab train gpt-tiny
train.max_steps=200``), held-out (val split) perplexity for fp32 / bf16 / int8 and the share of
positions whose argmax next token equals fp32's (teacher-forced greedy agreement).

    python benchmarks/decode_cpu.py --run /tmp/gpt-tiny-200

Writes ``benchmarks/results/decode-cpu.{json,md}`` (``--name`` to change the file name). llama.cpp is not run here.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attnlab.config import load  # noqa: E402
from attnlab.generate import generate  # noqa: E402
from attnlab.generate.quantize import prepare_weights  # noqa: E402
from attnlab.interop.export import to_hf  # noqa: E402
from attnlab.models import build  # noqa: E402

CPU = torch.device("cpu")
ATTNLAB = {"attnlab fp32": ("float32", "none"), "attnlab bf16": ("bfloat16", "none"),
           "attnlab int8": ("bfloat16", "int8")}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def speed(args: argparse.Namespace, save) -> None:
    """Decode tokens/s of the five rows at each batch size (interleaved rounds); ``save(rows, info)`` after each."""
    cfg = load(args.preset).model
    torch.manual_seed(0)
    base = build(cfg).eval()
    hf32 = to_hf(base).eval()  # same weights, before any conversion
    hf32.generation_config.pad_token_id = 0
    models, lines = {}, {}
    for name, (dtype, quantize) in ATTNLAB.items():
        m = copy.deepcopy(base)
        lines[name] = prepare_weights(m, CPU, dtype, quantize).line()
        models[name] = m
    del base
    hf16 = copy.deepcopy(hf32).to(torch.bfloat16)
    n = args.new_tokens

    def attn(model, ids, n):
        return lambda: generate(model, ids, n, temperature=0.0)

    def hf(model, ids, n):
        def run():
            with torch.no_grad():
                return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False)
        return run

    rows = []
    for batch in args.batch_sizes:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len), generator=g)
        plans = {k: {**{name: attn(m, ids, k) for name, m in models.items()},
                     "transformers fp32": hf(hf32, ids, k), "transformers bf16": hf(hf16, ids, k)}
                 for k in (args.warmup_tokens, n)}
        batch_rows = []
        for name, fn in plans[args.warmup_tokens].items():  # warm-up: a short call of each row
            batch_rows.append({"row": name, "batch": batch, "new_tokens": n, "warmup_s": round(timed(fn)[0], 3),
                               "times_s": [], "weights": lines.get(name, "transformers .to(dtype)")})
        outs = {}
        for _ in range(args.repeats):
            for row, (name, fn) in zip(batch_rows, plans[n].items(), strict=True):
                t, out = timed(fn)
                assert out.shape == (batch, args.prompt_len + n), out.shape
                row["times_s"].append(round(t, 3))
                outs[name] = out
        ref = outs["attnlab fp32"][:, args.prompt_len:]
        for row in batch_rows:
            row["median_s"] = statistics.median(row["times_s"])
            row["tokens_per_s"] = round(batch * n / row["median_s"], 1)
            row["tokens_per_s_best"] = round(batch * n / min(row["times_s"]), 1)
            row["tokens_equal_attnlab_fp32"] = round((outs[row["row"]][:, args.prompt_len:] == ref)
                                                     .float().mean().item(), 3)
            print(json.dumps(row), flush=True)
        rows.extend(batch_rows)
        save(rows, {"preset": args.preset, "params": sum(p.numel() for p in hf32.parameters())})


@torch.no_grad()
def quality(args: argparse.Namespace) -> dict:
    """Held-out perplexity of fp32 / bf16 / int8 and their argmax agreement with fp32, on ``--run``."""
    from attnlab.cli._common import load_for_inference
    from attnlab.data import prepare

    base, tok, ckpt, _ = load_for_inference(args.run, "cpu")
    data = prepare(ckpt.config.data, tokenizer=tok, progress=False)
    seq_len = min(args.seq_len, base.config.block_size)
    batches = list(data.eval_batches("val", 8, seq_len, args.eval_batches))
    models, res = {}, {}
    for name, (dtype, quantize) in ATTNLAB.items():
        m = copy.deepcopy(base)
        res[name] = {"weights": prepare_weights(m, CPU, dtype, quantize).line()}
        models[name] = m
    nll = {name: 0.0 for name in models}
    same = {name: 0 for name in models}
    count = 0
    for x, y in batches:
        ref = None
        for name, m in models.items():
            logits = m(x).float()  # (B, T, V)
            nll[name] += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
            top = logits.argmax(-1)  # (B, T)
            ref = top if ref is None else ref
            same[name] += int((top == ref).sum())
        count += y.numel()
    for name in models:
        loss = nll[name] / count
        res[name].update(loss=round(loss, 5), ppl=round(math.exp(loss), 4),
                         agreement_with_fp32=round(same[name] / count, 4))
    ppl32 = res["attnlab fp32"]["ppl"]
    for name in models:
        res[name]["ppl_vs_fp32"] = round(res[name]["ppl"] / ppl32 - 1, 5)
    return {"run": str(ckpt.path), "step": ckpt.step, "params": sum(p.numel() for p in base.parameters()),
            "split": "val", "seq_len": seq_len, "tokens": count, "rows": res}


def write_md(path: Path, meta: dict, rows: list[dict], qual: dict | None) -> None:
    lines = [f"# CPU decoding: bf16 and int8 weights ({meta['date']})", "",
             f"{meta['cpu']}, {meta['threads']} threads; torch {meta['torch']}, transformers {meta['transformers']}. "
             f"{meta['preset']} shape ({meta['params'] or 0:,} params, random weights), greedy, prompt "
             f"{meta['prompt_len']}, {meta['new_tokens']} new tokens, end to end; median of {meta['repeats']} "
             f"interleaved rounds. Load average (1/5/15 min) before {meta['load_average_1_5_15min']['before']}, "
             f"after {meta['load_average_1_5_15min']['after']} on this shared machine. {meta['note']}", "",
             "| row | batch | tokens/s (median) | tokens/s (best) | vs transformers fp32 | tokens = attnlab fp32 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        hf = next(x for x in rows if x["batch"] == r["batch"] and x["row"] == "transformers fp32")
        lines.append(f"| {r['row']} | {r['batch']} | {r['tokens_per_s']} | {r['tokens_per_s_best']} | "
                     f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}x | {r['tokens_equal_attnlab_fp32']:.3f} |")
    lines += ["", "Weights per row: " + "; ".join(f"{k}: `{v}`" for k, v in meta["weights"].items()), ""]
    if qual:
        lines += [f"## Quality on a trained model ({qual['run']}, step {qual['step']}, {qual['params']:,} params)", "",
                  f"Held-out {qual['split']} split, {qual['tokens']:,} tokens in windows of {qual['seq_len']}; "
                  "agreement = share of positions whose argmax next token equals fp32's.", "",
                  "| weights | loss | perplexity | vs fp32 | agreement with fp32 |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, q in qual["rows"].items():
            lines.append(f"| {name} | {q['loss']:.4f} | {q['ppl']:.3f} | {100 * q['ppl_vs_fp32']:+.2f}% | "
                         f"{q['agreement_with_fp32']:.4f} |")
        lines.append("")
    lines.append("Not measured here: llama.cpp on the same weights.")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup-tokens", type=int, default=4, help="new tokens of each row's untimed warm-up call")
    ap.add_argument("--run", default=None, help="a trained run for the quality part (skipped without it)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-batches", type=int, default=30)
    ap.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    ap.add_argument("--name", default="decode-cpu", help="results file name, without .json/.md")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    t0 = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    qual = quality(args) if args.run else None
    if qual:
        print(json.dumps(qual), flush=True)

    def save(rows: list[dict], info: dict) -> None:
        meta = {"benchmark": "decode_cpu", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                "transformers": transformers.__version__,
                "load_average_1_5_15min": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
                **info, "batch_sizes_done": sorted({r["batch"] for r in rows}),
                "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
                "warmup_tokens": args.warmup_tokens, "note": args.note,
                "weights": {r["row"]: r["weights"] for r in rows if r["batch"] == args.batch_sizes[0]},
                "timing": "end to end (prefill + decode), greedy, no EOS stop; warmed up, then interleaved rounds; "
                          "tokens/s = batch * new_tokens / median s",
                "command": " ".join(["python", "benchmarks/decode_cpu.py", *sys.argv[1:]]),
                "wall_s": round(time.perf_counter() - t0, 1)}
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "speed": rows, "quality": qual}, indent=1)
                                             + "\n")
        write_md(out / f"{args.name}.md", meta, rows, qual)
        print(f"wrote {out / args.name}.json and .md after {meta['wall_s']} s", flush=True)

    if qual:
        save([], {"preset": args.preset, "params": None})  # the quality part, in case the speed part is cut short
    speed(args, save)

if __name__ == "__main__":
    main()
