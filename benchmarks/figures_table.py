"""The table that ``benchmarks/figures.py`` checks: every quoted benchmark figure and its source.

Add a row here whenever a doc quotes a new figure (then ``python benchmarks/figures.py --write``).
Sources are relative to ``benchmarks/``; ``../shared/DESIGN.md`` is outside the repository.
"""

from __future__ import annotations

from figures import Figure, Unrecorded, row

BR = "benchmarks/README.md"
RM = "README.md"
DESIGN = "../shared/DESIGN.md"
DESIGN_ORIGIN = 'reference measured elsewhere (H100, torch 2.11), "Performance targets" in ../shared/DESIGN.md'

TT = "python benchmarks/train_throughput.py"
TT_C = "python benchmarks/train_throughput.py --compile"
AM = "python benchmarks/attention_memory.py"
ATT = "attnlab bench attention"
SL = "python benchmarks/serve_load.py --rounds 7"
SL_OLD = "python benchmarks/serve_load.py (the max-batch sweep of commit ce57869)"
GEN = "python benchmarks/generate.py --threads 1"
VS = "python benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt --threads 1 --compile --attnlab-dtype float32"
TTQ = "python benchmarks/time_to_quality.py --nanogpt third_party/nanogpt --threads 1"
LC = "python benchmarks/long_context.py --threads 1"
LC8 = (
    "python benchmarks/long_context.py --threads 1 --seq-len 8192 --iters 3 --no-rope --out-dir /tmp/lc "
    "(then /tmp/lc/long_context-cpu.{json,md} saved as results/long_context-cpu-8192.{json,md})"
)
GAT = "python examples/gat_karate.py > benchmarks/results/gat_karate-cpu.txt"

_AM_F = "results/attention_memory-cpu.json"
_ATT_F = "results/attention-cpu.json"
_GEN_F = "results/generate-cpu.json"
_VS_F = "results/vs_nanogpt-cpu.json"
_LC_F = "results/long_context-cpu.json"
_LC8_F = "results/long_context-cpu-8192.json"
_SL_F = "results/serve_load-cpu.json"
_DP_F = "results/data_prepare-cpu.json"
DP = "python benchmarks/data_prepare.py --size-mb 2048 --rounds 1 --shard-tokens 8000000"
_DP = "sessions[size_mb=2048.0]"
_TY = "docs/howto/train-your-own-text.md"


def _am(backend: str, label: str, t: int, mib: str, ms: str) -> list[Figure]:
    sel = f"rows[backend={backend},T={t}]"
    return row(BR, f"| {label} | {t} | {mib} | {ms} |", _AM_F, AM, (mib, f"{sel}.peak_mib"), (ms, f"{sel}.ms"))


def _att(label: str, mask: str, t: int, mode: str, cells: list[str]) -> list[Figure]:
    quote = f"| {label} | {t} | {mode} | " + " | ".join(cells) + " |"
    pairs = []
    for backend, cell in zip(("eager", "sdpa", "flex", "chunked", "auto"), cells, strict=True):
        if cell[0].isdigit():
            pairs.append((cell.split(" ")[0], f"rows[backend={backend},mask={mask},seq_len={t},mode={mode}].ms"))
    return row(BR, quote, _ATT_F, ATT, *pairs)


VS_NANO = ("python benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt --threads 2 --shape nanogpt-cpu "
           "--attnlab-dtype float32 auto --warmup 5 --iters 45 --val-batches 10 "
           "--out benchmarks/results/vs_nanogpt-cpu-nanoshape")
VS_NANO_C = VS_NANO.replace("--iters 45", "--compile --iters 40") + "-compiled"
VS_NANO2 = VS_NANO + "-run2"


