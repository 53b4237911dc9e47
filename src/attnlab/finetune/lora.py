"""LoRA as module injection: wrap chosen ``nn.Linear`` layers, train only the adapters.

A LoRA layer computes ``y = x Wᵀ + b + dropout(x) Aᵀ Bᵀ · (alpha / rank)`` with the
base ``W``, ``b`` frozen, ``A`` (rank, in) Kaiming-uniform and ``B`` (out, rank) zero, so a
freshly injected model computes exactly what the base model did::

    cfg = LoRAConfig(rank=8, targets=["q", "v"])
    names = inject_lora(model, cfg)            # ['blocks.0.attn.q_proj', ...]
    print(parameter_summary(model))            # gpt-tiny: trainable 32,768 / 4,262,144 (0.77%)
    ...train...
    save_adapter(model, "runs/ft/adapter", cfg)
    load_adapter(fresh_base_model, "runs/ft/adapter")
    remove_lora(model, merge=True)             # plain nn.Linear again, deltas folded in
    with adapters_disabled(model): ...         # the base model, no copy (e.g. a DPO reference)

The wrapper keeps the base layer's ``weight``/``bias`` parameters under their original
names (``blocks.0.attn.q_proj.weight``), so base checkpoints still load into an injected
model, and adds ``lora_A``/``lora_B`` beside them.

Target patterns (``LoRAConfig.targets``) match linear-layer names:

* shorthands ``"q"``, ``"k"``, ``"v"``, ``"o"`` (the attention projections) and ``"mlp"``
  (``up_proj``, ``down_proj``, ``gate_proj``);
* a pattern without a dot is an fnmatch pattern on the last name component
  (``"q_proj"``, ``"*_proj"``);
* a pattern with a dot is an fnmatch pattern on the full name (``"blocks.0.attn.*"``);
* ``"re:<regex>"`` must match the full name (``re.fullmatch``).

An adapter is a folder with ``adapter.safetensors`` (only the A/B tensors) and
``adapter.json`` (the LoRA config, target names and shapes, the base-model fingerprint
and the sha256 of the tensors file). The fingerprint is the sha256 of the sorted
(name, shape) list of the base model's state dict: it identifies the *architecture*
the adapter was made for, not the values of its weights.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import nn

from attnlab.errors import CheckpointError, ConfigError
from attnlab.io import durable
from attnlab.io.weights import read_weights_file
from attnlab.validation import FRACTION, POSITIVE, check_ranges

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"
ADAPTER_FORMAT = "attnlab-lora"
ADAPTER_VERSION = 1
SHORTHANDS: dict[str, tuple[str, ...]] = {
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj",),
    "mlp": ("up_proj", "down_proj", "gate_proj"),
}
_LORA_KEYS = (".lora_A", ".lora_B")


@dataclass
class LoRAConfig:
    """Which linear layers get a low-rank adapter, and its size.

    Attributes:
        rank: rank r of the update B·A.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapter's input (training only).
        targets: name patterns of the linear layers to adapt (see the module docstring).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        check_ranges(self, "lora", {"alpha": POSITIVE, "dropout": FRACTION})  # NaN and inf too
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"lora.targets must be a non-empty list of name patterns, got {self.targets!r}")
        self.targets = list(self.targets)
        for t in self.targets:
            _compile(t, "lora.targets")

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank


def _compile(pattern: str, where: str) -> Callable[[str], bool]:
    """A pattern (see the module docstring) as a predicate on the full module name."""
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise ConfigError(f"{where}: bad regex '{pattern}' ({e}); fix it or use an fnmatch pattern") from None
        return lambda name: rx.fullmatch(name) is not None
    if "." in pattern:
        return lambda name: fnmatch.fnmatchcase(name, pattern)
    leaves = SHORTHANDS.get(pattern, (pattern,))
    return lambda name: any(fnmatch.fnmatchcase(name.rpartition(".")[2], leaf) for leaf in leaves)


def _matches(name: str, patterns: Sequence[str], where: str) -> bool:
    return any(_compile(p, where)(name) for p in patterns)


