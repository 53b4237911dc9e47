"""`attnlab viz attention` and `attnlab bench attention` end to end, and their user errors."""

import json
import struct

import pytest

from attnlab.cli import main


@pytest.mark.parametrize("cmd", [["viz", "--help"], ["viz", "attention", "--help"], ["bench", "attention", "--help"]])
def test_help(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main(cmd)
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


def test_bench_help_lists_registered_backends(capsys):
    from attnlab.attention.backends import BACKENDS

    with pytest.raises(SystemExit):
        main(["bench", "attention", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in [*BACKENDS, "sdpa-flash", "sdpa-cudnn"])


def test_viz_attention_writes_png(capsys, trained_run, tmp_path):
    out = tmp_path / "figs" / "attn.png"
    code = main(["viz", "attention", str(trained_run), "--text", "ROMEO. But soft, what light",
                 "--layers", "1", "--heads", "1,0", "--out", str(out), "--device", "cpu"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert width > height  # one row (layer 1), two columns (heads 1, 0)


@pytest.mark.parametrize("extra, needle", [
    (["--text", ""], "--text is empty"),
    (["--text", "x " * 80], "tokens but the model's context is 64 tokens"),
    (["--text", "hi", "--layers", "2"], "layer 2 is out of range: this model has 2 layers, valid layers are 0..1"),
    (["--text", "hi", "--heads", "0,5"], "head 5 is out of range: this model has 2 heads, valid heads are 0..1"),
    (["--text", "hi", "--layers", "a"], "--layers must be comma-separated integers"),
])
def test_viz_errors(capsys, trained_run, tmp_path, extra, needle, one_line_error):
    out = tmp_path / "x.png"
    one_line_error(capsys, main(["viz", "attention", str(trained_run), "--out", str(out), *extra]), needle)
    assert not out.exists()


def test_viz_missing_checkpoint(capsys, tmp_path, one_line_error):
    one_line_error(capsys, main(["viz", "attention", str(tmp_path / "nope"), "--text", "hi"]), "not found")


def test_bench_attention_writes_json_and_png(capsys, tmp_path):
    out = tmp_path / "res" / "attn.json"
    code = main(["bench", "attention", "--seq-lens", "32", "--head-dims", "16", "--heads", "2", "--repeats", "1",
                 "--warmup", "0", "--masks", "causal,none", "--backends", "eager,sdpa-efficient", "--mode", "fwd",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sdpa-efficient" in printed and "unsupported" in printed and str(out) in printed
    res = json.loads(out.read_text())
    assert [(r["backend"], r["mask"]) for r in res["rows"]] == [
        ("eager", "causal"), ("sdpa-efficient", "causal"), ("eager", "none"), ("sdpa-efficient", "none")]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, needle", [
    (["--backends", "eager,fast"], "unknown backend 'fast'; available: eager, sdpa"),
    (["--masks", "diagonal"], "unknown mask 'diagonal'"),
    (["--seq-lens", "32,x"], "--seq-lens must be a comma-separated list of ints"),
    (["--out", "results.csv"], "--out must end in .json"),
])
def test_bench_errors(capsys, extra, needle, one_line_error):
    one_line_error(capsys, main(["bench", "attention", "--device", "cpu", *extra]), needle)