def _nano_shape() -> list[Figure]:
    """The issue-15 rows: nanoGPT's CPU shape, eager and compiled, three models per run."""
    eager, comp = "results/vs_nanogpt-cpu-nanoshape.json", "results/vs_nanogpt-cpu-nanoshape-compiled.json"
    run2 = "results/vs_nanogpt-cpu-nanoshape-run2.json"
    out = row(BR, "compiled; 804,096 parameters each", eager, VS_NANO, ("804,096", "rows.0.params"))
    for label, src, cmd, ms, ratios in (
        ("eager step (ms/iter)", eager, VS_NANO, ("535.0", "694.6", "586.4"), ("1.095", "0.844")),
        ("eager step, repeat (ms/iter)", run2, VS_NANO2, ("1692.1", "2104.4", "1707.5"), ("1.009", "0.811")),
        ("compiled step (ms/iter)", comp, VS_NANO_C, ("470.4", "578.2", "476.8"), ("1.014", "0.824")),
    ):
        quote = f"| {label} | {' | '.join(ms)} | fp32: {ratios[0]}×; default: {ratios[1]}× |"
        out += row(BR, quote, src, cmd, *((m, f"rows.{i}.ms_per_iter_median") for i, m in enumerate(ms)),
                   *((r, f"vs_nanogpt.{i}.speedup_tokens_per_s") for i, r in enumerate(ratios)))
    out += row(BR, "| validation loss after 50 steps, eager | 2.6651 | 2.6653 | 2.695 | "
                   "−1.11% (fp32), −1.10% (default) |",
               eager, VS_NANO, ("50", "{warmup_steps} + {timed_steps}"), ("2.6651", "rows.0.val_loss"),
               ("2.6653", "rows.1.val_loss"), ("2.695", "rows.2.val_loss"),
               ("1.11", "-100 * {vs_nanogpt.0.val_loss_rel_gap}"), ("1.10", "-100 * {vs_nanogpt.1.val_loss_rel_gap}"))
    out += row(BR, "| validation loss after 45 steps, compiled | 2.6755 | 2.6755 | 2.7158 | −1.48% (both) |",
               comp, VS_NANO_C, ("45", "{warmup_steps} + {timed_steps}"), ("2.6755", "rows.0.val_loss"),
               ("2.6755", "rows.1.val_loss"), ("2.7158", "rows.2.val_loss"),
               ("1.48", "-100 * {vs_nanogpt.0.val_loss_rel_gap}"))
    out += row(BR, "(load average 5.0–10.3 at the ends of the runs)", run2, VS_NANO2,
               ("5.0", "load_average_1_5_15min_at_end.0"))
    out += row(BR, "(load average 5.0–10.3 at the ends of the runs)", eager, VS_NANO,
               ("10.3", "load_average_1_5_15min_at_end.1"))
    out += row(BR, "eager run gave 1.095×, the same command again 1.009×, compiled 1.014×", eager, VS_NANO,
               ("1.095", "speedup_tokens_per_s"))
    out += row(BR, "eager run gave 1.095×, the same command again 1.009×, compiled 1.014×", run2, VS_NANO2,
               ("1.009", "speedup_tokens_per_s"))
    out += row(BR, "eager run gave 1.095×, the same command again 1.009×, compiled 1.014×", comp, VS_NANO_C,
               ("1.014", "speedup_tokens_per_s"))
    out += row(BR, "(0.844× eager, 0.824× compiled; target ≥ 2×)", eager, VS_NANO,
               ("0.844", "vs_nanogpt.1.speedup_tokens_per_s"))
    out += row(BR, "(0.844× eager, 0.824× compiled; target ≥ 2×)", comp, VS_NANO_C,
               ("0.824", "vs_nanogpt.1.speedup_tokens_per_s"))
    out += row(BR, "losses differ by 1.1–1.5 % in attnlab's favour", eager, VS_NANO,
               ("1.1", "-100 * {vs_nanogpt.0.val_loss_rel_gap}"))
    out += row(BR, "losses differ by 1.1–1.5 % in attnlab's favour", comp, VS_NANO_C,
               ("1.5", "-100 * {vs_nanogpt.0.val_loss_rel_gap}"))
    return out


def _gen(doc: str, batch: int, cells: list[str]) -> list[Figure]:
    quote = f"| {batch} | " + " | ".join(cells) + " |"
    pairs = []
    for key, cell in zip(("eager", "compiled", "hf-dynamic", "hf-static"), cells, strict=True):
        median, best = cell.split(" ")
        sel = f"results[batch={batch},key={key}]"
        pairs += [(median, f"{sel}.tokens_per_s"), (best, f"{sel}.tokens_per_s_best")]
    return row(doc, quote, _GEN_F, GEN, *pairs)


def _lc(source: str, command: str, t: int, label: str, variant: str, cells: list[str]) -> list[Figure]:
    backend = "chunked" if variant == "window" else "sdpa"
    quote = f"| {t} | {label} | {backend} | " + " | ".join(cells) + " |"
    sel = f"rows[variant={variant}]"
    keys = (f"{sel}.ms_per_iter", f"{sel}.tokens_per_s", f"{sel}.peak_mib")
    return row(BR, quote, source, command, *zip(cells, keys, strict=True))


_LC_REF = "full causal SDPA 223 ms/iter (147k tokens/s); Flex 1024 window 76.6 ms/iter (428k tokens/s), 21.5 GiB"


def _design(doc: str, quote: str, *pairs: tuple[str, str]) -> list[Figure]:
    return row(doc, quote, DESIGN, DESIGN_ORIGIN, *pairs)


_ROPE = (
    "val loss none 4.852 / 4.886 / 4.922, ntk×2 4.857 / 4.883 / 4.911, linear×2 (no fine-tune) 5.049 / 5.071 / 5.075"
)


def _rope() -> list[Figure]:
    pairs = []
    for sel, figs in (
        ("rope.rows[scaling=none]", ("4.852", "4.886", "4.922")),
        ("rope.rows[scaling=ntk,factor=2.0]", ("4.857", "4.883", "4.911")),
        ("rope.rows[scaling=linear,factor=2.0]", ("5.049", "5.071", "5.075")),
    ):
        pairs += [(fig, f"{sel}.{length}") for fig, length in zip(figs, ("128", "256", "512"), strict=True)]
    return row(BR, _ROPE, _LC_F, LC, *pairs)


