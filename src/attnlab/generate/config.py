"""The decoding options shared by :func:`~attnlab.generate.generate`, :func:`~attnlab.generate.stream`,
the server and ``attnlab generate``, validated once.

    cfg = SamplingConfig(max_new_tokens=50, temperature=0.8, top_k=50, seed=1)
    generate(model, ids, sampling=cfg)                       # or generate(model, ids, 50, temperature=0.8, ...)
    dataclasses.replace(cfg, temperature=0.0)                # validated again

A bad value raises :class:`SamplingError` (a :class:`~attnlab.errors.ConfigError` and a
``ValueError``) whose one-line message names the field, what it must be and what it got.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from attnlab.errors import ConfigError

SEED_MAX = 2**63 - 1
"""The largest seed (``torch.Generator.manual_seed`` takes 0..2**63-1 portably)."""

EarlyStopping = bool | str
"""``True``, ``False`` or ``"never"`` (see :mod:`attnlab.generate.beam`)."""


class SamplingError(ConfigError, ValueError):
    """A decoding option out of range; ``field`` names it, the message starts with it.

    Args:
        field: the :class:`SamplingConfig` field.
        problem: what it must be and what it got (the message without the field name).
    """

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How to decode: greedy, sampled or by beam search (see :func:`~attnlab.generate.generate`).

    Attributes:
        max_new_tokens: tokens to add at most (>= 1), or None: the caller decides (``generate``
            needs it as an argument then; the CLI and the server fill the model's context, capped).
        temperature: softmax temperature, finite and >= 0; 0 is greedy (argmax).
        top_k: sample among the k most likely tokens (>= 1); None or 0: off.
        top_p: sample from the nucleus of probability mass p, in (0, 1]; None: off.
        seed: seeds sampling (0..2**63-1); None: torch's global generator.
        num_beams: beam search width (>= 1); 1 is greedy / sampling.
        length_penalty: beam search ranks by ``sum log p / n ** length_penalty`` (finite).
        early_stopping: when beam search stops a row: True, False or ``"never"``.
        num_return_sequences: best beams returned per row, 1..``num_beams``.
        repetition_penalty: CTRL penalty on tokens already in the row (finite, > 0; 1 is off).
        stop: token-id stop sequences, each non-empty (greedy / sampling only).

    Raises:
        SamplingError: a value of the wrong type or out of range, or sampling options
            (``top_k``, ``top_p``, a temperature other than 0 or 1, ``stop``) with ``num_beams > 1``.
    """

    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = True
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    stop: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and not (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1):
            raise SamplingError("max_new_tokens", f"must be an integer >= 1, got {self.max_new_tokens!r}")
        t = self.temperature
        if not (_is_number(t) and math.isfinite(t) and t >= 0):
            raise SamplingError("temperature", f"must be a finite number >= 0 (0 = greedy), got {t!r}")
        if self.top_k is not None and not (_is_int(self.top_k) and self.top_k >= 0):
            raise SamplingError("top_k", f"must be an integer >= 1 (0 = off), got {self.top_k!r}")
        p = self.top_p
        if p is not None and not (_is_number(p) and 0.0 < p <= 1.0):
            raise SamplingError("top_p", f"must be a number in (0, 1], got {p!r}")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed <= SEED_MAX):
            raise SamplingError("seed", f"must be an integer in 0..{SEED_MAX}, got {self.seed!r}")
        self._check_beams()
        r = self.repetition_penalty
        if not (_is_number(r) and math.isfinite(r) and r > 0):
            raise SamplingError("repetition_penalty", f"must be > 0 (1 = off, > 1 discourages repeats), got {r!r}")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", None if p is None else float(p))
        object.__setattr__(self, "length_penalty", float(self.length_penalty))
        object.__setattr__(self, "repetition_penalty", float(r))
        object.__setattr__(self, "stop", self._checked_stop())
        self._check_beam_compatible()

    def _check_beams(self) -> None:
        """``num_beams``, ``num_return_sequences``, ``early_stopping`` and ``length_penalty``."""
        es = self.early_stopping
        if not (isinstance(es, bool) or es == "never"):
            raise SamplingError("early_stopping", f"must be True, False or 'never', got {es!r}")
        if not (_is_int(self.num_beams) and self.num_beams >= 1):
            raise SamplingError("num_beams", f"must be >= 1, got {self.num_beams!r}")
        n = self.num_return_sequences
        if not (_is_int(n) and 1 <= n <= self.num_beams):
            raise SamplingError("num_return_sequences", f"must be between 1 and num_beams ({self.num_beams}), got "
                                f"{n!r}; raise num_beams to return more sequences")
        lp = self.length_penalty
        if not (_is_number(lp) and math.isfinite(lp)):
            raise SamplingError("length_penalty", f"must be a finite number (beam score = sum log p / "
                                f"length ** length_penalty), got {lp!r}")

    def _checked_stop(self) -> tuple[tuple[int, ...], ...]:
        """``stop`` as a tuple of non-empty tuples of token ids."""
        out = []
        for seq in self.stop or ():
            ids = list(seq) if isinstance(seq, (list, tuple)) else None
            if not ids or not all(_is_int(i) for i in ids):
                raise SamplingError("stop", f"sequences must each be a non-empty list of token ids, got {seq!r}")
            out.append(tuple(ids))
        return tuple(out)

    def _check_beam_compatible(self) -> None:
        """Beam search is deterministic and knows no stop sequences."""
        if self.num_beams == 1:
            return
        if self.stop:
            raise SamplingError("stop", "sequences are not supported with beam search; use num_beams=1 or "
                                "eos_token_id")
        if self.top_k is not None or self.top_p is not None or self.temperature not in (0.0, 1.0):
            raise SamplingError("num_beams", f"{self.num_beams}: beam search is deterministic: top_k, top_p and "
                                "temperature (other than 1) only apply to sampling; drop them or use num_beams=1")

    def with_options(self, **options: Any) -> SamplingConfig:
        """A copy with ``options`` (any field names) replaced, validated again.

        Raises:
            TypeError: an option that is not a field.
        """
        if not options:
            return self
        unknown = sorted(set(options) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown sampling option '{unknown[0]}'; the options are the fields of SamplingConfig: "
                            f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **options)


__all__ = ["SEED_MAX", "EarlyStopping", "SamplingConfig", "SamplingError"]
