"""Helpers shared by subcommands: the help formatter every parser uses, and loading a checkpoint for inference."""

from __future__ import annotations

import argparse
import copy
import re
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from attnlab.data import Tokenizer
    from attnlab.generate.quantize import WeightsReport
    from attnlab.train.checkpoint import Checkpoint

# reStructuredText that docstrings carry into help texts: :role:`~a.b.C` / :role:`text <target>`, ``literal``.
_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)\s*(?:<[^`>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``")


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup (``:func:`~a.b`` → ``b``, double-backquoted literals → plain)."""

    def role(m: re.Match[str]) -> str:
        target = m.group(1)
        return target.rsplit(".", 1)[-1] if m.group(0).split("`", 1)[1].startswith("~") else target

    return _LITERAL.sub(r"\1", _ROLE.sub(role, text))


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should state ``action``'s default: an option whose default is a real value."""
    if not action.option_strings or action.help == argparse.SUPPRESS:
        return False
    default = action.default
    return default is not None and default is not argparse.SUPPRESS and default is not False and default != []


class HelpFormatter(argparse.HelpFormatter):
    """Help of every ``attnlab`` parser: plain text (no reStructuredText), defaults shown, paragraphs kept.

    An option with a default that its help does not already mention gets ``(default: X)``; one
    without any help text gets a help line of just its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain_text(action.help or "")
        if shows_default(action) and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text.strip()

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and shows_default(action):
            action = copy.copy(action)
            action.help = ""  # _get_help_string fills in the default
            action.help = self._get_help_string(action)
        return super()._format_action(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Re-wrap each paragraph and bullet on its own; keep indented (example) lines as they are."""
        out: list[str] = []
        for para in re.split(r"\n\s*\n", textwrap.dedent(plain_text(text)).strip("\n")):
            blocks: list[list[str]] = []
            for line in para.splitlines():
                if line.startswith((" ", "\t")) and not (blocks and blocks[-1][0].startswith("- ")):
                    blocks.append([line])  # an example command: verbatim
                elif line.startswith("- ") or not blocks or blocks[-1][0].startswith((" ", "\t")):
                    blocks.append([line.strip()])
                else:
                    blocks[-1].append(line.strip())
            for block in blocks:
                if block[0].startswith((" ", "\t")):
                    out.append(indent + block[0])
                else:
                    sub = "  " if block[0].startswith("- ") else ""
                    out.append(textwrap.fill(" ".join(block), width, initial_indent=indent,
                                             subsequent_indent=indent + sub))
            out.append("")
        return "\n".join(out).rstrip("\n")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that uses :class:`HelpFormatter`; its subcommands' parsers are ``Parser`` too."""

    def __init__(self, *args: Any, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs: Any):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def load_for_inference(path: str, device: str = "auto") -> tuple[torch.nn.Module, Tokenizer, Checkpoint, torch.device]:
    """Model (eval mode), tokenizer, checkpoint and device for a checkpoint path."""
    from attnlab.data import Tokenizer
    from attnlab.errors import CheckpointError
    from attnlab.train.checkpoint import load_model
    from attnlab.train.run_state import resolve_device

    dev = resolve_device(device)
    model, ckpt = load_model(path, dev)
    if ckpt.tokenizer_file is None:
        raise CheckpointError(f"checkpoint '{ckpt.path}' has no tokenizer.json; it was not written by attnlab train")
    return model, Tokenizer.load(ckpt.tokenizer_file), ckpt, dev


def add_weight_flags(p: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--quantize``, the inference weight flags of ``generate`` and ``serve``."""
    from attnlab.generate.quantize import QUANTIZE
    from attnlab.precision import DTYPES

    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="weights and compute dtype; auto: bfloat16 where the device multiplies bf16 natively, "
                   "else float32 (default: auto)")
    p.add_argument("--quantize", default="none", choices=QUANTIZE,
                   help="int8: int8 weight-only linears (per-output-channel scales, CPU, bf16 activations) "
                   "(default: none)")


def load_for_decoding(path: str, device: str = "auto", dtype: str = "auto", quantize: str = "none",
                      ) -> tuple[torch.nn.Module, Tokenizer, Checkpoint, torch.device, WeightsReport]:
    """:func:`load_for_inference`, then the weights converted per ``dtype``/``quantize`` (see
    :func:`attnlab.generate.quantize.prepare_weights`); the caller prints the report's line on stderr
    once its own checks passed, so that an error stays the only line.

    Raises:
        AttnlabError: an unsupported ``dtype``/``quantize`` combination (one line).
    """
    from attnlab.generate.quantize import prepare_weights, resolve_inference_precision

    resolve_inference_precision(dtype, quantize, torch_device(device))  # refuse before loading
    model, tok, ckpt, dev = load_for_inference(path, device)
    return model, tok, ckpt, dev, prepare_weights(model, dev, dtype, quantize)


def torch_device(device: str) -> torch.device:
    """``--device`` (auto/cpu/cuda) as a ``torch.device``."""
    from attnlab.train.run_state import resolve_device

    return resolve_device(device)
