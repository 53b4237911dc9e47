"""Fine-tuning recipes: a typed config, a task interface and a registry of tasks.

A recipe is one YAML file (``configs/finetune/*.yaml``) read into a
:class:`FinetuneConfig`; the task named on the command line decides what the
``options`` section means::

    attnlab finetune classify configs/finetune/sentiment-minilm.yaml train.max_steps=300

    task: classify                        # optional in the file; the CLI's TASK wins
    init: hf:/path/to/all-MiniLM-L6-v2    # hf:DIR | an attnlab run/checkpoint folder | preset:NAME (from scratch)
    tokenizer: ""                         # "" = the init's tokenizer; bpe:N trains one on the training text
    model: {}                             # preset:NAME only: architecture overrides (n_layer: 2, d_model: 64, ...)
    data: {train: train.jsonl, val: val.jsonl, test: test.jsonl}
    options: {text_column: text, label_column: label, max_length: 128}
    lora: {rank: 8, alpha: 16, targets: [q, v]}   # optional: adapters instead of full fine-tuning
    train: {lr: 5.0e-5, batch_size: 32, max_steps: 300, out_dir: runs/sentiment}

Every task implements :class:`Task`: read and check its examples, build its model from
the ``init`` (:mod:`attnlab.finetune.init`), turn examples into features and batches,
compute the training loss, and evaluate with its metric. :func:`attnlab.finetune.trainer.fit`
does the rest (optimizer, schedule, evaluation, best checkpoint, final metrics).
"""

from __future__ import annotations

import dataclasses
import importlib
import random
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from torch import nn

from attnlab.config import (
    ModelConfig,
    TrainConfig,
    from_dict,
    parse_override,
    preset_dir,
    read_yaml_mapping,
    set_dotted,
)
from attnlab.data.tasks import read_records, split_records
from attnlab.errors import ConfigError, did_you_mean
from attnlab.finetune.lora import LoRAConfig
from attnlab.validation import FINITE, NON_NEGATIVE, Range, check_range, check_ranges

TASKS: dict[str, str] = {
    "classify": "attnlab.finetune.tasks.classify:ClassifyTask",
    "qa": "attnlab.finetune.tasks.qa:QATask",
    "translate": "attnlab.finetune.tasks.seq2seq:TranslateTask",
    "summarize": "attnlab.finetune.tasks.seq2seq:SummarizeTask",
    "lm": "attnlab.finetune.tasks.lm:LMTask",
    "image-classify": "attnlab.finetune.tasks.image:ImageClassifyTask",
    "sft": "attnlab.finetune.tasks.sft:SFTTask",
    "dpo": "attnlab.finetune.tasks.dpo:DPOTask",
}
"""Task name → ``module:Class`` (imported on use, so one task's dependencies never slow another)."""


@dataclass
class TaskData:
    """Where a task's examples are.

    Attributes:
        train: training file (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, SQuAD ``.json``; may be compressed).
        val: validation file; empty: ``val_fraction`` of ``train`` is held out.
        test: test file for the final metrics; empty: the final metrics are on ``val``.
        val_fraction: share of ``train`` held out when ``val`` is empty.
        max_train: use at most this many training examples (``0``: all).
        max_eval: evaluate on at most this many examples (``0``: all).
    """

    train: str = ""
    val: str = ""
    test: str = ""
    val_fraction: float = 0.1
    max_train: int = 0
    max_eval: int = 0

    _RANGES: ClassVar[dict[str, Range]] = {
        "val_fraction": Range(0, 0.5, low_open=True, high_open=True),
        "max_train": NON_NEGATIVE.with_note("0: all"), "max_eval": NON_NEGATIVE.with_note("0: all"),
    }

    def __post_init__(self) -> None:
        check_ranges(self, "data", self._RANGES)


