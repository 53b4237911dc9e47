"""The CLI end to end, and every user error: one line, non-zero exit, nothing overwritten."""

import pytest

from attnlab.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "generate", "tokenizer", "viz", "bench"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["train", "eval", "generate", "tokenizer", "viz", "bench"])
def test_each_subcommand_has_help(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


def test_unknown_config_key_suggests_closest(capsys, tmp_path, one_line_error):
    code = main(["train", "gpt-tiny", "train.max_step=3", f"train.out_dir={tmp_path}/r"])
    one_line_error(capsys, code, "unknown config key 'train.max_step' (did you mean 'max_steps'?)")
    assert not (tmp_path / "r").exists()


def test_wrong_type(capsys, one_line_error):
    code = main(["train", "gpt-tiny", "model.n_layer=four"])
    one_line_error(capsys, code, "model.n_layer must be an integer, got 'four'")


def test_missing_config_file(capsys, tmp_path, one_line_error):
    code = main(["train", str(tmp_path / "missing.yaml")])
    one_line_error(capsys, code, "not found")


def test_missing_data_source(capsys, tmp_path, one_line_error):
    code = main(["train", "gpt-tiny", f"data.source={tmp_path}/no-such-text.txt", f"train.out_dir={tmp_path}/r"])
    one_line_error(capsys, code, "no-such-text.txt")


def test_missing_checkpoint(capsys, tmp_path, one_line_error):
    one_line_error(capsys, main(["generate", str(tmp_path / "nope"), "--prompt", "x"]), "not found")
    one_line_error(capsys, main(["eval", str(tmp_path)]), "no checkpoint")


def test_prompt_longer_than_context(capsys, trained_run, one_line_error):
    code = main(["generate", str(trained_run), "--prompt", "To be, or not to be " * 40, "--max-new-tokens", "5"])
    line = one_line_error(capsys, code, "but the model's context is 64 tokens")
    assert "shorten the prompt" in line


def test_resume_with_other_architecture(capsys, trained_run, tiny_overrides, one_line_error):
    ckpts = sorted((trained_run / "checkpoints").iterdir())
    code = main(["train", "gpt-tiny", *tiny_overrides(trained_run, **{"model.n_layer": 3, "train.max_steps": 40}),
                 "--resume"])
    one_line_error(capsys, code, "different model (model.n_layer: 2 there, 3 now)")
    assert sorted((trained_run / "checkpoints").iterdir()) == ckpts


def test_train_again_without_resume_refused(capsys, trained_run, tiny_overrides, one_line_error):
    metrics = (trained_run / "metrics.jsonl").read_bytes()
    code = main(["train", "gpt-tiny", *tiny_overrides(trained_run)])
    one_line_error(capsys, code, "pass --resume to continue it")
    assert (trained_run / "metrics.jsonl").read_bytes() == metrics


def test_generate_and_eval_work(capsys, trained_run):
    assert main(["generate", str(trained_run), "--prompt", "HAMLET.", "--max-new-tokens", "20", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("HAMLET.") and len(first) > len("HAMLET.") + 5
    assert main(["generate", str(trained_run), "--prompt", "HAMLET.", "--max-new-tokens", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # seeded: reproducible
    assert main(["eval", str(trained_run), "--json", "--batches", "3"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 30 and 0 < res["bpb"] < 8 and res["ppl"] > 1


def test_subprocess_exit_code_and_no_traceback(run_cli):
    r = run_cli("train", "gpt-tiny", "train.bacth_size=3")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == ("attnlab train: error: unknown config key 'train.bacth_size' "
                                "(did you mean 'batch_size'?)")


def test_train_refuses_an_objective_that_does_not_fit_the_arch(capsys, tmp_path, one_line_error):
    code = main(["train", "bert-tiny", "train.objective=clm", f"train.out_dir={tmp_path}/r"])
    one_line_error(capsys, code, "train.objective=clm needs model.arch=decoder, but model.arch=encoder")
    assert not (tmp_path / "r").exists()


def test_disk_full_is_one_line(monkeypatch, capsys):
    import errno

    from attnlab import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(full))
    assert cli.main(["train", "gpt-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device ('/runs/x/metrics.jsonl'); free disk space" in err


def _parser_running(func):
    import argparse

    parser = argparse.ArgumentParser(prog="attnlab")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("config")
    p.set_defaults(func=func)
    return parser
