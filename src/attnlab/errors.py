"""User-facing errors.

Every problem a user can fix (a wrong config key, a missing file, a checkpoint from
another architecture, a prompt that is too long) is raised as :class:`AttnlabError`
at the boundary where it is detected. The CLI prints its message on one line and
exits non-zero, with no traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AttnlabError(Exception):
    """An error the user can fix; its message names the problem and the fix."""


class ConfigError(AttnlabError):
    """A config file or override is wrong (unknown key, wrong type, bad value)."""


class CheckpointError(AttnlabError):
    """A checkpoint is missing, corrupt, or does not match the model."""


class ContextOverflowError(AttnlabError):
    """A prompt does not fit the model's context (with the room asked for the reply)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
