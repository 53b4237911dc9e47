"""`attnlab generate` / `attnlab eval` on encoder and encoder–decoder checkpoints."""

import json

import pytest

from attnlab.cli import main


def test_generate_refuses_an_encoder(capsys, trained_archs, one_line_error):
    code = main(["generate", str(trained_archs["bert-tiny"]), "--prompt", "ROMEO."])
    one_line_error(capsys, code, "does not generate text")


@pytest.mark.parametrize("beams", ["1", "2"])
def test_generate_from_an_encoder_decoder(capsys, trained_archs, beams):
    code = main(["generate", str(trained_archs["t5-tiny"]), "--prompt", "ROMEO. What", "--max-new-tokens", "5",
                 "--temperature", "0", "--num-beams", beams])
    assert code == 0
    out = capsys.readouterr().out
    assert out.strip() and not out.startswith("ROMEO. What")  # the source is not echoed


@pytest.mark.parametrize("preset,objective", [("bert-tiny", "mlm"), ("t5-tiny", "span")])
def test_eval_reports_the_objective_loss(capsys, trained_archs, preset, objective):
    code = main(["eval", str(trained_archs[preset]), "--batches", "2", "--batch-size", "2", "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 < res["loss"] < 20.0
    assert res["objective"] == objective and "ppl" not in res
