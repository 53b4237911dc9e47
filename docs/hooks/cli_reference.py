"""MkDocs hook: the CLI reference page is generated from the ``attnlab`` argparse parsers.

``docs/cli.md`` holds the marker ``<!-- attnlab-cli-reference -->``; at build time it is
replaced by one section per subcommand (and per sub-action, e.g. ``attnlab data prepare``)
with the exact ``--help`` text, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import functools

MARKER = "<!-- attnlab-cli-reference -->"
HELP_WIDTH = 76  # fits the page column of the Material theme without scrolling


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers registered under ``parser``'s subcommand argument, in registration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` at a fixed width, whatever the terminal."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=HELP_WIDTH)
    return parser.format_help().rstrip()


def _defaults(parser: argparse.ArgumentParser) -> str:
    """One line listing the options' defaults (``--help`` does not always show them)."""
    items = []
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        value = action.default
        shown = repr(value) if isinstance(value, str) and (not value or value.strip() != value) else str(value)
        items.append(f"`{max(action.option_strings, key=len)} {shown}`")
    return f"Defaults: {' · '.join(items)}" if items else ""


def _sections(parser: argparse.ArgumentParser, level: int) -> list[str]:
    """Markdown sections for ``parser`` and, one heading level down, its subcommands."""
    out = [f"{'#' * level} `{parser.prog}`", "", "```text", _help(parser), "```", "", _defaults(parser), ""]
    for child in _subcommands(parser).values():
        out += _sections(child, level + 1)
    return out


def cli_reference_markdown() -> str:
    """The generated reference: the top-level help, then every subcommand's."""
    from attnlab.cli import build_parser

    parser = build_parser()
    out = ["```text", _help(parser), "```", ""]
    for child in _subcommands(parser).values():
        out += _sections(child, 2)
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill the marker in ``cli.md``; other pages pass through unchanged."""
    if page.file.src_uri != "cli.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/cli.md lost its marker {MARKER}")
    return markdown.replace(MARKER, cli_reference_markdown())