_NTK_GAP = "max(" + ", ".join(
    f"abs({{rope.rows[scaling=ntk,factor=2.0].{n}}} - {{rope.rows[scaling=none].{n}}})" for n in ("128", "256", "512")
) + ")"

FIGURES: list[Figure] = [
    # benchmarks/README.md: train_throughput.py
    *row(BR, "| gpt-tiny (4.23 M) | 16 × 128 | no | 394.7 | 5,189 |", "results/train_throughput-cpu-gpt-tiny.json", TT,
         ("4.23", "{params} / 1e6"), ("394.7", "ms_per_iter_median"), ("5,189", "tokens_per_s")),
    *row(BR, "| 16 × 128 | yes | 384.1 | 5,332 |", "results/train_throughput-cpu-gpt-tiny-compiled.json", TT_C,
         ("384.1", "ms_per_iter_median"), ("5,332", "tokens_per_s")),
    *_design(BR, "36.4 ms/iter (≈450k tokens/s, ≈39% MFU)",
             ("36.4", r"re:nanoGPT with `torch.compile` ([\d.]+) ms/iter"), ("450", r"re:≈(\d+)k tokens/s"),
             ("39", r"re:≈(\d+)% MFU")),
    # attention_memory.py
    *_am("chunked", "chunked", 2048, "71.9", "83.0"),
    *_am("sdpa", "sdpa (dense mask)", 2048, "85.8", "119.0"),
    *_am("eager", "eager", 2048, "218.4", "331.9"),
    *_am("chunked", "chunked", 4096, "98.1", "164.9"),
    *_am("sdpa", "sdpa (dense mask)", 4096, "224.3", "488.9"),
    *_am("eager", "eager", 4096, "868.4", "1450.0"),
    *_am("chunked", "chunked", 8192, "233.9", "355.0"),
    *_am("sdpa", "sdpa (dense mask)", 8192, "752.4", "1970.5"),
    *_am("chunked", "chunked", 16384, "435.7", "894.9"),
    *row(BR, "Chunked memory grows 1.4–2.4× per doubling of T", _AM_F, AM,
         ("1.4", "chunked_growth_per_doubling.2048->4096"), ("2.4", "chunked_growth_per_doubling.4096->8192")),
    *row(BR, "dense SDPA 2.6–3.4× and eager 4.0× (quadratic)", _AM_F, AM,
         ("2.6", "{rows[backend=sdpa,T=4096].peak_mib} / {rows[backend=sdpa,T=2048].peak_mib}"),
         ("3.4", "{rows[backend=sdpa,T=8192].peak_mib} / {rows[backend=sdpa,T=4096].peak_mib}"),
         ("4.0", "{rows[backend=eager,T=4096].peak_mib} / {rows[backend=eager,T=2048].peak_mib}")),
    # attnlab bench attention
    *_att("causal", "causal", 1024, "fwd", ["60.6", "9.7", "8.0", "17.8", "9.8 (sdpa)"]),
    *_att("causal", "causal", 1024, "fwd+bwd", ["143.8", "34.2", "– (CPU fwd only)", "68.4", "34.6 (sdpa)"]),
    *_att("window 128", "sliding_window:128", 1024, "fwd", ["71.3", "15.9", "4.2", "10.3", "4.7 (flex)"]),
    *_att("window 128", "sliding_window:128", 1024, "fwd+bwd", ["158.2", "50.7", "–", "33.8", "32.8 (chunked)"]),
    *_att("window 128", "sliding_window:128", 512, "fwd", ["10.2", "4.2", "2.0", "4.9", "4.1 (sdpa)"]),
    *row(BR, "forward is 1.5× (T = 512) and 1.2× (T = 1024) faster than SDPA", _ATT_F, ATT,
         ("1.5", "{rows[backend=sdpa,mask=causal,seq_len=512,mode=fwd].ms}"
                 " / {rows[backend=flex,mask=causal,seq_len=512,mode=fwd].ms}"),
         ("1.2", "{rows[backend=sdpa,mask=causal,seq_len=1024,mode=fwd].ms}"
                 " / {rows[backend=flex,mask=causal,seq_len=1024,mode=fwd].ms}")),
    # serve_load.py
    *row(BR, "new 48.3 req/s, today's 44.4 req/s; p99 latency 1439 ms against 1635 ms; 0 errors and 0 reconnects",
         _SL_F, SL, ("48.3", "summary.new.requests_per_s"), ("44.4", "summary.today.requests_per_s"),
         ("1439", "summary.new.latency_p99_ms"), ("1635", "summary.today.latency_p99_ms"),
         ("0", "{summary.new.errors} + {summary.today.errors}"), ("0", "summary.new.reconnects")),
    *row(BR, "(the old HTTP/1.0 server: 672)", _SL_F, SL, ("672", "summary.today.reconnects")),
    *row(BR, "12.0 → 26.0 → 28.1 → 31.1 req/s", "results/serve_load_batching-cpu.json", SL_OLD,
         ("12.0", "results[max_batch=1].requests_per_s"), ("26.0", "results[max_batch=8,join=False].requests_per_s"),
         ("28.1", "results[max_batch=8,join=True].requests_per_s"), ("31.1", "results[max_batch=32].requests_per_s")),
    *row(BR, "TTFT p50 2.5 s → 1.0 s → 0.9 s → 0.05 s, 128 of 128 requests", "results/serve_load_batching-cpu.json",
         SL_OLD,
         ("2.5", "{results[max_batch=1].ttft_ms.p50} / 1000"),
         ("1.0", "{results[max_batch=8,join=False].ttft_ms.p50} / 1000"),
         ("0.9", "{results[max_batch=8,join=True].ttft_ms.p50} / 1000"),
         ("0.05", "{results[max_batch=32].ttft_ms.p50} / 1000"),
         ("128", "min({results[max_batch=1].completed}, {results[max_batch=32].completed})")),
    # generate.py
    *_gen(BR, 1, ["9.7 (12.4)", "10.3 (16.3)", "10.1 (13.4)", "10.2 (13.6)"]),
    *_gen(BR, 8, ["28.8 (34.4)", "29.9 (42.9)", "30.0 (34.9)", "29.5 (35.2)"]),
    *_design(BR, "transformers 65.5 tokens/s dynamic, 587 static; a minimal compiled static-cache loop ~1,180",
             ("65.5", r"re:`transformers.generate` ([\d.]+) tokens/s"), ("587", r"re:(\d+) with its static cache"),
             ("1,180", r"re:reduce-overhead\"\)` ~([\d,]+)")),
    *row(BR, "498 MB of fp32 weights (124.4 M parameters × 4 bytes)", _GEN_F, GEN,
         ("498", "{params} * 4 / 1e6"), ("124.4", "{params} / 1e6")),
    # vs_nanogpt.py and time_to_quality.py
    *row(BR, "compiled step, 4.26 M params, 8 × 256, fp32 (ms/iter), model and loss compiled (the default) "
             "| 590.6 | 580.6 | 0.98× tokens/s", _VS_F, VS,
         ("4.26", "{rows[name=attnlab].params} / 1e6"), ("590.6", "rows[name=attnlab].ms_per_iter_median"),
         ("580.6", "rows[name=nanoGPT].ms_per_iter_median"), ("0.98", "speedup_tokens_per_s")),
    *row(BR, "| training loss after 30 steps, same batches | 6.182 | 6.213 | gap −0.03 |", _VS_F, VS,
         ("30", "{warmup_steps} + {timed_steps}"),
         ("6.182", "rows[name=attnlab].losses.29"), ("6.213", "rows[name=nanoGPT].losses.29"),
         ("−0.03", "{rows[name=attnlab].losses.29} - {rows[name=nanoGPT].losses.29}")),
    *row(BR, "The ≥ 1.1× target is not met on CPU (0.98×)", _VS_F, VS, ("0.98", "speedup_tokens_per_s")),
    *row(BR, "| time to nanoGPT's final val loss 4.886 (210 s budget) | 71.9 s | 210 s | 0.34× |",
         "results/time_to_quality-cpu.json", TTQ,
         ("4.886", "nanogpt_final_val_loss"), ("210", "budget_s"), ("71.9", "attnlab_time_to_nanogpt_final_s"),
         ("0.34", "ratio")),
    *row(BR, "The time-to-quality win (0.34×", "results/time_to_quality-cpu.json", TTQ, ("0.34", "ratio")),
    *_nano_shape(),
    # long_context.py
    *row(BR, _LC_REF, _LC_F, LC,
         ("223", "reference.rows.0.ms_per_iter"), ("147", "{reference.rows.0.tokens_per_s} / 1000"),
         ("76.6", "reference.rows.1.ms_per_iter"), ("428", "{reference.rows.1.tokens_per_s} / 1000"),
         ("21.5", "reference.rows.1.peak_gib")),
    *_design(BR, _LC_REF,
             ("223", r"re:nanoGPT full causal (\d+) ms/iter"), ("76.6", r"re:sliding window ([\d.]+) ms/iter"),
             ("21.5", r"re:ms/iter, ([\d.]+) GiB")),
    *row(BR, "vocab 4096, 2.63 M params; median of 5 steps", _LC_F, LC,
         ("2.63", "{rows.0.params} / 1e6"), ("5", "meta.iters")),
    *_lc(_LC_F, LC, 4096, "window 1024", "window", ["1533.6", "2,671", "721.6"]),
    *_lc(_LC_F, LC, 4096, "full causal", "full", ["1232.0", "3,325", "593.3"]),
    *_lc(_LC8_F, LC8, 8192, "window 1024", "window", ["4427.9", "1,850", "1401.3"]),
    *_lc(_LC8_F, LC8, 8192, "full causal", "full", ["3446.4", "2,377", "969.8"]),
    *row(BR, "removes only 2.3x (4096)", "results/long_context-cpu.md", LC, ("2.3", r"re:removes only ([\d.]+)x")),
    *row(BR, "/ 4.3x (8192) of the causal", "results/long_context-cpu-8192.md", LC8,
         ("4.3", r"re:removes only ([\d.]+)x")),
    *row(BR, "(0.80× at 4096", "results/long_context-cpu.md", LC, ("0.80", r"re:\(ours\): ([\d.]+)x")),
    *row(BR, "0.78× at 8192", "results/long_context-cpu-8192.md", LC8, ("0.78", r"re:\(ours\): ([\d.]+)x")),
    *_rope(),
    *row(BR, "(`attnlab.train`, 85 s in the recorded CPU run)", _LC_F, LC, ("85", "rope.train_s")),
    *row(BR, "NTK is within ~0.01 of none", _LC_F, LC, ("0.01", _NTK_GAP)),
    # README.md
    *row(RM, "(9.7–10.3 tokens/s at batch 1", _GEN_F, GEN,
         ("9.7", "results[batch=1,key=eager].tokens_per_s"), ("10.3", "results[batch=1,key=compiled].tokens_per_s")),
    *row(_TY, "(1,210,787 documents, 2 CPU cores, `data.num_proc=2`, bpe:4096): `prepare` ran at 8.04 MB/s "
              "against 7.93 MB/s", _DP_F, DP,
         ("1,210,787", f"{_DP}.documents"), ("8.04", f"{_DP}.ours.mb_per_s"), ("7.93", f"{_DP}.datasets_map.mb_per_s")),
    *row(_TY, "(8.31 MB/s for its map step alone", _DP_F, DP, ("8.31", f"{_DP}.datasets_map.map_mb_per_s")),
    *row(_TY, "a peak RSS of 243 MB (plus 171 MB per worker) against 4042 MB", _DP_F, DP,
         ("243", f"{_DP}.ours.rss_main_mb"), ("171", f"{_DP}.ours.rss_worker_mb"),
         ("4042", f"{_DP}.datasets_map.rss_main_mb")),
    *row(_TY, "it resumed after the 626,675 documents", _DP_F, DP,
         ("626,675", f"{_DP}.kill_resume.resumed_after_documents")),
    *row(RM, "median 48.3 req/s against 44.4 req/s, p99 latency 1.44 s against 1.63 s, 0 errors, and 0 reconnects",
         _SL_F, SL, ("48.3", "summary.new.requests_per_s"), ("44.4", "summary.today.requests_per_s"),
         ("1.44", "{summary.new.latency_p99_ms} / 1000"), ("1.63", "{summary.today.latency_p99_ms} / 1000"),
         ("0", "{summary.new.errors} + {summary.today.errors}"), ("0", "summary.new.reconnects")),
    *row(RM, "`python examples/gat_karate.py`: 96.7% on Zachary's karate club", "results/gat_karate-cpu.txt", GAT,
         ("96.7", r"re:held-out members: ([\d.]+)%")),
]

