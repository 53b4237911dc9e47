"""``attnlab chat`` in a pseudo-terminal (two turns, /reset, /exit, Ctrl-D, Ctrl-C), ``generate --chat``, and
loading a fine-tuned run to chat with; bad input is one line, exit 2."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import pytest
import torch

from attnlab.cli import build_parser, main
from attnlab.cli._chat import _check_causal, load_chat_model
from attnlab.cli.generate import sampling_config
from attnlab.data.chat import ChatTemplate
from attnlab.errors import AttnlabError
from attnlab.generate.chat import ChatSession
from tests.generate._chat import chat_model, chat_tokenizer, model_config, save_run

FLAGS = ["--seed", "0", "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "16"]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("chat") / "run")


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory):
    """The same model as a fine-tuned run folder of the lm task, with a chat template as sft writes it."""
    from attnlab.finetune.recipe import finetune_config_from_dict
    from attnlab.finetune.saved import save_finetuned

    run = tmp_path_factory.mktemp("ft") / "run"
    cfg = finetune_config_from_dict({"task": "lm", "init": "preset:gpt-tiny"})
    save_finetuned(run / "model", chat_model(), chat_tokenizer(), cfg,
                   {"model": dataclasses.asdict(model_config())}, {})
    ChatTemplate.default().save(run / "model")
    return run


def _session(run, *flags: str) -> ChatSession:
    """What ``attnlab chat RUN FLAGS`` talks to, built in this process."""
    args = build_parser().parse_args(["chat", str(run), *FLAGS, *flags])
    model, tok, template, _, _ = load_chat_model(str(run), "cpu", "float32", "none")
    return ChatSession(model, tok, template, sampling_config(args), system=args.system)


def _spawn(run):
    pexpect = _pexpect()
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return pexpect.spawn(sys.executable, ["-m", "attnlab", "chat", str(run), *FLAGS], env=env, encoding="utf-8",
                         timeout=120, preexec_fn=_terminal_sigint)


def _terminal_sigint() -> None:
    """Give the chat the SIGINT a terminal user's shell gives it: default disposition, not blocked.

    Both are inherited through exec: a test process started in the background by a non-interactive
    shell (a CI runner) has SIGINT ignored, and Ctrl-C would then never reach the chat.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _pexpect():
    return pytest.importorskip("pexpect", reason="pexpect is not installed (pip install pexpect)")


def _say(child, text: str, reply: str) -> None:
    """Type ``text``; the terminal shows it, then exactly ``reply`` and the next prompt."""
    child.sendline(text)
    child.expect_exact(text + "\r\n")
    child.expect_exact(reply.replace("\n", "\r\n") + "\r\n> ")
    assert child.before == ""


def test_two_turns_reset_and_exit_in_a_terminal(chat_run):
    chat = _session(chat_run)
    a1 = chat.reply("My name is Ann.")
    a2 = chat.reply("What is my name?")
    other = _session(chat_run)
    other.reply("My name is Bob.")
    assert other.reply("What is my name?") != a2  # the second answer depends on the first turn

    child = _spawn(chat_run)
    child.expect_exact("chat template: ChatML (default)")
    child.expect_exact("> ")
    _say(child, "My name is Ann.", a1)
    _say(child, "What is my name?", a2)
    child.sendline("/reset")
    child.expect_exact("conversation reset")
    child.expect_exact("> ")
    _say(child, "My name is Ann.", a1)  # a new conversation: the same first answer (seeds start over)
    child.sendline("/help")
    child.expect_exact("/reset")
    child.expect_exact("> ")
    child.sendline("/exit")
    child.expect(_pexpect().EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("key", ["eof", "intr"])
def test_ctrl_d_and_ctrl_c_exit_cleanly(chat_run, key):
    child = _spawn(chat_run)
    child.expect_exact("> ")
    # input() prints "> " before it blocks reading; a signal in between is seen only after the next line
    # (as in any Python REPL). A person presses Ctrl-C at a waiting prompt: give the child time to wait.
    time.sleep(1.0)
    child.sendeof() if key == "eof" else child.sendintr()
    child.expect(_pexpect().EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in (child.before or "")


def test_generate_chat_prints_only_the_reply(run_cli, chat_run):
    first = _session(chat_run).reply("My name is Ann.")
    proc = run_cli("generate", str(chat_run), "--chat", "My name is Ann.", *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == first + "\n"
    assert "chat template: ChatML (default)" in proc.stderr


def test_generate_chat_with_a_system_prompt(capsys, chat_run):
    assert main(["generate", str(chat_run), "--chat", "I like tea.", "--system", "Be brief.", *FLAGS]) == 0
    expected = _session(chat_run, "--system", "Be brief.").reply("I like tea.")
    assert capsys.readouterr().out == expected + "\n"


def test_a_finetuned_run_chats_with_its_template(capsys, finetuned_run, chat_run):
    model, tok, template, _, weights = load_chat_model(str(finetuned_run), "cpu", "float32", "none")
    assert template == ChatTemplate.default() and weights.precision.dtype == torch.float32
    for k, v in chat_model().state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert main(["generate", str(finetuned_run / "model"), "--chat", "My name is Bob.", *FLAGS]) == 0
    out = capsys.readouterr()
    assert out.out == _session(chat_run).reply("My name is Bob.") + "\n"
    assert "chat template: ChatML (default)" in out.err


def test_weight_flags_apply_to_a_finetuned_run(finetuned_run):
    model, *_, weights = load_chat_model(str(finetuned_run), "cpu", "bfloat16", "none")
    assert next(model.parameters()).dtype == torch.bfloat16 and weights.precision.dtype == torch.bfloat16
    model, *_, weights = load_chat_model(str(finetuned_run), "cpu", "auto", "int8")
    assert weights.quantize == "int8" and weights.int8_linears > 0


def test_a_model_that_is_not_a_causal_lm_is_refused():
    with pytest.raises(AttnlabError, match="holds a Linear, not a decoder-only language model"):
        _check_causal(torch.nn.Linear(2, 2), "'x'")


@pytest.mark.parametrize("argv,needle", [
    (["chat", "{missing}"], "not found; pass a fine-tuned run"),
    (["chat", "{run}", "--temperature", "hot"], "--temperature must be a number, got 'hot'"),
    (["chat", "{run}", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
    (["chat", "{run}", "--max-new-tokens", "500"], "max_new_tokens 500 leaves no room"),
    (["generate", "{missing}", "--chat", "hi"], "not found; pass a fine-tuned run"),
    (["generate", "{run}", "--chat", "hi", "--prompt", "x"], "--chat and --prompt both give the input"),
    (["generate", "{run}", "--system", "x"], "--system is the system prompt of a --chat turn"),
    (["generate", "{run}", "--chat", "hi", "--num-beams", "2"], "--num-beams does not apply to --chat"),
])
def test_bad_input_is_one_line(capsys, one_line_error, tmp_path, chat_run, argv, needle):
    argv = [a.format(missing=tmp_path / "nope", run=chat_run) for a in argv]
    code = main(argv)
    out = capsys.readouterr()
    assert out.out == ""
    one_line_error(_Replay(out), code, needle)


class _Replay:
    """Hands a captured output to ``one_line_error`` again."""

    def __init__(self, out):
        self.out = out

    def readouterr(self):
        return self.out
