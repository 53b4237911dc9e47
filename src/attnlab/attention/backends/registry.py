"""The backend registry and the ``"auto"`` choice.

:data:`BACKENDS` maps a name to a :class:`~attnlab.attention.backends.base.Backend`;
:func:`register_backend` adds one (the four built-in ones are registered here).

``auto`` decides per call, from the device, dtype, sequence lengths, mask kind, score
mod and whether weights or gradients are needed, by walking :data:`AUTO_RULES` in order:
the first rule that names a backend wins, and its name is the reason recorded in the
dispatch log (``"auto: " + name``, with the situation's facts filled in). In words:

1. ``eager`` when weights or top-k are requested (only it computes them).
2. A non-additive score mod (soft-capping): ``flex`` when Flex can serve (CUDA, or a
   long CPU forward without grad); ``chunked`` for long sequences otherwise; else ``eager``.
3. A decode step (Tq == 1): ``sdpa`` — a (1, Tk) dense mask is tiny and Flex would
   compile a kernel per cache length.
4. A structured predicate mask (``mask.key`` not None, not plain causal/full), an
   additive score mod, or a data-dependent predicate mask (``key`` None: it captures
   tensors, e.g. padding or document ids) on a long sequence: ``flex`` when it can serve
   and (on CUDA with a structured mask, or the sequence is long; a data-dependent mask takes
   Flex on CUDA only); ``chunked`` for long sequences Flex does not serve (CPU training, CPU
   data-dependent masks); otherwise ``sdpa`` with a dense mask/bias. (Flex rebuilds the
   block mask of a ``key``-None mask on every call.)
5. No mask, plain causal, short data-dependent predicate masks or dense tensor masks: ``sdpa``.

"Long" means Tq·Tk ≥ :data:`DENSE_LIMIT`, where a dense mask starts to cost real memory.
Flex is also skipped (rule 2/4) when its compile budget is spent (a new shape would
exceed dynamo's recompile limit). An explicit backend that cannot serve a request raises
a ValueError that names why; nothing silently falls back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from string import Formatter

import torch

from attnlab.attention.backends import chunked, eager, flex, sdpa
from attnlab.attention.backends.base import (
    BACKEND_METHODS,
    AttentionCall,
    Backend,
    is_preparing,
    note_prepared,
    record_dispatch,
)
from attnlab.attention.masks import Mask
from attnlab.errors import AttnlabError

BACKENDS: dict[str, Backend] = {}

DENSE_LIMIT = 1024 * 1024  # Tq·Tk from which a dense (Tq, Tk) mask is "long"


def register_backend(name: str, impl: Backend, *, replace: bool = False) -> None:
    """Make ``impl`` available as ``attention(..., backend=name)``.

    Args:
        name: the backend's name (not ``"auto"``).
        impl: an object (or module) with ``unsupported(call)``, ``prepare(call)`` and ``run(call)``.
        replace: allow replacing a backend already registered under ``name``.

    Raises:
        AttnlabError: ``name`` is ``"auto"`` or taken, or ``impl`` lacks one of the three methods.
    """
    if name == "auto" or not name:
        raise AttnlabError(f"'{name}' cannot name a backend ('auto' is the automatic choice); pick another name")
    if name in BACKENDS and not replace:
        raise AttnlabError(f"attention backend '{name}' is already registered; pass replace=True to replace it")
    missing = [m for m in BACKEND_METHODS if not callable(getattr(impl, m, None))]
    if missing:
        raise AttnlabError(f"backend '{name}' lacks {', '.join(missing)}; a backend implements "
                           f"{', '.join(BACKEND_METHODS)} (see attnlab.attention.backends.base.Backend)")
    BACKENDS[name] = impl


for _name, _impl in (("eager", eager), ("sdpa", sdpa), ("flex", flex), ("chunked", chunked)):
    register_backend(_name, _impl)


def is_structured(mask: object) -> bool:
    """A predicate mask Flex/chunked can exploit: hashable ``key``, not plain causal or full."""
    return isinstance(mask, Mask) and getattr(mask, "key", None) is not None and mask.kind not in ("causal", "full")


def _flex_blocker(call: AttentionCall) -> str | None:
    """Why auto should not pick Flex for ``call`` (None: it may)."""
    why = flex.unsupported(call)
    if why is None and not flex.is_known(call) and flex.compile_budget_left() <= 1:
        why = "flex compile budget spent (a new shape would hit dynamo's recompile limit)"
    return why


class Situation:
    """The facts about one call that the auto rules read (``why_not_flex`` is worked out on first use)."""

    def __init__(self, call: AttentionCall):
        self.call = call
        self.tq, self.tk = call.q.shape[-2], call.k.shape[-2]
        self.long = self.tq * self.tk >= DENSE_LIMIT
        self.cuda = call.q.device.type == "cuda"
        mod, mask = call.score_mod, call.mask
        self.non_additive = mod is not None and not mod.additive
        self.structured = is_structured(mask)
        self.data_mask = self.long and isinstance(mask, Mask) and mask.key is None  # dense: (B, 1, Tq, Tk)
        what = "structured mask" if self.structured else "data-dependent mask" if self.data_mask else None
        self.what = what if what is not None or mod is None else "additive score mod"
        self._why_not_flex: str | None = None
        self._why_known = False

    @property
    def why_not_flex(self) -> str | None:
        """Why Flex should not serve this call (None: it may)."""
        if not self._why_known:
            self._why_not_flex, self._why_known = self._flex_reason(), True
        return self._why_not_flex

    def _flex_reason(self) -> str | None:
        if self.non_additive:
            return _flex_blocker(self.call) if (self.cuda or self.long) else "short sequence"
        if self.data_mask and not self.cuda:  # its shapes vary per call (prompts, batches): not a compile per shape
            return "a data-dependent mask on CPU would compile Flex for every new shape"
        return _flex_blocker(self.call) if ((self.cuda and self.structured) or self.long) else "short sequence"

    def chunked_serves_long(self) -> bool:
        """Whether the sequence is long and the chunked backend can serve the call."""
        return self.long and chunked.unsupported(self.call) is None


@dataclass(frozen=True)
class Rule:
    """One line of the auto table: ``pick`` names a backend or None; ``name`` is the recorded reason.

    ``name`` may hold ``{fact}`` fields (``{what}``, ``{why_not_flex}``), filled in from the
    :class:`Situation` only when the rule decides.
    """

    name: str
    pick: Callable[[Situation], str | None]
    facts: tuple[str, ...] = field(init=False, default=())  # the facts named in ``name``, read once here

    def __post_init__(self) -> None:
        object.__setattr__(self, "facts", tuple(f for _, f, _, _ in Formatter().parse(self.name) if f))

    def reason(self, s: Situation) -> str:
        """``"auto: " + name`` with the situation's facts filled in (traceable by dynamo)."""
        if not self.facts:
            return f"auto: {self.name}"
        return f"auto: {self.name.format(**{f: getattr(s, f) for f in self.facts})}"


