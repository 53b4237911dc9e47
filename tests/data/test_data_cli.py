"""`attnlab tokenizer train|encode` through attnlab.cli.main."""

from __future__ import annotations

import pytest

import attnlab.cli
from attnlab.data.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def only_tokenizer_subcommand(monkeypatch):
    # Register just this subcommand so these tests do not depend on the other CLI modules.
    assert "tokenizer" in attnlab.cli.SUBCOMMANDS
    monkeypatch.setattr(attnlab.cli, "SUBCOMMANDS", ["tokenizer"])


@pytest.fixture
def texts(tmp_path):
    d = tmp_path / "texts"
    (d / "more").mkdir(parents=True)
    (d / "a.txt").write_text("Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 40)
    (d / "more" / "b.txt").write_text("Once more unto the breach, dear friends, once more;\n" * 40)
    return d


def test_train_then_encode(texts, tmp_path, capsys):
    out = tmp_path / "out" / "tok.json"
    extra = tmp_path / "extra.txt"
    extra.write_text("A horse! a horse! my kingdom for a horse!\n" * 10)
    rc = attnlab.cli.main(["tokenizer", "train", str(texts), str(extra), "--vocab-size", "300", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "3 document(s)" in stdout and "vocab size 300" in stdout and "ids:" in stdout and "pieces:" in stdout
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300

    rc = attnlab.cli.main(["tokenizer", "encode", str(out), "--text", "the winter sun"])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert str(tok.encode("the winter sun")) in stdout
    assert str(tok.token_strings(tok.encode("the winter sun"))) in stdout


def test_train_glob(texts, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert attnlab.cli.main(["tokenizer", "train", str(texts), "--glob", "more/*.txt", "--vocab-size", "280",
                             "--out", str(out)]) == 0
    assert "1 document(s)" in capsys.readouterr().out


def test_train_missing_path_is_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    rc = attnlab.cli.main(["tokenizer", "train", str(missing), "--out", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("attnlab tokenizer: error: ") and str(missing) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()


def test_encode_missing_tokenizer(tmp_path, capsys):
    rc = attnlab.cli.main(["tokenizer", "encode", str(tmp_path / "none.json"), "--text", "hi"])
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err and err.count("\n") == 1


def test_vocab_too_small(texts, tmp_path, capsys):
    rc = attnlab.cli.main(["tokenizer", "train", str(texts), "--vocab-size", "10", "--out", str(tmp_path / "t.json")])
    assert rc == 2 and "too small" in capsys.readouterr().err


def test_action_required(capsys):
    with pytest.raises(SystemExit) as e:
        attnlab.cli.main(["tokenizer"])
    assert e.value.code == 2
