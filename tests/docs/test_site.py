"""The documentation site builds in strict mode, and the commands it shows are valid.

- ``mkdocs build --strict`` fails on any warning: a broken link between pages, a missing
  anchor, an unresolved API cross-reference, a nav entry without its page, a snippet whose
  file is gone, a docstring griffe cannot read.
- Every ``attnlab`` command line in the pages' shell blocks (``.venv/bin/attnlab ...``,
  ``torchrun ... -m attnlab ...``) parses with the real CLI parser, and ``train`` and
  ``finetune`` lines also load their config with their overrides, so a renamed option or
  a misspelt config key in the docs fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\s*\n(.*?)^```", re.M | re.S)
PYTHON_BLOCK = re.compile(r"^```python\s*\n(.*?)^```", re.M | re.S)
SEPARATORS = {"&&", "||", ";", "|", "&"}


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)


def _shell_lines(text: str) -> list[str]:
    """Logical lines of the page's shell blocks: backslash continuations and quoted newlines joined."""
    lines = []
    for block in SHELL_BLOCK.findall(text):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            if pending.strip():
                lines.append(pending.strip())
            pending = ""
        assert not pending, f"unbalanced quotes in a shell block: {pending!r}"
    return lines


def _segments(line: str) -> list[list[str]]:
    """The simple commands of one shell line: split at ``&&``, ``;``, ``|``..., redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as e:  # unbalanced quotes
        raise AssertionError(f"cannot split shell line {line!r}: {e}") from None
    segments, current = [], []
    skip_next = False
    for tok in tokens:
        if skip_next:  # the file of a redirection
            skip_next = False
        elif tok in SEPARATORS:
            segments.append(current)
            current = []
        elif set(tok) <= set("<>&") and set(tok) & set("<>"):  # >, >>, <, >&, &>
            if current and current[-1].isdigit():  # the file descriptor of 2> or 2>&1
                current.pop()
            skip_next = True
        else:
            current.append(tok)
    segments.append(current)
    return [seg for seg in segments if seg]


def _attnlab_argvs(line: str) -> list[list[str]]:
    """The argument lists given to ``attnlab`` on one shell line (none if it runs something else)."""
    argvs = []
    for seg in _segments(line):
        if Path(seg[0]).name == "attnlab":
            argvs.append(seg[1:])
        elif Path(seg[0]).name in ("torchrun", "python", "python3"):
            for i in range(len(seg) - 1):
                if seg[i] == "-m" and seg[i + 1] == "attnlab":
                    argvs.append(seg[i + 2:])
    return argvs


def _commands() -> list[tuple[str, str, list[str]]]:
    out = []
    for page in _pages():
        for line in _shell_lines(page.read_text(encoding="utf-8")):
            for argv in _attnlab_argvs(line):
                out.append((str(page.relative_to(ROOT)), line, argv))
    return out


def test_command_extraction_finds_the_guides_commands():
    """The extraction sees commands in several forms; a regex that silently found nothing would pass anything."""
    assert _attnlab_argvs(".venv/bin/attnlab eval runs/demo --json  # comment") == [["eval", "runs/demo", "--json"]]
    assert _attnlab_argvs("X=1 && .venv/bin/torchrun --standalone -m attnlab train gpt-tiny a.b=1") == [
        ["train", "gpt-tiny", "a.b=1"]]
    assert _attnlab_argvs("curl -s localhost:8000/health") == []
    assert _attnlab_argvs("attnlab generate run --stop x > out.txt 2>&1 | head") == [["generate", "run", "--stop", "x"]]
    commands = {tuple(argv[:1]) for _, _, argv in _commands()}
    for sub in ("train", "finetune", "data", "eval", "generate", "chat", "convert", "tokenizer", "viz", "serve"):
        assert (sub,) in commands, f"no documented `attnlab {sub}` command found in docs/"


def test_documented_commands_parse():
    """Every documented ``attnlab`` command parses; train/finetune configs load with their overrides."""
    from attnlab.cli import build_parser
    from attnlab.config import load
    from attnlab.finetune import load_finetune_config

    parser = build_parser()
    failures = []
    for page, line, argv in _commands():
        try:
            args, extra = parser.parse_known_args(argv)
            if extra and not (hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra)):
                raise ValueError(f"unrecognized arguments: {extra}")
            overrides = list(getattr(args, "overrides", [])) + list(extra)
            if args.command == "train":
                load(args.config, overrides)
            elif args.command == "finetune":
                load_finetune_config(args.recipe, args.task, overrides)
        except SystemExit as e:
            if e.code not in (0, None):  # `--help` exits 0
                failures.append(f"{page}: {line}  (argparse exit {e.code})")
        except Exception as e:  # noqa: BLE001 - every failure is reported with its line
            failures.append(f"{page}: {line}  ({type(e).__name__}: {e})")
    assert not failures, "documented commands that do not parse:\n" + "\n".join(failures)


def test_documented_scripts_exist():
    """``python path/to/script.py`` lines in the pages name files of the repository."""
    missing = []
    for page in _pages():
        for line in _shell_lines(page.read_text(encoding="utf-8")):
            for seg in _segments(line):
                if Path(seg[0]).name.startswith("python") and len(seg) > 1 and seg[1].endswith(".py"):
                    if not (ROOT / seg[1]).is_file():
                        missing.append(f"{page.relative_to(ROOT)}: {line}")
    assert not missing, "documented scripts that do not exist:\n" + "\n".join(missing)


def test_python_examples_compile():
    """The pages' Python blocks are valid Python (they are run by hand; see the how-to pages' notes)."""
    for page in _pages():
        for i, code in enumerate(PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))):
            compile(code, f"{page.relative_to(ROOT)}[python block {i}]", "exec")


@pytest.mark.slow
def test_site_builds_strict_with_no_warnings(tmp_path):
    """``mkdocs build --strict``: no warnings; the CLI page covers every subcommand; benchmark files are published."""
    pytest.importorskip("mkdocstrings", reason="docs tools come with the dev extra: pip install -e '.[dev]'")
    from attnlab.cli import SUBCOMMANDS

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, f"mkdocs build --strict failed:\n{log[-4000:]}"

    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for sub in SUBCOMMANDS:
        assert f'id="attnlab-{sub}"' in cli, f"the CLI reference has no section for `attnlab {sub}`"
    assert "usage: attnlab serve" in cli
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    for result in (ROOT / "benchmarks" / "results").glob("*"):
        if result.suffix == ".md":  # tables are included in the page
            assert f'id="{result.stem.lower()}"' in benchmarks, f"{result.name} not included in benchmarks.md"
        else:
            assert (site / "benchmarks" / "results" / result.name).is_file(), f"{result.name} not published"
    api = (site / "reference" / "attention" / "index.html").read_text(encoding="utf-8")
    assert 'id="attnlab.attention.attention"' in api, "the API reference lost attnlab.attention.attention"
