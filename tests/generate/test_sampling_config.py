"""SamplingConfig: the one place decoding options are validated, and how generate/stream take it."""

import dataclasses
import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.generate import SamplingConfig, SamplingError, generate, stream
from attnlab.generate.config import SEED_MAX


@pytest.mark.parametrize("field,value,needle", [
    ("temperature", math.nan, "finite number >= 0"),
    ("temperature", math.inf, "finite number >= 0"),
    ("temperature", -1.0, "finite number >= 0"),
    ("temperature", "0.5", "finite number >= 0"),
    ("top_k", -5, "integer >= 1 (0 = off)"),
    ("top_k", 2.5, "integer >= 1 (0 = off)"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"),
    ("top_p", math.nan, "(0, 1]"),
    ("seed", 10**23, f"0..{SEED_MAX}"),
    ("seed", 1e23, f"0..{SEED_MAX}"),
    ("seed", -1, f"0..{SEED_MAX}"),
    ("seed", True, f"0..{SEED_MAX}"),
    ("length_penalty", math.nan, "finite number"),
    ("length_penalty", -math.inf, "finite number"),
    ("max_new_tokens", 0, "integer >= 1"),
    ("max_new_tokens", 2.0, "integer >= 1"),
    ("num_beams", 0, ">= 1"),
    ("repetition_penalty", 0.0, "> 0"),
    ("repetition_penalty", math.nan, "> 0"),
    ("early_stopping", "sometimes", "True, False or 'never'"),
    ("stop", [[]], "non-empty list of token ids"),
    ("stop", [["a"]], "non-empty list of token ids"),
])
def test_bad_values_raise_one_line_naming_the_field(field, value, needle):
    with pytest.raises(SamplingError) as info:
        SamplingConfig(**{field: value})
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)  # ValueError: what generate() raised before
    assert err.field == field and str(err).startswith(field) and needle in str(err)
    assert "\n" not in str(err)


def test_good_values_are_kept_and_normalised():
    cfg = SamplingConfig(max_new_tokens=5, temperature=0, top_k=0, top_p=1, seed=SEED_MAX, stop=[[1, 2], (3,)])
    assert cfg.temperature == 0.0 and isinstance(cfg.temperature, float) and cfg.top_p == 1.0
    assert cfg.top_k == 0 and cfg.seed == SEED_MAX and cfg.stop == ((1, 2), (3,))
    assert SamplingConfig(top_k=None, top_p=None, seed=0).seed == 0
    hash(cfg)  # frozen and hashable


def test_replace_and_with_options_validate_again():
    cfg = SamplingConfig(temperature=0.7)
    assert cfg.with_options(top_k=5) == SamplingConfig(temperature=0.7, top_k=5)
    assert cfg.with_options() is cfg
    with pytest.raises(SamplingError, match="temperature"):
        dataclasses.replace(cfg, temperature=-0.1)
    with pytest.raises(SamplingError, match="top_p"):
        cfg.with_options(top_p=2.0)
    with pytest.raises(TypeError, match="unknown sampling option 'topk'"):
        cfg.with_options(topk=5)


def test_beam_options_checked_together():
    with pytest.raises(SamplingError, match="num_return_sequences must be between 1 and num_beams"):
        SamplingConfig(num_return_sequences=2)
    with pytest.raises(SamplingError, match="beam search is deterministic"):
        SamplingConfig(num_beams=2, temperature=0.5)
    with pytest.raises(SamplingError, match="not supported with beam search"):
        SamplingConfig(num_beams=2, stop=[[1]])
    assert SamplingConfig(num_beams=3, num_return_sequences=3, temperature=0.0).num_beams == 3


class Chain(torch.nn.Module):
    """A decoder-only LM whose next-token logits are a fixed table of the last token."""

    max_context = 50

    def __init__(self, vocab: int = 7):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(vocab, vocab, generator=g, dtype=torch.float64)  # (V, V)

    def forward(self, ids, cache=None):
        return self.table[ids]  # (B, T, V)

    def make_cache(self):
        return None


def test_generate_takes_a_config_or_keywords_alike():
    model, ids = Chain(), torch.tensor([[0, 3], [2, 5]])
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.9, top_k=4, top_p=0.8, seed=7)
    by_kwargs = generate(model, ids, 6, temperature=0.9, top_k=4, top_p=0.8, seed=7, use_cache=False)
    assert torch.equal(generate(model, ids, sampling=cfg, use_cache=False), by_kwargs)
    assert torch.equal(torch.stack(list(stream(model, ids, sampling=cfg, use_cache=False)), 1), by_kwargs[:, 2:])
    # keyword options replace the config's fields; the positional budget replaces max_new_tokens
    greedy = generate(model, ids, 3, sampling=cfg, temperature=0.0, use_cache=False)
    assert torch.equal(greedy, generate(model, ids, 3, temperature=0.0, use_cache=False))


def test_generate_refuses_bad_options_before_decoding():
    model, ids = Chain(), torch.tensor([[0]])
    for bad in ({"temperature": math.nan}, {"top_k": -5}, {"seed": 10**23}, {"length_penalty": math.nan}):
        with pytest.raises(SamplingError):
            generate(model, ids, 2, **bad)
        with pytest.raises(SamplingError):
            stream(model, ids, 2, **bad)
    with pytest.raises(SamplingError, match="max_new_tokens is required"):
        generate(model, ids)
    with pytest.raises(TypeError, match="unknown sampling option"):
        generate(model, ids, 2, temprature=0.5)
