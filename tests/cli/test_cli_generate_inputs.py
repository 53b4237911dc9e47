"""`attnlab generate` with bad numbers (one line, exit 2, nothing printed) and a default length that fits the model."""

import pytest

from attnlab.cli import main
from attnlab.cli._common import load_for_inference


@pytest.mark.parametrize("flag,value,needle", [
    ("--seed", "1e23", "--seed must be an integer"),
    ("--seed", str(2**63), "--seed must be an integer in 0..9223372036854775807"),
    ("--seed", str(2**64), "--seed must be an integer in 0..9223372036854775807"),
    ("--seed", str(10**30), "--seed must be an integer in 0..9223372036854775807"),
    ("--seed", "-1", "--seed must be an integer in 0.."),
    ("--temperature", "nan", "--temperature must be a finite number >= 0"),
    ("--temperature", "-1", "--temperature must be a finite number >= 0"),
    ("--temperature", "inf", "--temperature must be a finite number >= 0"),
    ("--temperature", "hot", "--temperature must be a number, got 'hot'"),
    ("--top-k", "-5", "--top-k must be an integer >= 1"),
    ("--top-k", "2.5", "--top-k must be an integer"),
    ("--top-p", "1.5", "--top-p must be a number in (0, 1]"),
    ("--length-penalty", "nan", "--length-penalty must be a finite number"),
    ("--max-new-tokens", "0", "--max-new-tokens must be an integer >= 1"),
    ("--num-beams", "0", "--num-beams must be >= 1"),
    ("--num-samples", "0", "--num-samples must be positive"),
])
def test_bad_number_is_one_line(capsys, trained_run, one_line_error, flag, value, needle):
    code = main(["generate", str(trained_run), "--prompt", "ROMEO.", flag, value])
    out = capsys.readouterr()
    assert out.out == ""  # nothing generated
    one_line_error(_Replay(out), code, needle)


@pytest.mark.parametrize("flag,value", [("--seed", "1e23"), ("--seed", str(2**64)), ("--seed", "-1"),
                                        ("--temperature", "nan"), ("--top-k", "-5")])
def test_bad_number_in_a_subprocess(run_cli, trained_run, flag, value):
    proc = run_cli("generate", str(trained_run), "--prompt", "ROMEO.", flag, value)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"attnlab generate: error: {flag}")


def test_the_last_seed_of_several_samples_is_checked_too(capsys, trained_run, one_line_error):
    code = main(["generate", str(trained_run), "--seed", str(2**63 - 1), "--num-samples", "2"])
    out = capsys.readouterr()
    assert out.out == ""
    one_line_error(_Replay(out), code, "--seed must be an integer in 0..")


def test_default_length_fills_a_small_context(capsys, monkeypatch, trained_run):
    """The tiny run's context is 64 tokens, below the default cap of 200: the default fits it."""
    import attnlab.generate

    model, tok, _, _ = load_for_inference(str(trained_run), "cpu")
    assert model.max_context == 64
    prompt = "ROMEO."
    room = model.max_context - len(tok.encode(prompt))
    budgets = []

    def recording(model, x, max_new_tokens=None, *, sampling, **kw):
        budgets.append(sampling.max_new_tokens)
        return real(model, x, max_new_tokens, sampling=sampling, **kw)

    real = attnlab.generate.stream
    monkeypatch.setattr(attnlab.generate, "stream", recording)
    # the README's example: no --max-new-tokens
    assert main(["generate", str(trained_run), "--prompt", prompt, "--temperature", "0.8", "--top-k", "50",
                 "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith(prompt)
    assert main(["generate", str(trained_run), "--prompt", prompt, "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert budgets == [room, 5]


def test_explicit_length_beyond_the_context_is_one_line(capsys, trained_run, one_line_error):
    code = main(["generate", str(trained_run), "--prompt", "ROMEO.", "--max-new-tokens", "200"])
    one_line_error(capsys, code, "lower --max-new-tokens to")


def test_prompt_filling_the_context_is_one_line(capsys, trained_run, one_line_error):
    code = main(["generate", str(trained_run), "--prompt", "the " * 80])
    one_line_error(capsys, code, "shorten the prompt")


class _Replay:
    """A capsys stand-in replaying output already read (``one_line_error`` reads it itself)."""

    def __init__(self, out):
        self.out = out

    def readouterr(self):
        return self.out
