"""Decode throughput: tokens/s of attnlab's plain and fast (static cache + torch.compile) generate
next to ``transformers.generate`` with its dynamic and static caches, same model, same weights.

GPT-2 124M layout (``configs/gpt2-124m.yaml``) with random weights, copied into
``transformers.GPT2LMHeadModel`` with :func:`attnlab.interop.export.to_hf`. Greedy, exactly
``--new-tokens`` tokens per row (no EOS stop), a ``--prompt-len`` random prompt; each row is
warmed up (compilation happens there), then all rows are timed end to end (prefill included) in
``--repeats`` interleaved rounds, so that a change of load on a shared machine hits every row alike;
tokens/s = batch · new tokens / median seconds. Rows:

- ``attnlab eager``: :func:`attnlab.generate.generate` (dynamic, concatenating KV cache).
- ``attnlab compiled static``: :class:`attnlab.generate.FastDecoder` (static cache, the decode step
  compiled once: ``reduce-overhead`` = CUDA graphs on CUDA, inductor ``default`` on CPU); its tokens
  are checked against the eager row and its step must have compiled exactly once.
- ``transformers dynamic``: ``model.generate(...)`` with its default ``DynamicCache``.
- ``transformers static``: ``model.generate(..., cache_implementation="static")`` (transformers
  compiles the forward itself on CUDA only). A row that fails records its error instead.

    python benchmarks/generate.py                       # CPU: fp32, 64 new tokens, 2 threads
    python benchmarks/generate.py --new-tokens 256      # CUDA defaults: bf16, 256 new tokens

Writes ``benchmarks/results/generate-<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attnlab.config import load  # noqa: E402
from attnlab.generate import FastDecoder, generate  # noqa: E402
from attnlab.interop.export import to_hf  # noqa: E402
from attnlab.models import build  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds of one end-to-end call of ``fn`` (device synchronised), and its output."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {threads} threads"


def main() -> None:
    on_cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256 if on_cuda else 64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16" if on_cuda else "fp32")
    ap.add_argument("--warmup", type=int, default=2 if on_cuda else 1)
    ap.add_argument("--repeats", type=int, default=5 if on_cuda else 3)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--rows", nargs="+", default=["eager", "compiled", "hf-dynamic", "hf-static"],
                    choices=["eager", "compiled", "hf-dynamic", "hf-static"])
    ap.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    device = torch.device("cuda" if on_cuda else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    cfg = load(args.preset).model
    torch.manual_seed(0)
    model = build(cfg).eval()
    hf = None
    if any(r.startswith("hf") for r in args.rows):
        import transformers

        hf = to_hf(model).to(device=device, dtype=dtype).eval()  # same weights
        hf.generation_config.pad_token_id = 0
    model = model.to(device=device, dtype=dtype)
    n = args.new_tokens
    results = []
    for batch in args.batch_sizes:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len), generator=g).to(device)
        ones = torch.ones_like(ids)
        fast = None

        def run_eager(ids=ids):
            return generate(model, ids, n, temperature=0.0)

        def run_compiled(ids=ids):
            # `fast` is read when called, not bound here: it is built below, only when the "compiled" row runs.
            return fast.generate(ids, n, temperature=0.0)  # noqa: B023

        def run_hf(cache: str | None, ids=ids, ones=ones):
            kw = {} if cache is None else {"cache_implementation": cache}
            with torch.no_grad():
                return hf.generate(ids, attention_mask=ones, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   **kw)

        plan = {
            "eager": ("attnlab eager (dynamic cache)", run_eager),
            "compiled": ("attnlab compiled static cache", run_compiled),
            "hf-dynamic": ("transformers.generate dynamic cache", lambda: run_hf(None)),
            "hf-static": ("transformers.generate static cache", lambda: run_hf("static")),
        }
        # Warm up every row (compiling where it compiles), then time them in interleaved rounds so
        # that a change of machine load hits all rows alike.
        rows, fns, outs = [], [], []
        for key in args.rows:
            label, fn = plan[key]
            row = {"row": label, "key": key, "batch": batch, "new_tokens": n, "times_s": []}
            try:
                if key == "compiled":
                    fast = FastDecoder(model, batch_size=batch, max_len=args.prompt_len + n)
                    row["path"] = fast.path
                first, out = run_once(fn, device)
                row["first_call_s"] = round(first, 4)
                for _ in range(args.warmup - 1):
                    run_once(fn, device)
                if out.shape != (batch, args.prompt_len + n):
                    raise RuntimeError(f"produced {tuple(out.shape)}, expected {(batch, args.prompt_len + n)}")
                fns.append(fn)
            except Exception as e:  # recorded, not hidden
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                fns.append(None)
                out = None
            rows.append(row)
            outs.append(out)
        for _ in range(args.repeats):
            for row, fn in zip(rows, fns, strict=False):
                if fn is not None:
                    row["times_s"].append(round(run_once(fn, device)[0], 4))
        eager = outs[args.rows.index("eager")] if "eager" in args.rows else None
        for row, out in zip(rows, outs, strict=False):
            if out is None:
                continue
            row["median_s"] = round(statistics.median(row["times_s"]), 4)
            row["tokens_per_s"] = round(batch * n / row["median_s"], 1)
            row["best_s"] = min(row["times_s"])
            row["tokens_per_s_best"] = round(batch * n / row["best_s"], 1)  # least disturbed round
            if eager is not None and row["key"] != "eager":
                same = out[:, args.prompt_len:] == eager[:, args.prompt_len:].to(out.device)
                row["tokens_equal_eager"] = f"{same.float().mean().item():.3f}"
            if row["key"] == "compiled":
                row["compiles"] = fast.compiles
                if fast.compiles != 1:
                    row["error"] = f"the decode step compiled {fast.compiles} times (expected once)"
                elif dtype == torch.float32 and row.get("tokens_equal_eager") not in (None, "1.000"):
                    row["error"] = "compiled tokens differ from eager tokens in fp32"
            print(json.dumps(row), flush=True)
        results.extend(rows)

    meta = {
        "benchmark": "generate",
        "date": time.strftime("%Y-%m-%d"),
        "device": device.type,
        "device_name": device_name(device, torch.get_num_threads()),
        "torch": torch.__version__,
        "transformers": transformers.__version__ if hf is not None else None,
        "python": platform.python_version(),
        "preset": args.preset,
        "params": model.num_params(),
        "dtype": args.dtype,
        "prompt_len": args.prompt_len,
        "new_tokens": n,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "note": args.note,
        "timing": "end to end (prefill + decode); every row warmed up, then timed in interleaved rounds; median of "
                  "repeats; tokens/s = batch * new_tokens / s",
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"generate-{device.type}.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    (out_dir / f"generate-{device.type}.md").write_text(markdown(meta, results))
    print(markdown(meta, results))


def markdown(meta: dict, results: list[dict]) -> str:
    """The results as a markdown table with its context."""
    lines = [
        f"# Decode throughput, {meta['preset']} ({meta['params'] / 1e6:.1f} M params, random weights)",
        "",
        f"{meta['date']}, {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
        f"transformers {meta['transformers']}, {meta['dtype']}, prompt {meta['prompt_len']} tokens, "
        f"{meta['new_tokens']} new tokens (greedy, no EOS stop), {meta['warmup']} warm-up call(s) per row, then "
        f"{meta['repeats']} interleaved timed rounds (median), end to end.",
        "",
        *([meta["note"], ""] if meta["note"] else []),
        "| batch | row | tokens/s (median) | tokens/s (best round) | median s | first call s | tokens = eager | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        note = r.get("error") or r.get("path", "")
        if "compiles" in r:
            note += f", compiled {r['compiles']}x"
        lines.append(f"| {r['batch']} | {r['row']} | {r.get('tokens_per_s', '–')} | "
                     f"{r.get('tokens_per_s_best', '–')} | "
                     f"{r.get('median_s', '–')} | "
                     f"{r.get('first_call_s', '–')} | {r.get('tokens_equal_eager', '–')} | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