def _when(cond: Callable[[Situation], bool], backend: str) -> Callable[[Situation], str | None]:
    """A rule body: ``backend`` when ``cond(situation)`` holds, else None."""
    return lambda s: backend if cond(s) else None


AUTO_RULES: list[Rule] = [
    Rule("weights requested", _when(lambda s: s.call.return_weights, "eager")),
    Rule("top-k needs eager", _when(lambda s: s.call.topk is not None, "eager")),
    Rule("non-additive score mod on flex", _when(lambda s: s.non_additive and s.why_not_flex is None, "flex")),
    Rule("non-additive score mod, long sequence, not flex: {why_not_flex}",
         _when(lambda s: s.non_additive and s.chunked_serves_long(), "chunked")),
    Rule("non-additive score mod, short sequence", _when(lambda s: s.non_additive, "eager")),
    Rule("decode step, tiny dense mask", _when(lambda s: s.tq == 1, "sdpa")),
    Rule("{what} on flex", _when(lambda s: s.what is not None and s.why_not_flex is None, "flex")),
    Rule("{what}, long sequence, not flex: {why_not_flex}",
         _when(lambda s: s.what is not None and s.chunked_serves_long(), "chunked")),
    Rule("{what} as dense mask/bias, short sequence", _when(lambda s: s.what is not None, "sdpa")),
    Rule("no mask, fused kernel", _when(lambda s: s.call.mask is None, "sdpa")),
    Rule("causal, fused kernel",
         _when(lambda s: isinstance(s.call.mask, Mask) and s.call.mask.kind == "causal", "sdpa")),
    Rule("data-dependent mask as dense mask, short sequence",
         _when(lambda s: isinstance(s.call.mask, Mask) and s.call.mask.key is None, "sdpa")),
    Rule("dense mask", _when(lambda s: True, "sdpa")),
]


