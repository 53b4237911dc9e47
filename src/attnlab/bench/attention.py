"""Attention kernel benchmark: time, TFLOP/s and peak memory per backend, mask and length.

Two families of backends are measured side by side:

* attnlab's own, looked up by name in :data:`attnlab.attention.backends.BACKENDS`
  (``eager``, ``sdpa``, and whatever else is registered, e.g. ``flex``) plus ``auto``,
  all called through :func:`attnlab.attention.attention` with a
  :class:`~attnlab.attention.masks.Mask`;
* raw SDPA kernels (``sdpa-flash``, ``sdpa-efficient``, ``sdpa-cudnn``, ``sdpa-math``),
  forced with ``torch.nn.attention.sdpa_kernel`` and called directly with
  ``is_causal=True`` (causal), no mask (none) or a dense bool mask (anything else).

A backend that cannot run a configuration gives a row whose ``status`` is
``"unsupported: <reason>"``; nothing is skipped silently.

FLOPs count only the allowed (query, key) pairs: forward = 4·B·H·pairs·D (two
matmuls), forward+backward = 3.5 × forward (the backward does five matmuls).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from attnlab.attention import attention, dispatch_log, masks
from attnlab.attention.backends import BACKENDS

SDPA_KERNELS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-math": "MATH",
}
MODES = ("fwd", "fwd+bwd")
SCHEMA_VERSION = 1
ROW_KEYS = (
    "backend", "mask", "seq_len", "head_dim", "heads", "batch", "dtype", "mode", "status", "dispatched",
    "ms", "times_ms", "tflops", "flops", "allowed_pairs", "peak_mem_bytes",
)


def available_backends() -> list[str]:
    """Every backend name the benchmark accepts: registered ones, ``auto``, raw SDPA kernels."""
    return [*BACKENDS, "auto", *SDPA_KERNELS]


def sliding_window_mask(window: int) -> masks.Mask:
    """A causal window of ``window`` keys (the query included), from ``masks`` when it has one."""
    if hasattr(masks, "sliding_window"):
        return masks.sliding_window(window)
    return masks.Mask(lambda b, h, q, k: (q >= k) & (q - k < window), "sliding_window")


def parse_mask(spec: str) -> masks.Mask | None:
    """``"causal"``, ``"none"`` or ``"sliding_window:W"`` → a Mask (None for ``"none"``).

    Raises:
        ValueError: an unknown spec or a bad window.
    """
    if spec == "none":
        return None
    if spec == "causal":
        return masks.causal()
    m = re.fullmatch(r"sliding_window:(\d+)", spec)
    if m and int(m.group(1)) > 0:
        return sliding_window_mask(int(m.group(1)))
    raise ValueError(f"unknown mask '{spec}'; use causal, none or sliding_window:W with W > 0 "
                     "(e.g. sliding_window:128)")


def allowed_pairs(mask: masks.Mask | None, t: int, chunk: int = 1024) -> int:
    """Number of (query, key) pairs the mask allows for T queries and T keys (counted in row chunks)."""
    if mask is None:
        return t * t
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    k = torch.arange(t).view(1, 1, 1, t)
    total = 0
    for start in range(0, t, chunk):
        q = torch.arange(start, min(start + chunk, t)).view(1, 1, -1, 1)
        total += int(mask(zero, zero, q, k).expand(1, 1, q.shape[2], t).sum())
    return total


def attention_flops(pairs: int, batch: int, heads: int, head_dim: int, mode: str) -> float:
    """FLOPs of attention over ``pairs`` allowed (query, key) pairs."""
    fwd = 4.0 * batch * heads * pairs * head_dim
    return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


class Unsupported(Exception):
    """A backend cannot run a configuration; the message says why."""


def _sdpa_kernel_call(name: str, mask: masks.Mask | None, q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor) -> Callable[[], torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = getattr(SDPBackend, SDPA_KERNELS[name], None)
    if kernel is None:
        raise Unsupported(f"this torch has no SDPBackend.{SDPA_KERNELS[name]}")
    kwargs: dict[str, Any] = {}
    if mask is not None and masks.is_kind(mask, "causal"):
        kwargs["is_causal"] = True
    elif mask is not None:
        kwargs["attn_mask"] = mask.dense(1, 1, q.shape[-2], k.shape[-2], q.device)  # (1, 1, T, T)

    # Probe once, recording torch's warnings: they carry the reason a kernel refuses.
    with sdpa_kernel(kernel), warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            F.scaled_dot_product_attention(q, k, v, **kwargs)
        except RuntimeError as e:
            if "No viable backend" not in str(e) and "No available kernel" not in str(e):
                raise
            why = [str(w.message).strip().splitlines()[0] for w in caught]
            why = [w for w in why if w and not w.endswith("because:")]
            raise Unsupported(f"torch has no {SDPA_KERNELS[name].lower()} kernel for this config on "
                              f"{q.device.type}" + (f" ({'; '.join(why[:2])})" if why else "")) from None

    def call() -> torch.Tensor:
        with sdpa_kernel(kernel):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)  # (B, H, T, D)

    return call


def make_call(backend: str, mask: masks.Mask | None, q: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-argument function running one attention call with ``backend``."""
    if backend in SDPA_KERNELS:
        return _sdpa_kernel_call(backend, mask, q, k, v)
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; available: {', '.join(available_backends())}")

    def call() -> torch.Tensor:
        try:
            return attention(q, k, v, mask=mask, backend=backend)  # (B, H, T, D)
        except ValueError as e:  # an explicit backend refusing the call says why
            raise Unsupported(str(e).splitlines()[0]) from None

    return call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` runs after ``warmup`` runs (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field_name}:\s+(\d+)", f.read()).group(1))


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory` measures on ``device`` (recorded in the results)."""
    if device.type == "cuda":
        return "cuda: torch.cuda.max_memory_allocated during the call minus the memory allocated before it"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _rss_kib("VmHWM")
        return ("cpu estimate: peak resident set (VmHWM, reset via /proc/self/clear_refs) during the call minus "
                "the resident set before it; memory reused inside the process's heap is not seen")
    except (OSError, AttributeError):
        return "not measured (no CUDA and no resettable /proc peak RSS)"


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Extra bytes the call needs at its peak (see :func:`memory_method`), or None."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so the peak is visible
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_kib("VmRSS")
        fn()
        return max(0, _rss_kib("VmHWM") - base) * 1024
    except (OSError, AttributeError):
        return None


@dataclass
class BenchSettings:
    """What to measure; every list is crossed with every other."""

    seq_lens: list[int] = field(default_factory=lambda: [256, 512, 1024])
    head_dims: list[int] = field(default_factory=lambda: [64])
    heads: int = 8
    batch: int = 1
    masks: list[str] = field(default_factory=lambda: ["causal", "sliding_window:128", "none"])
    backends: list[str] = field(default_factory=available_backends)
    modes: list[str] = field(default_factory=lambda: list(MODES))
    dtype: str = "auto"
    repeats: int = 0  # 0: 10 on CUDA, 5 on CPU
    warmup: int = 2
    device: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name in ("seq_lens", "head_dims"):
            vals = getattr(self, name)
            if not vals or any(v <= 0 for v in vals):
                raise ValueError(f"{name} must be positive integers, got {vals}")
        if self.heads <= 0 or self.batch <= 0 or self.repeats < 0 or self.warmup < 0:
            raise ValueError("heads and batch must be positive; repeats and warmup must not be negative")
        bad = [b for b in self.backends if b not in available_backends()]
        if bad:
            raise ValueError(f"unknown backend '{bad[0]}'; available: {', '.join(available_backends())}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode '{bad[0]}'; use fwd and/or fwd+bwd")
        for spec in self.masks:
            parse_mask(spec)
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"unknown dtype '{self.dtype}'; use auto, float32, float16 or bfloat16")


def resolve(settings: BenchSettings) -> tuple[torch.device, torch.dtype, int]:
    """Device, dtype and repeats the settings mean on this machine."""
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available; use --device cpu or auto")
    else:
        device = torch.device(settings.device)
    name = settings.dtype if settings.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    repeats = settings.repeats or (10 if device.type == "cuda" else 5)
    return device, getattr(torch, name), repeats


def _dispatch_counts() -> dict[tuple, int]:
    return {(r["backend"], r["mask"], r["q_shape"], r["dtype"], r["device"]): r["count"] for r in dispatch_log()}


def bench_one(backend: str, mask_spec: str, t: int, d: int, mode: str, settings: BenchSettings,
              device: torch.device, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """Measure one configuration; returns a row (``status`` says ok or why not)."""
    mask = parse_mask(mask_spec)
    pairs = allowed_pairs(mask, t)
    flops = attention_flops(pairs, settings.batch, settings.heads, d, mode)
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(backend=backend, mask=mask_spec, seq_len=t, head_dim=d, heads=settings.heads, batch=settings.batch,
               dtype=str(dtype).replace("torch.", ""), mode=mode, flops=flops, allowed_pairs=pairs)
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (settings.batch, settings.heads, t, d)  # (B, H, T, D)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(mode == "fwd+bwd") for _ in range(3))
    before = _dispatch_counts()
    try:
        call = make_call(backend, mask, q, k, v)
        if mode == "fwd":
            def fn() -> Any:
                with torch.no_grad():
                    return call()
        else:
            dout = torch.randn(shape, generator=gen).to(device, dtype)

            def fn() -> Any:
                return torch.autograd.grad(call(), (q, k, v), dout)
        times = time_call(fn, device, settings.warmup, repeats)
        row["peak_mem_bytes"] = peak_memory(fn, device)
    except Unsupported as e:
        row["status"] = f"unsupported: {e}"
        return row
    except torch.cuda.OutOfMemoryError:
        row["status"] = "unsupported: out of GPU memory"
        return row
    except (RuntimeError, NotImplementedError, TypeError) as e:  # a kernel refusing a shape/dtype
        row["status"] = f"unsupported: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        return row
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    after = _dispatch_counts()
    ran = sorted({key[0] for key, n in after.items() if n > before.get(key, 0) and key[2] == shape})
    row["dispatched"] = backend if backend in SDPA_KERNELS else ",".join(ran) or None
    ms = statistics.median(times)
    row.update(status="ok", ms=ms, times_ms=times, tflops=flops / (ms * 1e-3) / 1e12)
    return row


def device_info(device: torch.device) -> dict[str, Any]:
    """Name and a short file-name tag of the device (``cpu``, ``cuda-nvidia-h100-80gb-hbm3``)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return {"type": "cuda", "name": name, "tag": "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")}
    import platform

    return {"type": "cpu", "name": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "tag": "cpu"}