@dataclass
class FinetuneConfig:
    """One fine-tuning run (see the module docstring for the YAML layout).

    Attributes:
        task: the task name (a key of :data:`TASKS`).
        init: where the model starts: ``hf:DIR`` (a Hugging Face checkpoint directory), an
            attnlab run or checkpoint folder, or ``preset:NAME`` (random init from a preset).
        tokenizer: ``""`` keeps the init's tokenizer; ``bpe:N`` trains a byte-level BPE of N
            tokens on the training text (for models trained from scratch); a path loads one.
        model: architecture overrides for ``init: preset:NAME`` (a partial ``model`` section,
            e.g. ``{"n_layer": 2, "d_model": 64}``; CLI: ``model.n_layer=2``); must stay empty
            for a pretrained init, whose architecture its weights fix.
        data: the example files.
        options: the task's own options (a dataclass, ``Task.Options``).
        lora: train low-rank adapters instead of every weight (``None``: full fine-tuning).
        train: optimisation settings shared with pretraining (lr, batch_size, max_steps,
            warmup_steps, eval_every, out_dir, seed, device, dtype, label_smoothing, ...).
    """

    task: str = ""
    init: str = ""
    tokenizer: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    data: TaskData = field(default_factory=TaskData)
    options: Any = None
    lora: LoRAConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-ready)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in d.items()}

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass registered as ``name``.

    Raises:
        ConfigError: unknown task (with the closest name and the list).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'{did_you_mean(name, TASKS)}; tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_finetune_config(
    path: str | Path | None, task: str | None = None, overrides: Sequence[str] = ()
) -> FinetuneConfig:
    """Read a recipe YAML (path or name under ``configs/finetune/``), apply overrides, type-check it.

    Args:
        path: YAML file, or a recipe name such as ``"sentiment-minilm"``; ``None`` for defaults.
        task: the task (overrides the file's ``task``); must agree with the file if both are set.
        overrides: dotted ``key=value`` strings (``train.lr=1e-4``, ``options.max_length=64``).

    Raises:
        ConfigError: missing file, bad YAML, unknown task or key, wrong type.
    """
    if task:
        task_class(task)  # an unknown task is reported before anything else
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and p.suffix not in (".yaml", ".yml"):
            p = preset_dir() / "finetune" / f"{path}.yaml"
        if not p.is_file():
            names = sorted(q.stem for q in (preset_dir() / "finetune").glob("*.yaml"))
            raise ConfigError(f"recipe '{path}' not found{did_you_mean(str(path), names)}; "
                              f"give a YAML path or one of: {', '.join(names)}")
        tree = read_yaml_mapping(p, "recipe")
    if task and tree.get("task") and tree["task"] != task:
        raise ConfigError(f"recipe is for task '{tree['task']}', not '{task}'; "
                          f"use `attnlab finetune {tree['task']} ...`")
    tree["task"] = task or tree.get("task") or ""
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    return finetune_config_from_dict(tree)


