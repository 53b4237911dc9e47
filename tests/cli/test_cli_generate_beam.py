"""`attnlab generate --num-beams`: beam search from the command line."""

import pytest
import torch

from attnlab.cli import main
from attnlab.cli._common import load_for_inference
from attnlab.generate import generate


def test_beam_search_prints_the_best_beams(capsys, trained_run):
    code = main(["generate", str(trained_run), "--prompt", "ROMEO.", "--max-new-tokens", "8", "--num-beams", "3",
                 "--num-samples", "2"])
    assert code == 0
    out = capsys.readouterr().out
    parts = out.split("-" * 40 + "\n")
    assert len(parts) == 2 and all(p.startswith("ROMEO.") for p in parts)
    model, tok, _, _ = load_for_inference(str(trained_run), "cpu")
    ids = tok.encode("ROMEO.")
    best = generate(model, torch.tensor([ids]), 8, num_beams=3, eos_token_id=tok.eos_id, temperature=0.0)
    new = [t for t in best[0, len(ids):].tolist()]
    if tok.eos_id in new:
        new = new[: new.index(tok.eos_id)]
    assert parts[0] == tok.decode(ids + new) + "\n"


def test_more_samples_than_beams_is_refused(capsys, trained_run, one_line_error):
    code = main(["generate", str(trained_run), "--num-beams", "2", "--num-samples", "3"])
    one_line_error(capsys, code, "--num-beams")


@pytest.mark.parametrize("beams", ["1", "2"])
def test_stop_text_ends_the_output_before_it(capsys, trained_run, beams):
    args = ["generate", str(trained_run), "--prompt", "ROMEO.", "--max-new-tokens", "30", "--temperature", "0",
            "--num-beams", beams]
    assert main(args) == 0
    full = capsys.readouterr().out
    generated = full[len("ROMEO."):]
    assert len(generated) >= 6
    stop = generated[len(generated) // 2:len(generated) // 2 + 2]
    assert main(args + ["--stop", stop]) == 0
    cut = capsys.readouterr().out
    assert cut == "ROMEO." + generated[: generated.index(stop)] + "\n"
