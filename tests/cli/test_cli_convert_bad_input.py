"""`attnlab convert` of a broken Hugging Face folder: one line on stderr, exit 2, no traceback, nothing written.

The folders are written by hand (no ``transformers`` needed): a GPT-2 ``config.json`` beside a
``pytorch_model.bin`` of random bytes, a garbage ``config.json``, or a pickle that holds more
than plain tensors (one that would run code if it were unpickled unsafely).
"""

import json
import os
import random

import pytest
import torch

from attnlab.cli import main

GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 64, "n_embd": 32, "n_layer": 1,
        "n_head": 2, "n_positions": 32}


class RunsCode:
    """Unpickled unsafely, this would create the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def hf_folder(tmp_path, config=GPT2, weights=None):
    src = tmp_path / "hf"
    src.mkdir()
    raw = config if isinstance(config, bytes) else (config if isinstance(config, str) else json.dumps(config)).encode()
    (src / "config.json").write_bytes(raw)
    if weights is None:
        torch.save({"transformer.wte.weight": torch.zeros(64, 32)}, src / "pytorch_model.bin")
    else:
        weights(src / "pytorch_model.bin")
    return src


def convert_fails(capsys, one_line_error, tmp_path, src, needle):
    out = tmp_path / "out"
    line = one_line_error(capsys, main(["convert", str(src), str(out)]), needle)
    assert not out.exists(), "nothing may be written"
    return line


def test_random_bytes_as_pytorch_model_bin(capsys, tmp_path, one_line_error):
    src = hf_folder(tmp_path, weights=lambda p: p.write_bytes(random.Random(0).randbytes(4096)))
    line = convert_fails(capsys, one_line_error, tmp_path, src, "pytorch_model.bin' cannot be read as PyTorch weights")
    assert "not a pickle of tensors" in line


def test_truncated_pytorch_model_bin(capsys, tmp_path, one_line_error):
    def half(p):
        torch.save({"transformer.wte.weight": torch.zeros(64, 32)}, p)
        p.write_bytes(p.read_bytes()[:1000])

    src = hf_folder(tmp_path, weights=half)
    convert_fails(capsys, one_line_error, tmp_path, src, "cannot be read as PyTorch weights")


@pytest.mark.parametrize("config, needle", [
    ("{not json at all", "config.json' is not valid JSON"),
    (b"\xff\xfe\x00 not text", "config.json' is not valid JSON ('utf-8' codec"),
    ("[1, 2, 3]", "config.json' holds a JSON list, not a model config object"),
    ({**GPT2, "n_embd": "wide"}, "gpt2 config.json has a value of the wrong type"),
    ({**GPT2, "model_type": ["gpt2"]}, "model_type '['gpt2']' is not supported"),
])
def test_garbage_config_json(capsys, tmp_path, one_line_error, config, needle):
    convert_fails(capsys, one_line_error, tmp_path, hf_folder(tmp_path, config=config), needle)


def test_pickle_holding_more_than_tensors_is_refused(capsys, tmp_path, one_line_error):
    marker = tmp_path / "code-ran"
    src = hf_folder(tmp_path, weights=lambda p: torch.save({"transformer.wte.weight": torch.zeros(64, 32),
                                                            "payload": RunsCode(marker)}, p))
    line = convert_fails(capsys, one_line_error, tmp_path, src, "cannot be read as PyTorch weights")
    assert "holds more than plain tensors" in line and "makedirs" in line
    assert not marker.exists(), "the pickle's code must not run"


def test_pickle_of_something_else_than_a_weight_map(capsys, tmp_path, one_line_error):
    src = hf_folder(tmp_path, weights=lambda p: torch.save([torch.zeros(2)], p))
    convert_fails(capsys, one_line_error, tmp_path, src, "does not hold a map of weight names to tensors")
