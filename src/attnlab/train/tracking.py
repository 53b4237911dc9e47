"""Experiment tracking: every ``metrics.jsonl`` record also goes to TensorBoard and / or Weights & Biases.

``train.log_to`` lists where training metrics go: ``jsonl`` (``metrics.jsonl``, always written:
resume and the loss curve read it), ``tensorboard`` (event files in ``RUN/tensorboard/``, written
by :class:`torch.utils.tensorboard.SummaryWriter`) and ``wandb`` (a W&B run in ``RUN/wandb/``,
offline unless the user set ``WANDB_MODE``, so a run never needs an account or a network).

The engine's :class:`attnlab.train.metrics.MetricsFile` hands each record it writes to one
:class:`Tracker` (rank 0 only), which passes the record's numbers on under the same names and
at the same step; text fields (``objective``, ``precision``, a health ``event``'s name) stay in
``metrics.jsonl`` and the run's config. Nothing here re-implements a logger: the module only maps
a flat record onto ``SummaryWriter.add_scalar`` and ``wandb.Run.log``, and the run's lifetime
onto theirs:

- opened when the run starts, closed when it ends, is interrupted (Ctrl-C) or fails (W&B marks
  a failed run with exit code 1);
- a resumed run appends: TensorBoard gets ``purge_step`` = the checkpoint's step + 1, so events
  of the steps after the checkpoint are hidden, as ``metrics.jsonl`` drops its records of them;
  W&B continues the same run (its id is kept in ``RUN/wandb/attnlab-run-id``; W&B keeps the
  values it already holds for the steps it saw before the interruption).

Both packages are optional (``pip install 'attnlab[track]'``) and imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from attnlab.errors import AttnlabError

EXTRA = "pip install 'attnlab[track]'"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""The package each tracker needs (``jsonl`` needs none)."""
RUN_ID_FILE = "attnlab-run-id"
"""The W&B run id of a run folder, in ``RUN/wandb/`` (a resumed run continues that W&B run)."""


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-imported package
        return False


def require(log_to: Iterable[str]) -> None:
    """Check that the packages of ``train.log_to``'s trackers are installed (call before any work).

    Raises:
        AttnlabError: one line naming the missing packages and the extra that installs them.
    """
    names = list(dict.fromkeys(log_to))
    missing = [PACKAGES[n] for n in names if n in PACKAGES and not _installed(PACKAGES[n])]
    if missing:
        listed = ",".join(names)
        raise AttnlabError(
            f"train.log_to=[{listed}] needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; {EXTRA} (or leave {', '.join(n for n in names if n in PACKAGES)} out of train.log_to)"
        )


def wandb_init_kwargs(run_dir: Path, config: Mapping[str, Any], run_id: str | None,
                      environ: Mapping[str, str]) -> dict[str, Any]:
    """The arguments of ``wandb.init`` for a run folder.

    Offline unless ``WANDB_MODE`` is set in ``environ`` (then W&B follows it); quiet (no banner,
    no console capture); ``run_id`` continues that W&B run (``None``: a new one).
    """
    kwargs: dict[str, Any] = {
        "dir": str(run_dir), "project": "attnlab", "name": run_dir.name, "config": dict(config),
        "settings": {"silent": True, "console": "off"},
    }
    if "WANDB_MODE" not in environ:
        kwargs["mode"] = "offline"
    if run_id is not None:
        kwargs.update(id=run_id, resume="allow")
    return kwargs


