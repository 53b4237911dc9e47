"""Which GELU runs where: our presets use the exact (erf) GELU; GPT-2 import/export keeps the tanh form."""

import os

import pytest
import torch

from attnlab.config import list_presets, load
from attnlab.interop import hf
from attnlab.interop.export import _gpt2_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Presets whose MLP is a GELU: none of them loads GPT-2's weights, so none needs the (3x slower on CPU) tanh form.
EXACT_GELU_PRESETS = ["gpt-tiny", "gpt-tiny-window", "gpt2-124m", "gpt2-124m-32k", "poetry-tiny", "bert-tiny",
                      "minilm-l6", "vit-tiny"]


@pytest.mark.parametrize("name", EXACT_GELU_PRESETS)
def test_presets_use_exact_gelu(name):
    assert load(name).model.mlp == "gelu_exact"


def test_no_preset_uses_tanh_gelu():
    assert [p for p in list_presets() if load(p).model.mlp in ("gelu", "geglu")] == []


def test_gpt2_import_maps_tanh_names_to_tanh_mlp_and_export_round_trips():
    assert hf._GPT2_ACTS["gelu_new"] == "gelu" and hf._GPT2_ACTS["gelu_pytorch_tanh"] == "gelu"
    tanh_cfg = load("gpt-tiny", ["model.mlp=gelu", "model.vocab_size=64"]).model
    exact_cfg = load("gpt-tiny", ["model.vocab_size=64"]).model
    assert hf._GPT2_ACTS[_gpt2_config(tanh_cfg)["activation_function"]] == "gelu"
    assert _gpt2_config(exact_cfg)["activation_function"] == "gelu"  # HF's "gelu" is the exact erf GELU


def test_gpt2_import_default_activation_is_tanh(tiny_hf):
    pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")
    torch.manual_seed(0)
    ours = hf.from_hf(tiny_hf("gpt2"))  # GPT-2's default activation_function is "gelu_new" (tanh)
    assert ours.config.mlp == "gelu"
