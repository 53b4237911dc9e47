"""Bad inputs a new user tries (one line, exit 2, nothing written) and CLI-wide habits (--version, --help)."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import attnlab
from attnlab.cli import SUBCOMMANDS, build_parser, main
from attnlab.cli._common import plain_text, shows_default

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, so that 'nothing written' can be checked on the whole folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _written(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("text, needle", [
    ("- a\n- b\n", "holds a list at its top level; it must be a mapping"),
    ("3\n", "holds a single value (int) at its top level"),
    ("just some words\n", "holds a single value (str) at its top level"),
])
def test_config_whose_top_level_is_not_a_mapping(capsys, in_tmp, one_line_error, text, needle):
    (in_tmp / "cfg.yaml").write_text(text)
    one_line_error(capsys, main(["train", "cfg.yaml", "train.out_dir=run"]), needle)
    assert _written(in_tmp, {"cfg.yaml"}) == []


@pytest.mark.parametrize("override, needle", [
    ("train.lr=.nan", "train.lr must be a finite number, got nan; set a positive value, e.g. the default train.lr="),
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.lr=-.inf", "train.lr must be a finite number, got -inf"),
    ("train.lr=nan", "train.lr must be a finite number, got 'nan'"),
    ("train.lr=-Infinity", "train.lr must be a finite number, got '-Infinity'"),
    ("train.lr=0", "train.lr must be positive, got 0"),
    ("train.warmup_steps=-1", "train.warmup_steps must be >= 0 (0: no warmup), got -1"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0 (0 disables clipping), got -1"),
    ("train.max_steps=-5", "train.max_steps must be positive, got -5"),
    ("train.batch_size=0", "train.batch_size must be positive, got 0"),
    ("train.weight_decay=-0.1", "train.weight_decay must be >= 0, got -0.1"),
    ("train.beta2=1", "train.beta2 must be in [0, 1), got 1"),
    ("train.beta1=.nan", "train.beta1 must be a finite number"),
    ("train.eval_every=-1", "train.eval_every must be >= 0 (0: only at the end), got -1"),
    ("train.seed=100000000000000000000000", "train.seed must be in ["),
    ("train.inject_nan_steps=[2, -1]", "train.inject_nan_steps[1] must be positive, got -1"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1), got 1.5"),
    ("model.norm_eps=.nan", "model.norm_eps must be a finite number"),
    ("model.attention.softcap=.nan", "model.attention.softcap must be a finite number, got nan; set a positive value "
                                     "or null"),
    ("data.val_fraction=.nan", "data.val_fraction must be a finite number"),
])
def test_bad_numbers_are_one_line_and_nothing_is_written(capsys, in_tmp, one_line_error, override, needle):
    code = main(["train", "gpt-tiny", "train.out_dir=run", "train.max_steps=2", override, "--no-progress"])
    one_line_error(capsys, code, needle)
    assert _written(in_tmp, set()) == []


def test_finetune_checks_the_shared_train_section(capsys, in_tmp, one_line_error):
    for override, needle in (("train.lr=.nan", "train.lr must be a finite number"),
                             ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
                             ("data.max_train=-3", "data.max_train must be >= 0 (0: all), got -3"),
                             ("lora.alpha=.nan", "lora.alpha must be a finite number")):
        code = main(["finetune", "classify", "sentiment-bow", "train.out_dir=run", override, "--no-progress"])
        one_line_error(capsys, code, needle)
    (in_tmp / "recipe.yaml").write_text("- task: classify\n")
    one_line_error(capsys, main(["finetune", "classify", "recipe.yaml"]), "recipe 'recipe.yaml' holds a list")
    assert _written(in_tmp, {"recipe.yaml"}) == []


def test_through_the_console_script_there_is_no_traceback(tmp_path):
    (tmp_path / "cfg.yaml").write_text("- train\n")
    proc = subprocess.run([sys.executable, "-m", "attnlab", "train", "cfg.yaml", "train.lr=.nan"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("attnlab train: error: config file 'cfg.yaml' holds a list")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"attnlab {attnlab.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project.get("version", attnlab.__version__) == attnlab.__version__  # one version, not two


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every parser below it (subcommands, their actions)."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict(action.choices).values():
                out += _parsers(child)
    return out


# reStructuredText that must not reach a terminal.
RST = re.compile(r"``|:(func|class|mod|meth|attr|data|obj|exc|ref|doc):`")


def test_every_help_shows_defaults_and_no_markup():
    parsers = _parsers(build_parser())
    progs = {p.prog for p in parsers}
    for name in SUBCOMMANDS:
        assert f"attnlab {name}" in progs
    for parser in parsers:
        text = parser.format_help()
        assert not RST.search(text), f"{parser.prog} --help shows reStructuredText: {RST.search(text).group(0)}"
        for action in parser._actions:
            if not shows_default(action):
                continue
            shown = " ".join(parser._get_formatter()._format_action(action).split())
            flag = max(action.option_strings, key=len)
            assert "default" in shown, f"{parser.prog} {flag}: --help does not show its default"
            if "default" not in (action.help or "").lower():
                assert f"(default: {action.default})" in shown, f"{parser.prog} {flag}: {shown}"


def test_plain_text_strips_markup():
    assert plain_text("see :func:`~attnlab.generate.generate` and :class:`attnlab.config.Config`") == \
        "see generate and attnlab.config.Config"
    assert plain_text("``config.json`` + :mod:`the module <attnlab.serve>`") == "config.json + the module"


@pytest.mark.parametrize("argv", [["serve", "runs/x"], ["viz", "serve", "runs/x"]])
def test_request_logging_flag_and_its_old_name(argv):
    parser = build_parser()
    assert parser.parse_args(argv).no_request_log is False
    assert parser.parse_args([*argv, "--no-request-log"]).no_request_log is True
    assert parser.parse_args([*argv, "--quiet"]).no_request_log is True  # the old name still works
    sub = [p for p in _parsers(parser) if p.prog == "attnlab " + " ".join(argv[:-1])][0]
    assert "--quiet" not in sub.format_help()  # ... but is not advertised


def test_progress_flag_has_one_name():
    parser = build_parser()
    for argv in (["train", "gpt-tiny"], ["finetune", "classify", "sentiment-bow"]):
        assert parser.parse_args([*argv, "--no-progress"]).no_progress is True
    assert all("--quiet" not in p._option_string_actions or p.prog.endswith("serve") for p in _parsers(parser))