RES = "docs/results.md"
FH, FT, CV = "docs/howto/first-hour.md", "docs/howto/fine-tune.md", "docs/howto/convert.md"
MG, TY = "docs/howto/multi-gpu.md", "docs/howto/train-your-own-text.md"
POE = "docs/poetry.md"
_POE_TRAIN = "attnlab train poetry-tiny train.threads=1"
_POE_SAMPLE = 'attnlab generate runs/poetry-tiny --prompt "《" --num-samples 50 ... (then shape_stats)'
_LORA_100 = "attnlab finetune classify sentiment-minilm-lora init=hf:$MINILM train.max_steps=100 train.eval_every=50"
_SEE_RESULTS = "the command beside each row of docs/results.md"

_DEMO = "python benchmarks/demo_time.py --only preset before"
_DEMO_PRESET = r"re:\| preset \| `[^`]*` \| \w+ \| \d+ \|(?:[^|]*\|){{{n}}} ([\d.]+) \|[^\n]*\n\nthird full comparison"
_DEMO_BEFORE = (r"re:\| before \| `[^`]*` \| \w+ \| \d+ \|(?:[^|]*\|){{{n}}} ([\d.]+) \|[^\n]*\n\| preset [^\n]*\n\n"
                "third full comparison")
FIGURES += [
    *row(RM, "validation loss 4.3248 nats/token = **2.0251 bits/byte**", "results/demo-cpu.md", _DEMO,
         ("4.3248", _DEMO_PRESET.format(n=4)), ("2.0251", _DEMO_PRESET.format(n=5))),
    *row(RM, "in 88.7 s of training against 189.6 s (0.47×) on a quiet", "results/demo-cpu.md", _DEMO,
         ("88.7", _DEMO_PRESET.format(n=0)), ("0.47", _DEMO_PRESET.format(n=1)), ("189.6", _DEMO_BEFORE.format(n=0))),
    *row(RM, "old recipe's 4.4931 = 2.1039 in the same run", "results/demo-cpu.md", _DEMO,
         ("4.4931", _DEMO_BEFORE.format(n=4)), ("2.1039", _DEMO_BEFORE.format(n=5))),
]