def _summarize_names(names: Sequence[str]) -> str:
    """``blocks.*.attn.q_proj, ..., lm_head``: layer indices collapsed, order kept."""
    return ", ".join(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names))


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a trainable low-rank update; the base weights are frozen.

    Args:
        base: the layer to wrap; its ``weight``/``bias`` parameters are reused (not copied).
        rank: rank r of the update.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapter's input, active only in training mode.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), shared with ``base``
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.rank, self.alpha, self.scale = rank, float(alpha), alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.enabled = True
        """Whether the update applies (:func:`adapters_disabled` turns it off: the base layer alone)."""

    def delta_weight(self) -> torch.Tensor:
        """B·A·scale, (out, in), computed in float32 and cast to the weight's dtype."""
        return (self.lora_B.float() @ self.lora_A.float() * self.scale).to(self.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (forward then runs one matmul)."""
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the folded update again (exact up to floating-point rounding)."""
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged or not self.enabled:
            return y
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., r) → (..., out)
        return y + update * self.scale

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding this layer's (current) weight and bias parameters."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}, merged={self.merged}")


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """``(name, module)`` for every LoRA layer in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The adapter parameters (A and B of every LoRA layer), e.g. for an optimizer."""
    for _, m in lora_modules(model):
        yield m.lora_A
        yield m.lora_B


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model inside the block: every LoRA update is bypassed, not copied.

    The base weights are shared, so this costs no memory; the adapters are switched back on when
    the block ends, even on an error. A model without LoRA layers is itself the base model.

    Raises:
        ConfigError: a LoRA layer is merged (its update is inside the weight); call
            :func:`unmerge_lora` first.
    """
    mods = list(lora_modules(model))
    merged = [name for name, m in mods if m.merged]
    if merged:
        raise ConfigError(f"cannot switch off merged LoRA layer '{merged[0]}' (its update is in the weight); "
                          "call unmerge_lora(model) first")
    before = [m.enabled for _, m in mods]
    for _, m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for (_, m), was in zip(mods, before, strict=True):
            m.enabled = was


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _wrap(model: nn.Module, names: Sequence[str], cfg: LoRAConfig) -> None:
    shared: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(pname)
    for name in names:
        base = model.get_submodule(name)
        others = [n for n in shared[id(base.weight)] if n != f"{name}.weight"]
        if others:
            raise ConfigError(
                f"cannot put LoRA on '{name}': its weight is tied to '{others[0]}' and merging would change both; "
                f"drop it from lora.targets (or train it whole with trainable_extra)"
            )
        _set_module(model, name, LoRALinear(base, cfg.rank, cfg.alpha, cfg.dropout))


def inject_lora(model: nn.Module, cfg: LoRAConfig, trainable_extra: Sequence[str] = ()) -> list[str]:
    """Wrap every ``nn.Linear`` whose name matches ``cfg.targets`` in a :class:`LoRALinear`, in place.

    Afterwards only the adapters (and the modules matched by ``trainable_extra``) have
    ``requires_grad=True``; everything else, embeddings included, is frozen. Tied
    parameters stay tied.

    Args:
        model: the model to adapt.
        cfg: rank, alpha, dropout and target patterns.
        trainable_extra: name patterns (same syntax as targets) of modules to keep fully
            trainable, e.g. ``["lm_head"]`` for a task head.

    Returns:
        The names of the wrapped layers, in module order.

    Raises:
        ConfigError: the model already has LoRA layers, no linear layer matches a target,
            a ``trainable_extra`` pattern matches nothing, or a target's weight is tied.
    """
    if any(True for _ in lora_modules(model)):
        raise ConfigError("model already has LoRA layers; call remove_lora(model) before injecting again")
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n in linear if _matches(n, cfg.targets, "lora.targets")]
    if not names:
        raise ConfigError(
            f"lora.targets {cfg.targets} matched no linear layer; available: {_summarize_names(linear) or 'none'}"
        )
    extra = [n for n, _ in model.named_modules()
             if n and trainable_extra and _matches(n, trainable_extra, "trainable_extra")]
    if trainable_extra and not extra:
        avail = _summarize_names([n for n, m in model.named_modules() if n and not list(m.children())])
        raise ConfigError(f"trainable_extra {list(trainable_extra)} matched no module; available: {avail}")
    model.requires_grad_(False)
    _wrap(model, names, cfg)
    for n in extra:
        model.get_submodule(n).requires_grad_(True)
    for p in lora_parameters(model):
        p.requires_grad_(True)
    return names


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every LoRA update into its base weight; returns the layer names."""
    names = []
    for name, m in lora_modules(model):
        m.merge()
        names.append(name)
    return names