class _TensorBoard:
    """Scalars into ``RUN/tensorboard/`` through :class:`torch.utils.tensorboard.SummaryWriter`."""

    def __init__(self, run_dir: Path, purge_step: int | None, config_text: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
        if config_text:
            self.writer.add_text("config", "\n".join("    " + line for line in config_text.splitlines()), 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self, failed: bool) -> None:
        self.writer.close()  # flushes


class _WandB:
    """A W&B run in ``RUN/wandb/`` (offline unless ``WANDB_MODE`` says otherwise)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resume: bool) -> None:
        import wandb

        id_file = run_dir / "wandb" / RUN_ID_FILE
        run_id = None
        if resume and id_file.exists():
            run_id = id_file.read_text().strip() or None
        try:
            self.run = wandb.init(**wandb_init_kwargs(run_dir, config, run_id, os.environ))
        except Exception as e:  # wandb's own errors (a bad WANDB_MODE, no login for online mode) are many types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AttnlabError(f"W&B could not start a run in '{run_dir / 'wandb'}': {reason}; unset WANDB_MODE "
                               "(attnlab then runs W&B offline) or leave wandb out of train.log_to") from None
        id_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = id_file.with_name(id_file.name + ".tmp")
        tmp.write_text(self.run.id + "\n")
        os.replace(tmp, id_file)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Tracker:
    """Sends metric records to the trackers of ``train.log_to`` besides ``metrics.jsonl`` (rank 0 only).

    Args:
        log_to: ``train.log_to`` (``jsonl`` is ``metrics.jsonl``, written by the caller).
        run_dir: the run folder (``train.out_dir``).
        config: the run's config as a plain dict (W&B's run config, TensorBoard's ``config`` text).
        log: one-line messages (where the metrics go, said once).

    Raises:
        AttnlabError: a tracker's package is not installed (:func:`require`).
    """

    def __init__(self, log_to: Iterable[str], run_dir: str | Path, config: Mapping[str, Any] | None = None,
                 log: Callable[[str], None] = print) -> None:
        log_to = list(dict.fromkeys(log_to))
        require(log_to)
        self.names = [n for n in log_to if n in PACKAGES]
        self.run_dir = Path(run_dir)
        self.config = dict(config or {})
        self._resume_step: int | None = None
        self._opened_before = False
        self._sinks: list[_TensorBoard | _WandB] | None = None
        if self.names:
            log(f"metrics also go to {self.describe()}")

    def describe(self) -> str:
        """Where the metrics go besides ``metrics.jsonl``, with the command that reads them."""
        parts = []
        if "tensorboard" in self.names:
            parts.append(f"TensorBoard ({self.run_dir / 'tensorboard'}; tensorboard --logdir {self.run_dir})")
        if "wandb" in self.names:
            mode = os.environ.get("WANDB_MODE", "offline")
            sync = f"; upload with wandb sync {self.run_dir / 'wandb'}/offline-run-*" if mode == "offline" else ""
            parts.append(f"W&B, {mode} ({self.run_dir / 'wandb'}{sync})")
        return " and ".join(parts)

    def resume_after(self, step: int) -> None:
        """The run resumes from its checkpoint at ``step`` (call before :meth:`open`): TensorBoard hides
        the events after ``step``, W&B continues the run folder's W&B run."""
        self._resume_step = step

    def open(self) -> None:
        """Start the trackers (done by the first :meth:`log` if not called)."""
        if self._sinks is not None or not self.names:
            return
        resume = self._resume_step is not None or self._opened_before
        purge = self._resume_step + 1 if self._resume_step is not None else None
        sinks: list[_TensorBoard | _WandB] = []
        try:
            if "tensorboard" in self.names:
                sinks.append(_TensorBoard(self.run_dir, purge, None if resume else self._config_text()))
            if "wandb" in self.names:
                sinks.append(_WandB(self.run_dir, self.config, resume))
        except BaseException:
            for sink in sinks:
                sink.close(failed=True)
            raise
        self._sinks, self._resume_step, self._opened_before = sinks, None, True

    def log(self, record: Mapping[str, Any]) -> None:
        """Pass on the numbers of one ``metrics.jsonl`` record (``step`` is the x axis)."""
        if not self.names:
            return
        values = {k: v for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not values:
            return
        self.open()
        for sink in self._sinks or []:
            sink.log(int(record["step"]), values)

    def close(self, failed: bool = False) -> None:
        """Flush and close the trackers (``failed``: the run ended with an error)."""
        sinks, self._sinks = self._sinks, None
        errors = []
        for sink in sinks or []:
            try:
                sink.close(failed)
            except Exception as e:  # close the others; after a failure, the run's own error is the one to see
                errors.append(e)
        if errors and not failed:
            raise errors[0]

    def _config_text(self) -> str | None:
        if not self.config:
            return None
        import yaml

        return yaml.safe_dump(self.config, sort_keys=False)