_BUILTIN_RULES = tuple(AUTO_RULES)


class AutoState:
    """``auto``'s answers for plain calls (see :func:`_plain_key`) under the built-in table,
    by (decode step, no mask); ``reset()`` forgets them."""

    def __init__(self) -> None:
        self.plain: dict[tuple[bool, bool], tuple[str, str]] = {}

    def reset(self) -> None:
        self.plain.clear()


STATE = AutoState()


def _plain_key(call: AttentionCall) -> tuple[bool, bool] | None:
    """A key under which ``auto``'s answer for ``call`` can be reused, or None (walk the table).

    Under the built-in table a plain call (no mask or the built-in causal one, no score mod, no
    weights, no top-k) reads no fact but "Tq == 1" and "no mask": the other facts (flex's compile
    budget, sequence length, mask predicates, device) matter to rules a plain call never reaches.
    A changed :data:`AUTO_RULES` (a rule added or removed) always walks the table.
    """
    mask = call.mask
    if call.score_mod is not None or call.return_weights or call.topk is not None:
        return None
    if mask is not None and not (isinstance(mask, Mask) and mask.kind == "causal" and mask.key == ("causal",)):
        return None
    if tuple(AUTO_RULES) != _BUILTIN_RULES:
        return None
    return call.q.shape[-2] == 1, mask is None


def auto(call: AttentionCall) -> tuple[str, str]:
    """The first rule of :data:`AUTO_RULES` that names a backend: ``(name, reason)``.

    The answer for a plain call (:func:`_plain_key`) is worked out from the table once and reused:
    walking the table costs more than the rest of a small forward's attention plumbing.
    """
    key = None if torch.compiler.is_compiling() else _plain_key(call)
    if key is None:
        return _walk(call)
    hit = STATE.plain.get(key)
    if hit is None:
        hit = STATE.plain[key] = _walk(call)
    return hit


def _walk(call: AttentionCall) -> tuple[str, str]:
    """Walk :data:`AUTO_RULES` for ``call``: the first rule that names a backend decides."""
    s = Situation(call)
    for rule in AUTO_RULES:
        name = rule.pick(s)
        if name is not None:
            return name, rule.reason(s)
    raise AssertionError("the last auto rule always matches")


def choose(call: AttentionCall, backend: str = "auto") -> tuple[str, str]:
    """Pick the backend for ``call``.

    Args:
        call: what to compute.
        backend: ``"auto"`` or one of :data:`BACKENDS`.

    Returns:
        ``(name, reason)``; for auto the reason names the rule that decided.

    Raises:
        ValueError: unknown backend, or an explicit backend that cannot serve the call.
    """
    if backend == "auto":
        return auto(call)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend '{backend}'; choose one of auto, {', '.join(BACKENDS)}")
    why = BACKENDS[backend].unsupported(call)
    if why:
        raise ValueError(f"attention backend '{backend}' cannot serve this call: {why}")
    return backend, "requested"


def run(call: AttentionCall, backend: str = "auto") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Choose a backend, record the choice, run it."""
    name, reason = choose(call, backend)
    record_dispatch(name, reason, call)
    impl = BACKENDS[name]
    if is_preparing():  # prepare_masks: build the backend's per-shape caches, skip the math
        note_prepared(name, reason, call)
        impl.prepare(call)
        out = call.q.new_zeros(*call.q.shape[:-1], call.v.shape[-1])  # (B, H, Tq, Dv)
        if call.return_weights:
            return out, call.q.new_zeros(*call.q.shape[:-1], call.k.shape[-2])  # (B, H, Tq, Tk)
        return out
    return impl.run(call)