_DQ, _DQ_CMD = "results/decode-cpu-quiet.json", "python benchmarks/decode_cpu.py --repeats 3 --name decode-cpu-quiet"
FIGURES += [
    *row(RM, "at batch 1 int8 decodes 59.6 tokens/s against `transformers` fp32 36.4 (1.64×), bf16 39.0", _DQ, _DQ_CMD,
         ("59.6", "speed.2.tokens_per_s"), ("36.4", "speed.3.tokens_per_s"),
         ("1.64", "{speed.2.tokens_per_s} / {speed.3.tokens_per_s}"), ("39.0", "speed.1.tokens_per_s")),
    *row(RM, "at batch 8 bf16 260 tokens/s against 126 (2.06×)", _DQ, _DQ_CMD,
         ("260", "speed.6.tokens_per_s"), ("126", "speed.8.tokens_per_s"),
         ("2.06", "{speed.6.tokens_per_s} / {speed.8.tokens_per_s}")),
]

UNRECORDED: list[Unrecorded] = [
    Unrecorded(RM, "validation loss 4.493 nats/token = **2.104 bits/byte**, against the corpus' unigram entropy "
                   "of 6.216 nats/token = 2.885 bits/byte", "make demo"),
    Unrecorded(RM, "in about 3–4 minutes of training at ~5,000–7,000 tokens/s (3 min 24 s for the whole `make demo`",
               "make demo"),
    Unrecorded(RM, "Measured on 2 CPU cores with the shipped recipes", _SEE_RESULTS),
    Unrecorded(RM, "| sentiment (Rotten Tomatoes), test accuracy | bag of words 79.8 % · tiny encoder from scratch "
                   "76.0 % · **pretrained MiniLM-L6 83.8 %** (LoRA rank 8: 82.8 % training 2.1 % of the weights, "
                   "optimizer state 5.5 vs 260 MiB) |", _SEE_RESULTS),
    Unrecorded(RM, "| extractive QA (SQuAD-format, Shakespeare), test F1 / EM | from scratch 8.1 / 7.0 · "
                   "MiniLM-L6 32.0 / 29.3 |", _SEE_RESULTS),
    Unrecorded(RM, "| translation en→de, test BLEU at 2000 steps | RNN + Bahdanau attention 3.4 · tiny Transformer 0.7",
               _SEE_RESULTS),
    Unrecorded(RM, "| summarization (news → headline), ROUGE-L at 400 steps | Transformer 1.6 · RNN + attention 6.5 · "
                   "lead-10 words 19.1 (not converged) |", _SEE_RESULTS),
    Unrecorded(RM, "| LM adaptation (gpt-tiny → review text), val perplexity | 810 → 103 |", _SEE_RESULTS),
    Unrecorded(RM, "| ViT on 8×8 digits, test accuracy | 96.7 % (136k parameters, 54 s) |", _SEE_RESULTS),
    Unrecorded(RM, "reaches ≈ 2.7 bits/byte: the loss of 1.88 nats/character in its README",
               "NOT ours: nanoGPT's README, its CPU run of train_shakespeare_char.py (1.88 / ln 2 = 2.71)"),
    Unrecorded(RES, "| 79.8 % | 79.1 | 58,256 / 58,256 | 0.7 MiB | 351 MiB | 5 s |",
               "attnlab finetune classify sentiment-bow"),
    Unrecorded(RES, "| 76.0 % | 75.4 | 954,498 / 954,498 | 10.9 MiB | 597 MiB | 274 s |",
               "attnlab finetune classify sentiment-scratch"),
    Unrecorded(RES, "| **83.8 %** | **83.6** | 22,713,986 / 22,713,986 | 259.9 MiB | 1,757 MiB | 382 s |",
               "attnlab finetune classify sentiment-minilm init=hf:$MINILM"),
    Unrecorded(RES, "| 82.8 % | 82.5 | 480,386 / 23,045,762 (2.1 %) | 5.5 MiB | 1,971 MiB | 211 s |",
               "attnlab finetune classify sentiment-minilm-lora init=hf:$MINILM"),
    Unrecorded(RES, "| 8.1 | 7.0 | 954,370 | 437 s |", "attnlab finetune qa qa-scratch"),
    Unrecorded(RES, "| **32.0** | **29.3** | 22,566,146 | 366 s |",
               "attnlab finetune qa qa-minilm init=hf:$MINILM"),
    Unrecorded(RES, "| 600 | 0.78 | 3,005,856 | 418 s |",
               "attnlab finetune translate translate-rnn"),
    Unrecorded(RES, "| 600 | 0.25 | 1,900,544 | 134 s |",
               "attnlab finetune translate translate-transformer"),
    Unrecorded(RES, "| 2000 | **3.43** | 3,005,856 | 799 s |",
               "attnlab finetune translate translate-rnn train.max_steps=2000 train.eval_every=1000"),
    Unrecorded(RES, "| 2000 | 0.71 | 1,900,544 | 459 s |",
               "attnlab finetune translate translate-transformer train.max_steps=2000 train.eval_every=1000"),
    Unrecorded(RES, "| 1.6 | 0.0 | 1.6 | 540 s |",
               "attnlab finetune summarize summarize-transformer"),
    Unrecorded(RES, "| 7.1 | 0.3 | 6.5 | 698 s |",
               "attnlab finetune summarize summarize-transformer init=rnn model={}"),
    Unrecorded(RES, "LoRA keeps 99 % of full fine-tuning's accuracy (−1.0 point) while training 2.1 % of the "
                    "parameters, and shrinks gradients + optimizer state from 260 MiB to 5.5 MiB", _SEE_RESULTS),
    Unrecorded(RES, "an adapter saved with `attnlab.finetune.save_adapter` is 1.8 MiB instead of 87 MiB",
               "attnlab finetune classify sentiment-minilm-lora init=hf:$MINILM (its adapter file and model folder)"),
    Unrecorded(RES, "Transformer (which runs 1.7–3.1× more steps per second: the steps and times of its rows)",
               "the translate rows' steps and times"),
    Unrecorded(RES, "(300 steps, 184 s)", "attnlab finetune lm lm-adapt"),
    Unrecorded(RES, "validation loss 6.697 (perplexity 810) before → 4.634 (perplexity 103) after; test loss 4.600",
               "attnlab train gpt-tiny; attnlab finetune lm lm-adapt"),
    Unrecorded(RES, "1,500 steps in 54 s: **96.7 %** test accuracy (macro F1 96.5)",
               "attnlab finetune image-classify digits-vit"),
    Unrecorded(RES, "6.93 at init (ln 1025) → 5.78 (step 100) → 5.35 (step 600); unigram entropy 5.77",
               "attnlab train bert-tiny train.max_steps=600"),
    Unrecorded(RES, "7.02 (step 50) → 5.55 (step 200), sentinels included",
               "attnlab train t5-tiny train.max_steps=200 train.eval_every=50"),
    Unrecorded(FH, "validation loss 5.009 nats/token, **2.345 bits/byte** (unigram entropy 2.885) | 6 min 29 s |",
               "attnlab train gpt-tiny ... train.max_steps=200 (the page's training command)"),
    Unrecorded(FH, "loss 5.011, perplexity 150.1, 2.347 bits/byte", "attnlab eval runs/demo"),
    Unrecorded(FH, "`attention.png`, 4 × 4 heatmaps of 17 tokens | 42 s |", "attnlab viz attention runs/demo ..."),
    Unrecorded(FH, "10,202 / 1,275 / 1,275 examples | 15 s |",
               "attnlab data prepare rotten-tomatoes --out data/sentiment"),
    Unrecorded(FH, "accuracy 0.8016, F1 0.7949 on the 1,275 test snippets | 11 s |",
               "attnlab eval runs/sentiment-minilm-lora"),
    Unrecorded(FH, "With the full 600 steps `make demo` reaches 2.104 bits/byte in about 3–4 minutes on an idle 2-core "
                   "machine, and the full LoRA recipe 82.8 %.", "make demo; " + _SEE_RESULTS),
    Unrecorded(FH, "F1: **82.8 %** with the full recipe (3–4 minutes on 2 CPU cores)",
               "attnlab finetune classify sentiment-minilm-lora init=hf:$MINILM (docs/results.md)"),
    Unrecorded(FH, "weights, 2.1 % of the parameters",
               "attnlab finetune classify sentiment-minilm-lora (docs/results.md)"),
    Unrecorded(FH, "Is 82.8 % good?", _SEE_RESULTS),
    Unrecorded(FH, "baseline in seconds (79.8 %)", "attnlab finetune classify sentiment-bow (docs/results.md)"),
    Unrecorded(FH, "random weights (76.0 %)", "attnlab finetune classify sentiment-scratch (docs/results.md)"),
    Unrecorded(FH, "test accuracy **80.16 %**, F1 79.49 (validation 80.0 %) | 27 min (8 min of CPU) |",
               _LORA_100),
    Unrecorded(FT, "**79.84 %** test accuracy (macro F1 79.05, 2 min on the loaded machine)",
               "attnlab finetune classify sentiment-bow"),
    Unrecorded(FT, "accuracy 78.7 % at step 50 and 80.0 % at step 100, and **80.16 %** test "
                                          "accuracy (F1 79.49)",
               _LORA_100),
    Unrecorded(FT, "It reaches about 80 % test accuracy", "attnlab finetune classify sentiment-bow"),
    Unrecorded(FT, "# LoRA rank 8: 2.1 % of the weights train",
               "attnlab finetune classify sentiment-minilm-lora (docs/results.md)"),
    Unrecorded(FT, "The full 320-step recipe reaches 82.8 %",
               "attnlab finetune classify sentiment-minilm-lora init=hf:$MINILM (docs/results.md)"),
    Unrecorded(TY, "On Shakespeare the same model scores 4.891 bits/byte",
               "attnlab eval runs/email (on the embedded Shakespeare corpus)"),
    Unrecorded(CV, "`llama-tiny` trained for 100 steps (4.9 M parameters, validation 2.453 bits/byte)",
               "attnlab train llama-tiny train.out_dir=runs/llama train.max_steps=100"),
    Unrecorded(MG, "trained `gpt-tiny` for 20 steps in 19 s (validation loss 6.282 nats/token, "
                                          "2.941 bits/byte)",
               "torchrun --standalone --nproc_per_node 2 -m attnlab train gpt-tiny (gloo, CPU; the page's command)"),
    Unrecorded(TY, "validation loss 4.1824 with the mask vs 4.1844 without (each scored "
                                                    "with its own masking), 3,585 vs 3,532 tokens/s",
               "attnlab train gpt-tiny ... train.document_mask=true (the page's command, with and without the mask)"),
    Unrecorded(TY, "validation loss 5.287 nats/token, 1.995 bits/byte (the unigram "
                                                    "entropy of the text is 2.112 bits/byte); after resuming to 50: "
                                                    "5.087, 1.920 bits/byte",
               "attnlab train gpt-tiny data.source=$TEXT ... train.max_steps=40, then train.max_steps=50 --resume"),
    Unrecorded(POE, "After 1,500 steps (about 9 minutes on 2 busy CPU cores)", _POE_TRAIN),
    Unrecorded(POE, "| time | 527 s wall (320 s CPU) on 2 cores shared with other jobs (load average ~8), "
                    "`train.threads=1`; peak RSS 656 MB |", _POE_TRAIN),
    Unrecorded(POE, "model on 8 × 128 tokens took 1.5–5 s; with 1 thread it took about 0.2 s",
               "step times printed by attnlab train poetry-tiny, train.threads=2 vs 1 (no command line kept)"),
    Unrecorded(POE, "At step 300 that model closes 86 % of its lines",
               "the learned-position run's checkpoints (see the table)"),
    Unrecorded(POE, "验证损失为 4.871 nats/token（困惑度 130）", _POE_TRAIN),
    Unrecorded(POE, "99 % 的诗句为 5 或 7 字，标点全部正确，94 % 是整齐的绝句或律诗", _POE_SAMPLE),
    Unrecorded(POE, "5.269 (step 500) → 4.972 (step 1000) → **4.871** nats/token (perplexity 130, "
                                 "2.34 bits/byte)", _POE_TRAIN),
    Unrecorded(POE, "94 % of 50 samples are regular", _POE_SAMPLE),
]