def run_benchmark(settings: BenchSettings, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Measure every combination of the settings.

    Args:
        settings: what to measure.
        progress: called with each row as soon as it is measured.

    Returns:
        The results: settings, device, method notes and one row per
        (backend, mask, seq_len, head_dim, mode), in that nesting order.

    Raises:
        ValueError: a bad setting (named in the message).
    """
    settings.validate()
    device, dtype, repeats = resolve(settings)
    rows = []
    # Compiled backends (flex) compile once per shape/mask: let every config compile instead
    # of hitting dynamo's recompile limit, which would fail or fall back to a slow path.
    n_configs = len(settings.masks) * len(settings.head_dims) * len(settings.seq_lens) * len(settings.modes)
    limit = max(int(torch._dynamo.config.recompile_limit), n_configs + 8)
    with torch._dynamo.config.patch(recompile_limit=limit):
        for mask_spec in settings.masks:
            for d in settings.head_dims:
                for t in settings.seq_lens:
                    for mode in settings.modes:
                        for backend in settings.backends:
                            row = bench_one(backend, mask_spec, t, d, mode, settings, device, dtype, repeats)
                            rows.append(row)
                            if progress:
                                progress(row)
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "attention",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "device": device_info(device),
        "settings": {**asdict(settings), "dtype": str(dtype).replace("torch.", ""), "repeats": repeats,
                     "device": device.type},
        "timing": "median of repeats after warm-up; CUDA events on GPU, perf_counter on CPU",
        "flops": "4·B·H·allowed_pairs·D forward; 3.5× that for forward+backward",
        "memory_method": memory_method(device),
        "available_backends": available_backends(),
        "rows": rows,
    }


def format_table(rows: Sequence[dict[str, Any]], header: bool = True) -> str:
    """The rows as an aligned text table (``header=False``: the rows' lines only)."""
    head = (f"{'backend':<15} {'mask':<19} {'T':>6} {'D':>4} {'mode':<8} "
            f"{'ms':>9} {'TFLOP/s':>8} {'peak MiB':>9}  status")
    lines = [head, "-" * len(head)] if header else []
    for r in rows:
        ok = r["status"] == "ok"
        ms = f"{r['ms']:.3f}" if ok else "-"
        tf = f"{r['tflops']:.3f}" if ok else "-"
        mem = f"{r['peak_mem_bytes'] / 2**20:.1f}" if ok and r["peak_mem_bytes"] is not None else "-"
        status = ("ok" + (f" ({r['dispatched']})" if r["dispatched"] and r["dispatched"] != r["backend"] else "")
                  if ok else r["status"])
        lines.append(f"{r['backend']:<15} {r['mask']:<19} {r['seq_len']:>6} {r['head_dim']:>4} {r['mode']:<8} "
                     f"{ms:>9} {tf:>8} {mem:>9}  {status}")
    return "\n".join(lines)


def plot_results(result: dict[str, Any], path: str) -> None:
    """Time vs sequence length per backend: one panel per mask (columns) and mode (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    mask_names = list(dict.fromkeys(r["mask"] for r in result["rows"]))
    modes = list(dict.fromkeys(r["mode"] for r in result["rows"]))
    head_dims = sorted({r["head_dim"] for r in result["rows"]})
    palette = matplotlib.colormaps["tab10"].colors
    colors = {b: palette[i % len(palette)] for i, b in enumerate(dict.fromkeys(r["backend"] for r in result["rows"]))}
    fig, axes = plt.subplots(len(modes), len(mask_names), figsize=(4.6 * len(mask_names), 3.6 * len(modes)),
                             squeeze=False, constrained_layout=True)
    for i, mode in enumerate(modes):
        for j, mask_name in enumerate(mask_names):
            ax = axes[i][j]
            for backend, color in colors.items():
                for d in head_dims:
                    pts = sorted((r["seq_len"], r["ms"]) for r in rows
                                 if (r["backend"], r["mask"], r["mode"], r["head_dim"])
                                 == (backend, mask_name, mode, d))
                    if pts:
                        label = backend if len(head_dims) == 1 else f"{backend} D={d}"
                        ax.plot(*zip(*pts, strict=False), marker="o", label=label, color=color,
                                linestyle="-" if d == head_dims[0] else "--")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["seq_len"] for r in result["rows"]}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_yscale("log")
            ax.set_title(f"{mask_name} · {mode}", fontsize=10)
            ax.set_xlabel("sequence length T")
            ax.set_ylabel("time (ms, median)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
    s = result["settings"]
    fig.suptitle(f"attention on {result['device']['name']} · {s['dtype']} · B={s['batch']} H={s['heads']}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
