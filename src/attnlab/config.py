"""Typed configs: dataclasses, YAML presets and dotted overrides.

A run is described by one :class:`Config` with three sections, ``model``, ``data``
and ``train``. Presets live in ``configs/*.yaml``; any field can be overridden from
the command line with ``section.field=value`` (the value is parsed as YAML)::

    cfg = attnlab.config.load("gpt-tiny", ["train.max_steps=200", "model.n_layer=2"])

Unknown keys and wrong types are reported with the field name and, for typos, the
closest valid name. Turning the YAML tree into the typed dataclasses, with those checks,
is :mod:`attnlab.config_tree`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from attnlab.config_tree import from_dict, parse_override, read_yaml_mapping, set_dotted
from attnlab.errors import ConfigError, did_you_mean
from attnlab.validation import FINITE, FRACTION, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, Range, check_ranges


@dataclass
class AttentionConfig:
    """How the model's attention layers attend.

    Attributes:
        backend: ``"auto"`` (chosen per call), ``"eager"``, ``"sdpa"``, ``"flex"`` or ``"chunked"``.
        window: sliding-window size in tokens (each token sees itself and the window-1 before it);
            ``None`` for full causal attention.
        global_tokens: with a window, the first N tokens attend to and are seen by every token.
        softcap: soft-cap the scores as ``c·tanh(s/c)`` (``None``: off).
        topk: keep only each query's k best-scoring keys (content-dependent sparsity; eager only).
        scale: multiplier of q·k before the softmax (``None``: 1/√head_dim; T5 uses ``1.0``).
    """

    backend: Literal["auto", "eager", "sdpa", "flex", "chunked"] = "auto"
    window: int | None = None
    global_tokens: int = 0
    softcap: float | None = None
    topk: int | None = None
    scale: float | None = None

    _RANGES: ClassVar[dict[str, Range]] = {
        "window": POSITIVE.with_note("null: full causal attention"), "global_tokens": NON_NEGATIVE,
        "softcap": POSITIVE.with_note("null: off"), "topk": POSITIVE.with_note("null: off"),
        "scale": POSITIVE.with_note("null: 1/sqrt(head_dim)"),
    }

    def __post_init__(self) -> None:
        check_ranges(self, "model.attention", self._RANGES)
        if self.global_tokens and self.window is None:
            raise ConfigError("model.attention.global_tokens needs model.attention.window (local + global attention)")


@dataclass
class ModelConfig:
    """Architecture of a transformer (decoder-only, encoder-only or encoder–decoder).

    Attributes:
        arch: model family: ``"decoder"`` (GPT / Llama style, causal), ``"encoder"``
            (BERT style, bidirectional; :func:`attnlab.models.build` gives it an MLM head) or
            ``"encoder_decoder"`` (original Transformer / T5: a bidirectional encoder and a causal
            decoder that cross-attends to it).
        vocab_size: number of token ids; set from the tokenizer when ``0``.
        block_size: maximum context length in tokens.
        n_layer: number of transformer blocks (of the encoder, for an encoder–decoder).
        n_decoder_layer: decoder blocks of an encoder–decoder (``None``: ``n_layer``).
        n_head: number of query heads.
        n_kv_head: key/value heads (``None`` = ``n_head``: MHA; 1: MQA; else GQA).
        d_model: residual stream width.
        d_ff: MLP hidden width (``None``: 4·d_model for GELU, 8/3·d_model rounded to 64 for SwiGLU).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        norm_eps: epsilon of the norm layers.
        norm_placement: ``"pre"`` (x + f(norm(x)), GPT-2 / Llama) or ``"post"``
            (norm(x + f(x)), the original Transformer and BERT).
        mlp: ``"gelu"`` (tanh approximation, GPT-2), ``"gelu_exact"`` (erf GELU, BERT), ``"relu"``
            (original Transformer, T5 v1.0), ``"swiglu"`` (Llama) or ``"geglu"`` (gated tanh-GELU, T5 v1.1).
        position: ``"learned"``, ``"sinusoidal"``, ``"rope"``, ``"alibi"``, ``"relative"`` (T5
            bucketed bias) or ``"none"`` (NoPE).
        rope_theta: RoPE base frequency.
        rope_scaling: ``"none"``, ``"linear"`` (position interpolation) or ``"ntk"`` (base rescaling),
            to run beyond the trained context.
        rope_scaling_factor: how many times longer than ``block_size`` RoPE should reach.
        relative_buckets: buckets of the T5 relative bias.
        relative_max_distance: distance beyond which the T5 relative bias is constant.
        bias: whether linear layers and LayerNorms carry a bias.
        tie_embeddings: share the token embedding with the LM head.
        embed_scale: multiply token embeddings by √d_model (the original Transformer;
            encoder–decoders only).
        decoder_start_id: token an encoder–decoder's decoder starts from (T5: the pad id, 0).
        type_vocab_size: token-type (segment) embeddings of an encoder, as BERT's
            sentence A / B (``0``: none).
        dropout: dropout on embeddings, attention weights and residual branches.
        mixer: ``"softmax"`` attention or ``"linear"`` attention (kernel feature map, O(T)).
        attention: the attention section (backend, window, global tokens, soft-cap, top-k).
    """

    arch: Literal["decoder", "encoder", "encoder_decoder"] = "decoder"
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_decoder_layer: int | None = None
    n_head: int = 12
    n_kv_head: int | None = None
    d_model: int = 768
    d_ff: int | None = None
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: Literal["pre", "post"] = "pre"
    mlp: Literal["gelu", "gelu_exact", "relu", "swiglu", "geglu"] = "gelu"
    position: Literal["learned", "sinusoidal", "rope", "alibi", "relative", "none"] = "learned"
    rope_theta: float = 10000.0
    rope_scaling: Literal["none", "linear", "ntk"] = "none"
    rope_scaling_factor: float = 1.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    bias: bool = True
    tie_embeddings: bool = True
    embed_scale: bool = False
    decoder_start_id: int = 0
    type_vocab_size: int = 0
    dropout: float = 0.0
    mixer: Literal["softmax", "linear"] = "softmax"
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    _RANGES: ClassVar[dict[str, Range]] = {
        "vocab_size": NON_NEGATIVE.with_note("0: the tokenizer's size"), "block_size": POSITIVE, "n_layer": POSITIVE,
        "n_decoder_layer": POSITIVE.with_note("null: model.n_layer"), "n_head": POSITIVE,
        "n_kv_head": NON_NEGATIVE.with_note("null: model.n_head"), "d_model": POSITIVE,
        "d_ff": NON_NEGATIVE.with_note("null: the default width"), "norm_eps": POSITIVE, "rope_theta": POSITIVE,
        "rope_scaling_factor": POSITIVE, "relative_buckets": POSITIVE, "relative_max_distance": POSITIVE,
        "decoder_start_id": NON_NEGATIVE, "type_vocab_size": NON_NEGATIVE.with_note("0: no token types"),
        "dropout": FRACTION,
    }

    def __post_init__(self) -> None:
        check_ranges(self, "model", self._RANGES)
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                "pick a head count that divides the width"
            )
        kv = self.kv_heads
        if kv <= 0 or self.n_head % kv:
            raise ConfigError(
                f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head} "
                "(use null for multi-head, 1 for multi-query)"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dim, got {self.head_dim}; change d_model or n_head")
        if self.rope_scaling != "none" and (self.position != "rope" or self.rope_scaling_factor < 1.0):
            raise ConfigError("model.rope_scaling needs model.position=rope and model.rope_scaling_factor >= 1")
        if self.type_vocab_size and self.arch != "encoder":
            raise ConfigError("model.type_vocab_size needs model.arch=encoder; set it to 0 for a decoder")
        if self.n_decoder_layer is not None and (self.arch != "encoder_decoder" or self.n_decoder_layer <= 0):
            raise ConfigError("model.n_decoder_layer must be positive and needs model.arch=encoder_decoder")
        if self.embed_scale and self.arch != "encoder_decoder":
            raise ConfigError(f"model.embed_scale applies to model.arch=encoder_decoder only (got arch={self.arch}); "
                              "set model.embed_scale=false")
        if self.arch == "encoder_decoder" and self.mixer == "linear":
            raise ConfigError("model.mixer=linear is not supported with model.arch=encoder_decoder; use mixer=softmax")
        if self.arch == "encoder" and self.mixer == "linear":
            raise ConfigError(
                "model.mixer=linear cannot apply an encoder's padding mask; use mixer=softmax with model.arch=encoder"
            )
        a = self.attention
        if self.mixer == "linear":
            used = [n for n, v in (("window", a.window), ("softcap", a.softcap), ("topk", a.topk)) if v]
            if a.backend != "auto":
                used.append("backend")
            if used or self.position in ("alibi", "relative"):
                what = f"model.attention.{used[0]}" if used else f"model.position={self.position}"
                raise ConfigError(
                    f"{what} acts on softmax scores and cannot be used with model.mixer=linear; "
                    "remove it or use mixer=softmax"
                )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads actually used."""
        return self.n_kv_head or self.n_head

    @property
    def ff_dim(self) -> int:
        """MLP hidden width after applying the default rule."""
        if self.d_ff:
            return self.d_ff
        if self.mlp in ("swiglu", "geglu"):
            return 64 * ((8 * self.d_model // 3 + 63) // 64)
        return 4 * self.d_model


@dataclass
class DataConfig:
    """Where text comes from and how it becomes tokens.

    Attributes:
        source: ``"builtin:shakespeare"`` (ships with attnlab), a text file, a JSON Lines / JSON file
            (``.gz`` / ``.zst`` too), a ``.parquet`` file, a ``datasets`` folder (``save_to_disk``), a
            directory, or a glob pattern (``shards/*.parquet``); see :func:`attnlab.data.corpus.iter_documents`.
        glob: file pattern used when ``source`` is a directory.
        tokenizer: ``"bpe:N"`` trains a byte-level BPE of N tokens on the training text;
            a path loads a saved tokenizer (``tokenizer.json``) or GPT-2's
            ``encoder.json`` + ``vocab.bpe`` directory.
        val_fraction: share of the text held out for validation (taken from the end).
        cache_dir: where the token shards (``train-00000.bin``, ... with an index in ``meta.json``) are kept,
            reused when the inputs match; an interrupted preparation resumes there.
        text_field: the column holding the text in JSON Lines / JSON / Parquet / ``datasets`` sources.
        num_proc: worker processes that tokenize the corpus.
        tokenizer_sample_mb: train a ``bpe:N`` tokenizer on at most this many MB of the training text
            (0: all of it).
    """

    source: str = "builtin:shakespeare"
    glob: str = "**/*.txt"
    tokenizer: str = "bpe:4096"
    val_fraction: float = 0.05
    cache_dir: str = ".attnlab-cache"
    text_field: str = "text"
    num_proc: int = 1
    tokenizer_sample_mb: float = 0.0

    _RANGES: ClassVar[dict[str, Range]] = {"val_fraction": Range(0, 0.5, low_open=True, high_open=True),
                                           "num_proc": Range(1, 256), "tokenizer_sample_mb": Range(0, 1e7)}

    def __post_init__(self) -> None:
        check_ranges(self, "data", self._RANGES)


@dataclass
class TrainConfig:
    """Optimisation, schedule, evaluation and checkpointing.

    Attributes:
        out_dir: run folder (checkpoints, metrics.jsonl, loss curve).
        seed: seeds the model init and the batch order.
        batch_size: sequences per micro-batch.
        seq_len: tokens per sequence (``0``: the model's block size).
        grad_accum: micro-batches per optimizer step.
        max_steps: optimizer steps.
        lr: peak learning rate.
        min_lr: final learning rate of the cosine decay.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW decay on matrices (not on norms, biases, embeddings of positions).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: max global grad norm (``0`` disables clipping).
        eval_every: steps between validations (``0``: only at the end).
        eval_batches: batches per validation.
        ckpt_every: steps between checkpoints (``0``: only at the end and on Ctrl-C).
        log_every: steps between metric records.
        device: ``"auto"`` (cuda if available), ``"cpu"`` or ``"cuda"``.
        dtype: ``"auto"``: bf16 autocast where the device multiplies bf16 natively (CUDA, and a
            CPU whose oneDNN reports native bf16: AVX512-BF16 or AMX), fp32 elsewhere
            (:func:`attnlab.precision.resolve_precision`; the run logs which ran and why, and
            records it as ``precision`` in its summary and validation records); ``"float32"``
            or ``"bfloat16"`` (autocast) to choose.
        compile: wrap the model in ``torch.compile``.
        threads: CPU threads for torch (``0``: torch's default).
        objective: pretraining objective: ``"auto"`` (by ``model.arch``: next-token ``"clm"`` for
            decoders, masked LM ``"mlm"`` for encoders, span corruption ``"span"`` for
            encoder–decoders) or one of those three.
        label_smoothing: label smoothing of the cross-entropy loss (teacher forcing).
        mlm_probability: share of tokens selected for masked-LM prediction (80/10/10 masking).
        span_noise_density: share of tokens hidden by span corruption.
        span_mean_length: mean length of a corrupted span.
        parallel: how several processes (``torchrun --nproc_per_node N``) share the work:
            ``"ddp"`` replicates the model and averages gradients (with one process the
            plain model trains), ``"fsdp"`` shards parameters, gradients and optimizer state
            with FSDP2 (also with one process). ``batch_size`` is the global micro-batch:
            each of the N processes takes ``batch_size / N`` of its sequences, so a run
            computes the same steps on any number of processes.
        optimizer: ``"adamw"``, or ``"muon"``: Muon (Newton–Schulz orthogonalized momentum)
            for the 2-D weight matrices of the hidden layers, AdamW for embeddings, the
            output head, norms and biases.
        muon_lr: peak learning rate of the Muon matrices (follows the same warmup + cosine
            shape as ``lr``).
        muon_momentum: Muon's (Nesterov) momentum.
        activation_checkpointing: recompute each block's activations in the backward pass
            (less memory, about a third more compute).
        nonfinite: what a NaN/inf loss or gradient norm does: ``"skip"`` skips that
            optimizer step (logged and counted) and stops after ``max_nonfinite`` in a
            row; ``"stop"`` stops at the first one. A stop saves the last good state.
        max_nonfinite: consecutive skipped steps after which a ``"skip"`` run stops.
        spike_factor: a step loss above ``spike_factor`` × the running mean loss is logged
            as a loss spike (``0`` disables the check).
        inject_nan_steps: testing aid: make the loss NaN at these (1-based) steps, to
            exercise the ``nonfinite`` policy. Leave empty for real runs.
        document_mask: packed-window document masking for next-token training (``clm``,
            decoders only): a window usually spans several documents joined by
            ``<|endoftext|>``, and with this on each token attends only to earlier tokens
            of its own document (training and validation alike). Positions are not reset
            per document.
        log_to: where the metric records go (rank 0): ``jsonl`` (``metrics.jsonl``, always
            written: resume and the loss curve read it), ``tensorboard`` (``out_dir/tensorboard/``,
            ``torch.utils.tensorboard``), ``wandb`` (a W&B run in ``out_dir/wandb/``, offline unless
            ``WANDB_MODE`` is set). E.g. ``train.log_to=[jsonl,tensorboard]``; the last two need
            ``pip install 'attnlab[track]'`` (:mod:`attnlab.train.tracking`).
    """

    out_dir: str = "runs/default"
    seed: int = 1337
    batch_size: int = 16
    seq_len: int = 0
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 20
    ckpt_every: int = 250
    log_every: int = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    threads: int = 0
    objective: Literal["auto", "clm", "mlm", "span"] = "auto"
    label_smoothing: float = 0.0
    mlm_probability: float = 0.15
    span_noise_density: float = 0.15
    span_mean_length: float = 3.0
    parallel: Literal["ddp", "fsdp"] = "ddp"
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    activation_checkpointing: bool = False
    nonfinite: Literal["skip", "stop"] = "skip"
    max_nonfinite: int = 5
    spike_factor: float = 2.0
    inject_nan_steps: list[int] = field(default_factory=list)
    document_mask: bool = False
    log_to: list[Literal["jsonl", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])

    _RANGES: ClassVar[dict[str, Range]] = {
        "seed": Range(-(2**63), 2**64 - 1), "batch_size": POSITIVE, "seq_len": NON_NEGATIVE.with_note("0: block size"),
        "grad_accum": POSITIVE, "max_steps": POSITIVE, "lr": POSITIVE, "min_lr": NON_NEGATIVE,
        "warmup_steps": NON_NEGATIVE.with_note("0: no warmup"), "weight_decay": NON_NEGATIVE,
        "beta1": FRACTION, "beta2": FRACTION, "grad_clip": NON_NEGATIVE.with_note("0 disables clipping"),
        "eval_every": NON_NEGATIVE.with_note("0: only at the end"), "eval_batches": POSITIVE,
        "ckpt_every": NON_NEGATIVE.with_note("0: only at the end"), "log_every": POSITIVE,
        "threads": NON_NEGATIVE.with_note("0: torch's default"), "label_smoothing": FRACTION,
        "mlm_probability": OPEN_FRACTION, "span_noise_density": OPEN_FRACTION, "span_mean_length": Range(1),
        "muon_lr": POSITIVE, "muon_momentum": FRACTION, "max_nonfinite": POSITIVE,
        "spike_factor": FINITE, "inject_nan_steps": POSITIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self, "train", self._RANGES)
        if self.min_lr > self.lr:
            raise ConfigError(f"need train.min_lr <= train.lr, got lr={self.lr}, min_lr={self.min_lr}; "
                              "lower train.min_lr")
        if self.spike_factor != 0 and self.spike_factor <= 1.0:
            raise ConfigError(f"train.spike_factor must be > 1 (or 0 to disable), got {self.spike_factor}")
        if self.document_mask and self.objective not in ("auto", "clm"):
            raise ConfigError(f"train.document_mask applies to next-token training (train.objective=clm), not "
                              f"train.objective={self.objective}; set train.document_mask=false")
        trackers = ("jsonl", "tensorboard", "wandb")
        if not isinstance(self.log_to, list) or not self.log_to or any(n not in trackers for n in self.log_to):
            raise ConfigError(f"train.log_to must be a non-empty list of {', '.join(trackers)}, got {self.log_to!r}; "
                              "e.g. train.log_to=[jsonl,tensorboard]")


@dataclass
class Config:
    """A whole run: model, data and training sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, suitable for YAML."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def preset_dir() -> Path:
    """Folder holding the YAML presets shipped with attnlab."""
    return Path(str(resources.files("attnlab") / "configs"))


def list_presets() -> list[str]:
    """Names of the shipped presets (``gpt-tiny``, ``gpt2-124m``, ...)."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def resolve_path(name_or_path: str | Path) -> Path:
    """Find a config file by path or by preset name."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"config file '{p}' not found; presets: {', '.join(list_presets())}")
        return p
    candidate = preset_dir() / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        f"no config file or preset named '{name_or_path}'{did_you_mean(str(name_or_path), list_presets())}; "
        f"presets: {', '.join(list_presets())}"
    )


def load(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a typed :class:`Config` from a preset name or YAML path, then apply overrides.

    Args:
        name_or_path: preset name (``"gpt-tiny"``), path to a YAML file, or ``None`` for defaults.
        overrides: dotted ``section.key=value`` strings applied on top.

    Returns:
        The validated config.

    Raises:
        ConfigError: for a missing file, malformed YAML, unknown key or wrong type.
    """
    tree: dict[str, Any] = {}
    if name_or_path is not None:
        tree = read_yaml_mapping(resolve_path(name_or_path))
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    return from_dict(Config, tree)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a :class:`ModelConfig` (e.g. from a checkpoint)."""
    return from_dict(ModelConfig, data, "model")
