"""`attnlab generate --num-beams`: beam search from the command line."""

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