# The docs whose every measured-looking number (see figures.MEASURE) must sit inside a quote above.
COVERED_DOCS = (RM, BR, FH, FT, CV, MG, TY, "docs/howto/serve.md", RES, POE)

# Phrases in COVERED_DOCS whose numbers are settings, targets or sizes asked for, not measurements.
NOT_MEASUREMENTS: dict[str, list[str]] = {
    RM: [
        "dynamic 15 % with 80/10/10", 'max_shard_size="200MB"', "[--max-shard-size 200MB]", "scikit-learn's 8×8 digits",
        "for 360 Muon steps of 16 × 128 tokens", "trained 600 AdamW steps in fp32", "`gpt2-124m` at 16 × 1024",
    ],
    BR: [
        "# gpt-tiny, 16 x 128,", "`gpt2-124m` at 16 × 1024", "Where `auto` is more than 5% off", "# CUDA: 16 x 1024",
        "# CPU: gpt-tiny sizes, 8 x 256", "# CPU: 210 s each", "target ≤ 0.5×", "(≥ 1.1× nanoGPT tokens/s at 16 × 1024",
        "The ≥ 1.1× target", "batch 1 × T", "not the ≥ 1.05× asked for",
        "just outside the 1 % asked for",
    ],
    FH: ["for 360 steps of 16 × 128 tokens", "(600 AdamW steps, the recipe before issue 15)",
         "Before issue 15 (600 AdamW steps in fp32)"],
    CV: ["5MB", "4 shards at 5 MB"],
    TY: ["package (2 MB of `.py` files", "(5 %) of the", "wide, 16 × 128 tokens per step",
         "# 4x the 128 trained tokens"],
    "docs/howto/serve.md": ["(default 5 ms)"],
    RES: ["test snippets, 58 % positive", "scikit-learn's 8×8 digits", "16 patches of 2×2 pixels",
          "masked LM, 15 % (80/10/10)"],
    POE: ["chinese-poetry-2.0.1.tgz, 85 MB", "1.90 MB gzipped", "(the last 5 % of the poems is held out)",
          "1,500 steps × 16 × 128 tokens", "a step of the same model on 8 × 128", "learned positions, 8 × 128"],
}
