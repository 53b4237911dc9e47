"""Range checks of numeric config fields, in one place.

Each config dataclass lists its numeric fields with the range they must lie in and
calls :func:`check_ranges` from ``__post_init__``. Every number is checked to be finite
(NaN or infinity is refused) before its range, so a comparison with NaN can never
slip through. The error is one line naming the field, the allowed range and the fix::

    @dataclass
    class TrainConfig:
        lr: float = 6e-4
        _RANGES: ClassVar = {"lr": POSITIVE}

        def __post_init__(self) -> None:
            check_ranges(self, "train", self._RANGES)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attnlab.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """An interval of allowed values.

    Attributes:
        low: lower bound (``None``: unbounded).
        high: upper bound (``None``: unbounded).
        low_open: ``low`` itself is not allowed.
        high_open: ``high`` itself is not allowed.
        note: what a special value means, added to the error (e.g. ``"0 disables clipping"``).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def contains(self, value: float) -> bool:
        """Whether ``value`` is finite and inside the interval."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """The interval in words: ``"positive"``, ``">= 0"``, ``"in [0, 1)"``."""
        if self.low == 0 and self.low_open and self.high is None:
            return "positive"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "a finite number"

    def with_note(self, note: str) -> Range:
        """The same interval with a note on its special value."""
        return dataclasses.replace(self, note=note)


POSITIVE = Range(0, low_open=True)
"""``> 0``."""
NON_NEGATIVE = Range(0)
"""``>= 0``."""
FRACTION = Range(0, 1, high_open=True)
"""``[0, 1)``: a probability that may be zero but not one (dropout, momentum, betas)."""
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)
"""``(0, 1)``."""
FINITE = Range()
"""Any finite number."""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_range(where: str, value: Any, rng: Range, default: Any = dataclasses.MISSING) -> None:
    """Raise :class:`ConfigError` unless ``value`` (a number, or a list of numbers) lies in ``rng``.

    Args:
        where: the field's dotted name, e.g. ``"train.lr"``.
        value: the value; ``None`` (an optional field left unset) always passes.
        rng: the allowed interval.
        default: the field's default, suggested in the fix when it is a number.
    """
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_range(f"{where}[{i}]", v, rng)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or rng.contains(value):
        return
    desc = rng.describe()
    nouns = {"positive": "a positive value", FINITE.describe(): "a finite value"}
    fix = f"; set {nouns.get(desc, f'a value {desc}')}"
    if isinstance(default, (int, float)) and not isinstance(default, bool) and rng.contains(default):
        fix += f", e.g. the default {where}={default}"
    elif default is None:
        fix += " or null"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}{fix}")
    note = f" ({rng.note})" if rng.note else ""
    raise ConfigError(f"{where} must be {desc}{note}, got {value}{fix}")


def check_ranges(obj: Any, section: str, ranges: Mapping[str, Range]) -> None:
    """Check each field of dataclass ``obj`` named in ``ranges`` (see :func:`check_range`).

    Args:
        obj: a config dataclass instance.
        section: its dotted prefix in error messages (``"train"``, ``"model.attention"``).
        ranges: field name → allowed interval.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for name, rng in ranges.items():
        check_range(f"{section}.{name}", getattr(obj, name), rng, defaults.get(name, dataclasses.MISSING))
