"""Evaluating beyond the training length: RoPE scaling chosen at load time (``attnlab eval --rope-scaling``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from attnlab.cli import main
from attnlab.config import ModelConfig
from attnlab.data import prepare
from attnlab.errors import AttnlabError
from attnlab.eval import evaluate_lm
from attnlab.eval.context import extend_context, extend_model, rope_label
from attnlab.models import build
from attnlab.train.checkpoint import load_checkpoint, load_model

EVAL = ["--json", "--batches", "2", "--batch-size", "2"]


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory, trained_run):
    """The tiny run of ``trained_run`` (block_size 64, seq_len 32) retrained with RoPE positions."""
    from attnlab.train import train

    cfg = load_checkpoint(trained_run).config
    out = tmp_path_factory.mktemp("rope") / "run"
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, position="rope"),
                              train=dataclasses.replace(cfg.train, out_dir=str(out), max_steps=20))
    train(cfg, progress=False, log=lambda s: None)
    return out


def _eval(capsys, run, *args: str) -> dict:
    assert main(["eval", str(run), *EVAL, *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_at_twice_the_block_size_with_each_scaling(capsys, rope_run):
    block = load_checkpoint(rope_run).config.model.block_size
    n = str(2 * block)
    plain = _eval(capsys, rope_run, "--seq-len", n)  # RoPE extrapolates without any option
    none = _eval(capsys, rope_run, "--seq-len", n, "--rope-scaling", "none")
    linear = _eval(capsys, rope_run, "--seq-len", n, "--rope-scaling", "linear", "--rope-factor", "2")
    ntk = _eval(capsys, rope_run, "--seq-len", n, "--rope-scaling", "ntk", "--rope-factor", "2")
    for r in (plain, none, linear, ntk):
        assert math.isfinite(r["loss"]) and r["seq_len"] == 2 * block and r["tokens"] == 2 * 2 * 2 * block
    assert plain["loss"] == none["loss"] and (none["rope_scaling"], none["rope_factor"]) == ("none", 1.0)
    assert (linear["rope_scaling"], linear["rope_factor"], ntk["rope_scaling"]) == ("linear", 2.0, "ntk")
    assert linear["loss"] != none["loss"] and ntk["loss"] != none["loss"] and ntk["loss"] != linear["loss"]


def test_text_output_states_the_scaling(capsys, rope_run):
    assert main(["eval", str(rope_run), "--batches", "1", "--seq-len", "128", "--rope-scaling", "ntk",
                 "--rope-factor", "2"]) == 0
    out = capsys.readouterr().out
    assert "seq_len 128, rope_scaling ntk x2" in out and "perplexity" in out


def test_at_the_training_length_ntk_x1_is_none_and_ntk_x2_is_not(rope_run):
    model, ckpt = load_model(rope_run)
    data = prepare(ckpt.config.data, progress=False)
    seq_len = ckpt.config.train.seq_len

    def loss(m):
        with torch.no_grad():
            return evaluate_lm(m, data, split="val", batch_size=2, seq_len=seq_len, max_batches=2)["loss"]

    assert extend_model(model, seq_len) is model  # nothing to change: the same model
    base = loss(model)
    assert loss(extend_model(model, seq_len, "ntk", 1.0)) == base
    assert loss(extend_model(model, seq_len, "none")) == base
    assert loss(extend_model(model, seq_len, "ntk", 2.0)) != base  # NTK changes the base at every length


def test_weights_load_unchanged_and_table_length_does_not_matter():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16, position="rope")
    model = build(cfg).eval()
    longer = extend_model(model, 64, "linear", 2.0)
    assert longer.config.block_size == 64 and rope_label(longer.config) == "linear x2"
    assert not longer.training and longer.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(t, longer.state_dict()[k]) for k, t in model.state_dict().items())
    # The tables' values do not depend on their length: a model built with the shortest
    # block_size that reaches 64 tokens (32 x 2) computes the same logits.
    shortest = build(dataclasses.replace(cfg, block_size=32, rope_scaling="linear", rope_scaling_factor=2.0)).eval()
    shortest.load_state_dict(model.state_dict())
    ids = torch.randint(0, 50, (2, 64))
    with torch.no_grad():
        assert torch.equal(longer(ids), shortest(ids))


@pytest.mark.parametrize("position", ["sinusoidal", "alibi", "relative", "none"])
def test_computed_positions_extend_without_scaling(position):
    cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16, position=position)
    longer = extend_model(build(cfg), 40)
    assert longer.config.block_size == 40 and rope_label(longer.config) is None
    with torch.no_grad():
        assert longer(torch.randint(0, 50, (1, 40))).shape == (1, 40, 50)


def test_the_checkpoint_scaling_is_kept_unless_replaced():
    cfg = ModelConfig(block_size=16, n_head=2, d_model=16, position="rope", rope_scaling="ntk", rope_scaling_factor=4.0)
    assert extend_context(cfg, 16) is cfg
    assert rope_label(extend_context(cfg, 64)) == "ntk x4"
    assert rope_label(extend_context(cfg, 64, "linear", 2)) == "linear x2"
    assert rope_label(extend_context(cfg, 16, "none")) == "none"


@pytest.mark.parametrize(("kw", "needle"), [
    ({"scaling": "linear"}, "RoPE scaling 'linear' needs a factor"),
    ({"scaling": "ntk", "factor": 0.5}, "factor must be >= 1, got 0.5"),
    ({"scaling": "none", "factor": 2.0}, "needs scaling linear or ntk, not none"),
    ({"scaling": "ntx", "factor": 2.0}, "unknown RoPE scaling 'ntx' (did you mean 'ntk'?)"),
    ({"factor": 2.0}, "needs a scaling kind"),
])
def test_bad_scaling_is_refused(kw, needle):
    cfg = ModelConfig(block_size=16, n_head=2, d_model=16, position="rope")
    with pytest.raises(AttnlabError, match=re.escape(needle)):
        extend_context(cfg, 32, **kw)


def test_learned_positions_cannot_extend(capsys, trained_run, one_line_error):
    line = one_line_error(capsys, main(["eval", str(trained_run), *EVAL, "--seq-len", "128"]),
                          "learned positions cannot extend beyond the 64 positions")
    assert "lower the sequence length to <= 64" in line and "model.position=rope" in line
    assert main(["eval", str(trained_run), *EVAL, "--seq-len", "64"]) == 0  # up to block_size is fine
    res = json.loads(capsys.readouterr().out)
    assert res["seq_len"] == 64 and "rope_scaling" not in res


@pytest.mark.parametrize(("args", "needle"), [
    (["--rope-scaling", "linear", "--rope-factor", "2"], "RoPE scaling applies to models with position 'rope', "
                                                         "this one has position 'learned'"),
    (["--rope-scaling", "none"], "this one has position 'learned'"),
    (["--rope-factor", "2"], "--rope-factor needs --rope-scaling linear or ntk"),
])
def test_cli_refuses_rope_options_that_do_not_apply(capsys, trained_run, one_line_error, args, needle):
    one_line_error(capsys, main(["eval", str(trained_run), *EVAL, *args]), needle)


def test_cli_needs_a_factor_for_linear(capsys, rope_run, one_line_error):
    one_line_error(capsys, main(["eval", str(rope_run), *EVAL, "--rope-scaling", "linear"]), "needs a factor")


def test_fine_tuned_models_refuse_rope_options(capsys, tmp_path, one_line_error):
    (tmp_path / "task.json").write_text("{}")  # what marks a fine-tuned folder; refused before it is read
    one_line_error(capsys, main(["eval", str(tmp_path), "--rope-scaling", "ntk", "--rope-factor", "2"]),
                   "apply to pretraining runs")
