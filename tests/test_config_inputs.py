"""Every numeric config field is range-checked: NaN and infinity are refused everywhere, negative counts too.

The fields are enumerated from the dataclasses, so a new numeric field without a range fails here.
"""

import dataclasses
import re
import typing

import pytest

from attnlab import config
from attnlab.config import AttentionConfig, DataConfig, ModelConfig, TrainConfig
from attnlab.errors import ConfigError
from attnlab.finetune.lora import LoRAConfig
from attnlab.finetune.recipe import TaskData, load_finetune_config
from attnlab.validation import FRACTION, POSITIVE, Range, check_range

SECTIONS = {"model": ModelConfig, "model.attention": AttentionConfig, "data": DataConfig, "train": TrainConfig}
SIGNED = {"train.seed"}  # any integer torch accepts as a seed


def _numeric_fields(cls: type, kind: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        if kind in args:
            out.append(f.name)
    return out


FLOATS = [f"{s}.{n}" for s, cls in SECTIONS.items() for n in _numeric_fields(cls, float)]
INTS = [f"{s}.{n}" for s, cls in SECTIONS.items() for n in _numeric_fields(cls, int) if f"{s}.{n}" not in SIGNED]


def test_the_fields_were_found():
    assert {"train.lr", "train.grad_clip", "model.dropout", "model.attention.softcap"} <= set(FLOATS)
    assert {"train.warmup_steps", "train.max_steps", "model.n_layer", "model.attention.window"} <= set(INTS)


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_field_refuses_nan_and_inf(key, value):
    with pytest.raises(ConfigError) as e:
        config.load("gpt-tiny", [f"{key}={value}"])
    assert str(e.value).startswith(f"{key} must be a finite number, got ") and "\n" not in str(e.value)


@pytest.mark.parametrize("key", INTS)
def test_every_int_field_refuses_minus_one(key):
    with pytest.raises(ConfigError) as e:
        config.load("gpt-tiny", [f"{key}=-1"])
    assert re.match(rf"{re.escape(key)}(\[0\])? must be .*, got -1; ", str(e.value)), str(e.value)


@pytest.mark.parametrize("override, needle", [
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
    ("data.max_eval=-1", "data.max_eval must be >= 0"),
    ("data.val_fraction=.nan", "data.val_fraction must be a finite number"),
    ("lora.alpha=.inf", "lora.alpha must be a finite number"),
    ("lora.dropout=.nan", "lora.dropout must be a finite number"),
])
def test_finetune_recipes_share_the_checks(override, needle):
    with pytest.raises(ConfigError) as e:
        load_finetune_config("sentiment-bow", "classify", [override])
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_finetune_sections_have_ranges():
    for cls in (TaskData, LoRAConfig):
        for name in _numeric_fields(cls, float):
            with pytest.raises(ConfigError, match="finite"):
                cls(**{name: float("nan")})


@pytest.mark.parametrize("override, needle", [
    ("options.max_value=.nan", "options.max_value must be a finite number, got nan; set a finite value, e.g. the "
                               "default options.max_value=16.0"),
    ("options.max_value=.inf", "options.max_value must be a finite number, got inf"),
])
def test_task_options_refuse_nan_too(override, needle):
    with pytest.raises(ConfigError) as e:
        load_finetune_config(None, "image-classify", [override])
    assert str(e.value) == needle or str(e.value).startswith(needle)


@pytest.mark.parametrize("override, needle", [
    ("model.dropout=.nan", "model.dropout must be a finite number"),
    ("model.n_layer=-1", "model.n_layer must be positive, got -1"),
    ("model.attention.softcap=.inf", "model.attention.softcap must be a finite number"),
])
def test_a_recipes_model_section_is_checked_when_read(override, needle):
    with pytest.raises(ConfigError) as e:
        load_finetune_config("sentiment-scratch", "classify", [override])
    assert str(e.value).startswith(needle)


def test_defaults_and_presets_pass():
    for cls in SECTIONS.values():
        cls()
    for name in config.list_presets():
        config.load(name)


def test_range_messages():
    with pytest.raises(ConfigError, match=r"^x must be positive, got 0; set a positive value, e.g. the default x=3$"):
        check_range("x", 0, POSITIVE, default=3)
    with pytest.raises(ConfigError, match=r"^p must be in \[0, 1\), got 1.0; set a value in \[0, 1\) or null$"):
        check_range("p", 1.0, FRACTION, default=None)
    with pytest.raises(ConfigError, match=r"must be in \(0, 0.5\)"):
        check_range("f", 0.7, Range(0, 0.5, low_open=True, high_open=True))
    check_range("x", None, POSITIVE)  # an unset optional field
    check_range("x", 10**30, Range(0))  # big ints are compared exactly, not as floats
