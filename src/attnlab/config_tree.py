"""From a plain YAML tree to typed config dataclasses: type checks, dotted overrides, helpful errors.

:func:`from_dict` builds any config dataclass (a :class:`attnlab.config.Config`, a fine-tuning
recipe, a task's options) from a nested dict, checking each name (with the closest valid one
for a typo) and type; :func:`set_dotted` and :func:`parse_override` apply ``section.key=value``
overrides; :func:`read_yaml_mapping` reads a config file that must hold a mapping.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from attnlab.errors import ConfigError, did_you_mean
from attnlab.validation import FINITE, check_range


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int→float and a single value for a list. Raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]  # one value: a one-item list
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(items)]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}"
                + (did_you_mean(value, map(str, choices)) if isinstance(value, str) else "")
            )
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking names and types recursively.

    Raises:
        ConfigError: on an unknown key (with the closest valid name), a wrong type, or NaN/infinity.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{did_you_mean(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
            _refuse_nonfinite(cls, key, kwargs[key], path)
    return cls(**kwargs)


def _refuse_nonfinite(cls: type, key: str, value: Any, path: str) -> None:
    """NaN and infinity are refused in every config dataclass, with the field's own range where it declares one."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
        check_range(path, value, getattr(cls, "_RANGES", {}).get(key, FINITE), default)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted="a.b"``, creating empty (or ``null``) sections on the way.

    Raises:
        ConfigError: a part of the path is a value, not a section.
    """
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
        node = nxt
    node[keys[-1]] = value


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """The YAML mapping in ``path`` (an empty file gives ``{}``).

    Raises:
        ConfigError: the file is not valid YAML, or its top level is a list or a scalar.
    """
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        kind = "a list" if isinstance(tree, list) else f"a single value ({type(tree).__name__})"
        raise ConfigError(f"{what} '{path}' holds {kind} at its top level; it must be a mapping of sections "
                          "such as 'train:' and 'model:'")
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"train.lr=3e-4"`` into ``("train.lr", 3e-4)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. train.max_steps=200")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads "3e-4" as a string; accept it as a float.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") and value.strip() else value
        except ValueError:
            pass
    return key.strip(), value