def unmerge_lora(model: nn.Module) -> list[str]:
    """Undo :func:`merge_lora`; returns the layer names."""
    names = []
    for name, m in lora_modules(model):
        m.unmerge()
        names.append(name)
    return names


def remove_lora(model: nn.Module, merge: bool = True) -> list[str]:
    """Replace every LoRA layer by a plain ``nn.Linear``, in place.

    Args:
        model: the adapted model.
        merge: keep the learned updates folded into the weights (``True``) or drop them
            and restore the base weights (``False``).

    Returns:
        The names of the replaced layers. Their parameters keep ``requires_grad=False``.
    """
    mods = list(lora_modules(model))
    for name, m in mods:
        m.merge() if merge else m.unmerge()
        _set_module(model, name, m.to_linear())
    return [n for n, _ in mods]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, shared (tied) parameters counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_summary(model: nn.Module) -> str:
    """``"trainable 147,456 / 4,376,832 (3.37%)"``."""
    trainable, total = count_parameters(model)
    return f"trainable {trainable:,} / {total:,} ({100.0 * trainable / max(total, 1):.2f}%)"


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the sorted (name, shape) pairs of the base model's state dict.

    LoRA tensors are left out, so an adapted model has the fingerprint of its base.
    Identifies the architecture (layer names and sizes), not the trained values.
    """
    items = sorted((k, list(t.shape)) for k, t in model.state_dict().items() if not k.endswith(_LORA_KEYS))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    """(out, in) of every linear layer, wrapped or not."""
    return {n: [m.out_features, m.in_features] for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, LoRALinear))}


def save_adapter(model: nn.Module, path: str | Path, cfg: LoRAConfig, fingerprint: str | None = None) -> Path:
    """Write the adapter (A/B tensors only) and its description to the folder ``path``, atomically.

    Args:
        model: a model with LoRA layers (merged or not).
        path: the adapter folder (replaced if it exists).
        cfg: the config the adapters were injected with.
        fingerprint: the base model's fingerprint (default :func:`base_fingerprint` of ``model``).

    Returns:
        The adapter folder.

    Raises:
        ConfigError: the model has no LoRA layers.
    """
    mods = list(lora_modules(model))
    if not mods:
        raise ConfigError("model has no LoRA layers to save; call inject_lora first")
    tensors = {}
    for name, m in mods:
        tensors[f"{name}.lora_A"] = m.lora_A.detach().to("cpu").contiguous()
        tensors[f"{name}.lora_B"] = m.lora_B.detach().to("cpu").contiguous()
    shapes = _shapes(model)

    def fill(tmp: Path) -> None:
        durable.write_file(tmp / ADAPTER_WEIGHTS, safetensors_bytes(tensors, metadata={"format": "pt"}))

    def describe(tmp: Path, sha256: dict[str, str], sizes: dict[str, int]) -> None:
        meta = {
            "format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "config": dataclasses.asdict(cfg),
            "targets": [n for n, _ in mods], "shapes": {n: shapes[n] for n, _ in mods},
            "base_fingerprint": fingerprint or base_fingerprint(model),
            "sha256": {ADAPTER_WEIGHTS: sha256[ADAPTER_WEIGHTS]},
        }
        durable.write_file(tmp / ADAPTER_META, json.dumps(meta, indent=1).encode())

    return durable.write_folder(path, fill, manifest=describe)


def _read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    for f in (ADAPTER_META, ADAPTER_WEIGHTS):
        if not (folder / f).is_file():
            raise CheckpointError(f"'{folder / f}' not found; pass a folder written by save_adapter")
    try:
        meta = json.loads((folder / ADAPTER_META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"'{folder / ADAPTER_META}' is corrupt (not JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"'{folder / ADAPTER_META}' is not an attnlab LoRA adapter description")
    if meta.get("version", 0) > ADAPTER_VERSION:
        raise CheckpointError(f"adapter '{folder}' has format {meta.get('version')}, newer than this attnlab "
                              f"understands ({ADAPTER_VERSION}); upgrade attnlab")
    sha256 = meta.get("sha256")
    if isinstance(sha256, dict) and isinstance(sha256.get(ADAPTER_WEIGHTS), str):
        durable.check_files(folder, {ADAPTER_WEIGHTS: sha256[ADAPTER_WEIGHTS]}, kind="the adapter",
                            fix="; save the adapter again")
    tensors = read_weights_file(folder / ADAPTER_WEIGHTS)
    return meta, tensors


def load_adapter(model: nn.Module, path: str | Path, check_fingerprint: bool = True) -> LoRAConfig:
    """Load an adapter saved by :func:`save_adapter` into ``model``, injecting LoRA layers if needed.

    Args:
        model: the base model (or one already injected with the same targets and rank).
        path: the adapter folder.
        check_fingerprint: refuse an adapter made for another architecture.

    Returns:
        The adapter's :class:`LoRAConfig`.

    Raises:
        CheckpointError: files missing or corrupt, or the adapter does not fit this model.
    """
    folder = Path(path)
    meta, tensors = _read_adapter(folder)
    try:
        cfg = LoRAConfig(**meta["config"])
        names: list[str] = list(meta["targets"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"'{folder / ADAPTER_META}' is corrupt ({type(e).__name__}: {e})") from None
    here, saved = _shapes(model), meta.get("shapes", {})
    for n in names:
        if n in saved and here.get(n) != saved[n]:
            raise CheckpointError(
                f"adapter '{folder}' was made for another base model: '{n}' is {saved[n]} there, "
                f"{here.get(n, 'absent')} here; load it onto the model it was trained from"
            )
    if check_fingerprint and meta.get("base_fingerprint") != base_fingerprint(model):
        raise CheckpointError(
            f"adapter '{folder}' was made for another base model "
            f"(fingerprint {str(meta.get('base_fingerprint'))[:12]}, "
            f"this model {base_fingerprint(model)[:12]}); load it onto the model it was trained from"
        )
    existing = dict(lora_modules(model))
    if not existing:
        missing = [n for n in names if n not in here]
        if missing:
            raise CheckpointError(f"adapter '{folder}' targets '{missing[0]}', which this model lacks")
        model.requires_grad_(False)
        _wrap(model, names, cfg)
        existing = dict(lora_modules(model))
    elif sorted(existing) != sorted(names) or any(m.rank != cfg.rank or m.alpha != cfg.alpha
                                                  for m in existing.values()):
        raise CheckpointError(f"model already has LoRA layers that differ from adapter '{folder}'; "
                              f"call remove_lora(model, merge=False) first")
    for n, m in existing.items():
        a, b = tensors.get(f"{n}.lora_A"), tensors.get(f"{n}.lora_B")
        if a is None or b is None or a.shape != m.lora_A.shape or b.shape != m.lora_B.shape:
            raise CheckpointError(f"'{folder / ADAPTER_WEIGHTS}' lacks or misshapes the tensors of '{n}'; "
                                  "the file is corrupt")
        merged = m.merged
        m.unmerge()
        with torch.no_grad():
            m.lora_A.copy_(a)
            m.lora_B.copy_(b)
        if merged:
            m.merge()
        m.lora_A.requires_grad_(True)
        m.lora_B.requires_grad_(True)
    return cfg