def _check_model_keys(tree: Any, cls: type = ModelConfig, where: str = "model") -> None:
    """Unknown names and numbers out of range in a partial ``model`` section fail early (the rest is checked when
    the preset is built)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} must be a mapping of architecture settings, got {type(tree).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{where}.{key}'{did_you_mean(str(key), names)}")
        if dataclasses.is_dataclass(hints[key]):
            _check_model_keys(value, hints[key], f"{where}.{key}")
        else:
            check_range(f"{where}.{key}", value, getattr(cls, "_RANGES", {}).get(key, FINITE), names[key].default)


def finetune_config_from_dict(tree: dict[str, Any]) -> FinetuneConfig:
    """Type-check a recipe given as a nested dict (``options`` per the task, ``lora`` optional)."""
    tree = dict(tree)
    cls = task_class(tree.get("task") or "")
    options = tree.pop("options", None)
    lora = tree.pop("lora", None)
    model = tree.pop("model", None) or {}
    _check_model_keys(model)
    cfg = from_dict(FinetuneConfig, tree)
    cfg.model = model
    cfg.options = from_dict(cls.Options, options, "options")
    cfg.lora = None if lora is None else from_dict(LoRAConfig, lora, "lora")
    return cfg


class Task(ABC):
    """What a fine-tuning task defines; :func:`attnlab.finetune.trainer.fit` drives it.

    Subclasses set :attr:`name`, :attr:`Options` (a dataclass of task options) and
    :attr:`metric` (the headline validation metric; :attr:`higher_is_better` says which
    way is better), and implement the abstract methods. ``self.state`` holds everything
    (JSON-able) needed to rebuild the model's architecture later (labels, model config...);
    it is saved with the model.

    Args:
        cfg: the run's config.
    """

    name: ClassVar[str]
    Options: ClassVar[type]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    """Whether a larger :attr:`metric` is better (``False`` for a loss)."""
    eval_at_start: ClassVar[bool] = False
    """Evaluate on ``val`` before the first step too (reported as ``val_start``: the init's score)."""
    head_modules: ClassVar[tuple[str, ...]] = ()
    """Name patterns of new (randomly initialised) modules that stay trainable under LoRA."""

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg
        self.opt = cfg.options
        self.state: dict[str, Any] = {}
        self.log: Callable[[str], None] = print
        """Where the task's one-line messages go (the trainer sets its own: rank 0 only, or quiet)."""

    # -- data ---------------------------------------------------------------
    def read(self, path: str) -> list[dict[str, Any]]:
        """Read one split's examples and check them (override for non-tabular data)."""
        return read_records(path)

    def splits(self) -> dict[str, list[dict[str, Any]]]:
        """``{"train", "val", "test"}`` examples (``test`` is ``val`` when no test file is given)."""
        d = self.cfg.data
        if not d.train:
            raise ConfigError("data.train is not set; give the training file (data.train=PATH)")
        train = self.read(d.train)
        if d.val:
            val = self.read(d.val)
        else:
            train, val = self.holdout(train)
        test = self.read(d.test) if d.test else val
        if d.max_train:
            train = train[: d.max_train]
        if d.max_eval:
            val, test = val[: d.max_eval], test[: d.max_eval]
        return {"train": train, "val": val, "test": test}

    def holdout(self, train: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(train, val)`` when no validation file is given: a seeded ``data.val_fraction`` of the records."""
        val, rest = split_records(train, [self.cfg.data.val_fraction, 1 - self.cfg.data.val_fraction],
                                  seed=self.cfg.train.seed)
        return rest, val

    # -- model --------------------------------------------------------------
    @abstractmethod
    def build(self, train: list[dict[str, Any]]) -> tuple[nn.Module, Any]:
        """Model (with its task head) and tokenizer, from ``cfg.init``; fills ``self.state``."""

    @abstractmethod
    def restore(self, state: dict[str, Any], tokenizer: Any) -> nn.Module:
        """The same architecture as :meth:`build` made, from a saved ``state`` (weights loaded after)."""

    # -- training -----------------------------------------------------------
    def prepare(self, model: nn.Module, features: list[Any], out_dir: Path, resumed: bool,
                splits: dict[str, list[Any]] | None = None) -> None:
        """Called once the model is on its device, before the first step (and again on ``--resume``).

        It runs under the run's autocast, before a resumed run's weights are loaded. A task that needs
        the starting model's outputs (DPO's reference log-probabilities) computes and caches them here,
        in ``out_dir`` so a resumed run reads them back; ``splits`` (the ``train`` / ``val`` / ``test``
        examples) lets it cover the examples :meth:`evaluate` will see. Default: nothing.
        """
        return None

    def train_metrics(self) -> dict[str, torch.Tensor]:
        """Extra scalars of the training step just taken, beside its loss (DPO: reward accuracy, margin).

        The engine calls it after every step: the task returns what :meth:`loss` recorded since the
        last call (0-dim tensors, each a mean over the step's micro-batches) and forgets it. They are
        averaged over the logging window and the processes into ``metrics.jsonl`` and the progress
        bar, as the loss is. Default: none.
        """
        return {}

    @abstractmethod
    def features(self, examples: list[dict[str, Any]], tokenizer: Any) -> list[Any]:
        """Training features (one or more per example), ready for :meth:`collate`."""

    @abstractmethod
    def collate(self, features: list[Any]) -> dict[str, torch.Tensor]:
        """A batch of tensors from features."""

    def length(self, feature: Any) -> int | None:
        """Size of a feature (e.g. its token count) for length-bucketed batches; ``None``: plain random batches."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of a batch (use ``cfg.train.label_smoothing`` where it applies)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Any) -> dict[str, float]:
        """Metrics on examples (must include :attr:`metric`); the model is in eval mode."""

    def predict(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Any) -> list[Any]:
        """Predictions for examples (labels, answer strings, generated text, ...)."""
        raise NotImplementedError(f"task '{self.name}' does not implement predict")


def seeded_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training order of epoch ``epoch``: a permutation of ``range(n)``, a pure function of its arguments."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order
