"""`attnlab convert`: attnlab run → Hugging Face folder → attnlab run, same logits and text."""

import os

import pytest
import torch

from attnlab.cli import main
from attnlab.data import Tokenizer
from attnlab.train import train
from attnlab.train.checkpoint import load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install attnlab[hf])")


@pytest.fixture
def gpt2_layout_run(tmp_path, tiny_cfg):
    """A tiny trained GPT with biases, i.e. expressible in the GPT-2 layout."""
    run = tmp_path / "run"
    train(tiny_cfg(run, **{"model.bias": True, "train.max_steps": 20}), progress=False, log=lambda s: None)
    return run


def ref_config_eos(hf_dir):
    return transformers.AutoConfig.from_pretrained(hf_dir).eos_token_id


def test_round_trip_keeps_logits_and_generated_text(capsys, tmp_path, gpt2_layout_run):
    trained_run = gpt2_layout_run
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert main(["convert", str(trained_run), str(hf_dir), "--max-shard-size", "50KB"]) == 0
    assert (hf_dir / "config.json").is_file() and (hf_dir / "model.safetensors.index.json").is_file()
    assert len(list(hf_dir.glob("model-*-of-*.safetensors"))) > 1
    ours, ckpt = load_model(trained_run)
    tok = Tokenizer.load(ckpt.tokenizer_file)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok.encode("ROMEO. Wherefore art thou?") == tok.encode("ROMEO. Wherefore art thou?")
    assert hf_tok.eos_token_id == tok.eos_id == ref_config_eos(hf_dir)
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, ours(ids), atol=1e-4, rtol=0)

    assert main(["convert", str(hf_dir), str(back)]) == 0
    capsys.readouterr()
    texts = []
    for run in (trained_run, back):
        assert main(["generate", str(run), "--prompt", "ROMEO.", "--max-new-tokens", "12", "--temperature", "0"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("ROMEO.")


def test_existing_output_or_missing_source_is_one_line(capsys, tmp_path, trained_run, one_line_error):
    one_line_error(capsys, main(["convert", str(trained_run), str(tmp_path)]), "already exists")
    one_line_error(capsys, main(["convert", str(trained_run), str(tmp_path / "o"), "--max-shard-size", "big"]),
                   "max_shard_size='big' is not a size")
    one_line_error(capsys, main(["convert", str(tmp_path / "nope"), str(tmp_path / "o")]), "not found")


def test_a_config_the_layout_cannot_hold_is_refused(capsys, tmp_path, trained_run, one_line_error):
    # gpt-tiny has no biases, which the GPT-2 layout always has
    one_line_error(capsys, main(["convert", str(trained_run), str(tmp_path / "hf")]), "model.bias=False")
    assert not (tmp_path / "hf").exists()  # nothing half-written
