"""Export attnlab models to Hugging Face ``transformers`` models (the inverse of :func:`from_hf`).

An :class:`Exporter` pairs one import :class:`~attnlab.interop.hf.Layout` with what the way
back needs: our :class:`~attnlab.config.ModelConfig` → the family's ``config.json`` fields, and
how to assemble one Hugging Face weight from ours. Weight *names* are not listed again here:
every Hugging Face weight name is sent through the layout's own ``rename`` (the single source
of truth), and the export checks that

- the Hugging Face config reads back (through the layout's ``config``) as the model's own
  config, field by field, so anything the family cannot express (ALiBi, a sliding window,
  linear attention, a post-norm decoder, ...) is refused with the field's name;
- every one of our weights lands somewhere in the Hugging Face model.

Families: ``DecoderLM`` with learned positions → ``GPT2LMHeadModel``; with RoPE →
``LlamaForCausalLM``; ``EncoderForMaskedLM`` / ``EncoderModel`` → ``BertForMaskedLM`` /
``BertModel``; a T5-style ``EncoderDecoder`` → ``T5ForConditionalGeneration``. The family is
chosen from the model's class and config (``position``), never from weight names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.config import ModelConfig
from attnlab.data.chat import ChatTemplate
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop import files, hf
from attnlab.models.decoder import DecoderLM
from attnlab.models.encoder import EncoderForMaskedLM, EncoderModel
from attnlab.models.seq2seq import EncoderDecoder

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Exporter:
    """How one attnlab model maps onto one Hugging Face family.

    Attributes:
        layout: the import layout of the family (names and config reading).
        hf_class: the ``transformers`` model class to build.
        hf_config: our config → the family's config fields (``model_type`` included).
        weight: ``(our name as the layout's rename gives it, our state)`` → the Hugging Face tensor.
        sources: our name as the layout's rename gives it → our weights that ``weight`` reads.
    """

    layout: hf.Layout
    hf_class: str
    hf_config: Callable[[ModelConfig], dict[str, Any]]
    weight: Callable[[str, State], torch.Tensor] = lambda name, state: state[name]
    sources: Callable[[str], tuple[str, ...]] = lambda name: (name,)


def _inverse(table: Mapping[str, str], value: str, field: str, family: str) -> str:
    """The first key of an import table (Hugging Face value → ours) that maps to ``value``."""
    for theirs, ours in table.items():
        if ours == value:
            return theirs
    supported = ", ".join(dict.fromkeys(table.values()))
    raise AttnlabError(f"model.{field}='{value}' cannot be exported to Hugging Face {family}; supported: {supported}")


# -- GPT-2 -----------------------------------------------------------------------------


def _gpt2_config(cfg: ModelConfig) -> dict[str, Any]:
    scale = cfg.attention.scale
    return {
        "model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.ff_dim,
        "activation_function": _inverse(hf._GPT2_ACTS, cfg.mlp, "mlp", "GPT-2"),
        "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "scale_attn_weights": scale is None,  # a scale other than 1/√d or 1.0 fails the read-back check
        # GPT-2's default special ids (50256) point outside a smaller vocabulary; the model does not know its
        # tokenizer's ids, so none are claimed.
        "bos_token_id": None, "eos_token_id": None,
    }


def _gpt2_weight(name: str, state: State) -> torch.Tensor:
    """Undo the import's reshaping: fuse q, k, v into ``c_attn`` and go back to Conv1D's (in, out)."""
    tensor = torch.cat([state[n] for n in _gpt2_sources(name)])  # q, k, v stacked for c_attn
    return tensor.t() if name.startswith("blocks.") and tensor.dim() == 2 else tensor


def _gpt2_sources(name: str) -> tuple[str, ...]:
    """Our weights behind one renamed GPT-2 weight."""
    if ".attn.qkv." in name:
        return tuple(name.replace(".qkv.", f".{p}.") for p in ("q_proj", "k_proj", "v_proj"))
    return (name,)


# -- Llama -----------------------------------------------------------------------------


def _llama_config(cfg: ModelConfig) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": _inverse(hf._LLAMA_ROPE, cfg.rope_scaling, "rope_scaling", "Llama"),
                            "rope_theta": cfg.rope_theta}
    if rope["rope_type"] != "default":
        rope["factor"] = cfg.rope_scaling_factor
    return {
        "model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_dim, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps, "rope_parameters": rope, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "attention_dropout": cfg.dropout,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }


# -- BERT ------------------------------------------------------------------------------


def _bert_config(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.type_vocab_size <= 0:
        raise AttnlabError("model.type_vocab_size=0 cannot be exported to Hugging Face BERT, which always adds "
                           "token-type embeddings; train with type_vocab_size >= 1")
    return {
        "model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "intermediate_size": cfg.ff_dim,
        "hidden_act": _inverse(hf._BERT_ACTS, cfg.mlp, "mlp", "BERT"), "layer_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.block_size, "type_vocab_size": cfg.type_vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings, "position_embedding_type": "absolute",
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
    }


# -- T5 --------------------------------------------------------------------------------


def _t5_config(cfg: ModelConfig) -> dict[str, Any]:
    if not cfg.tie_embeddings:
        raise AttnlabError("model.tie_embeddings=false cannot be exported to Hugging Face T5: transformers >= 5 always "
                           "ties T5's head to the shared embedding")
    return {
        "model_type": "t5", "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.head_dim,
        "d_ff": cfg.ff_dim, "num_layers": cfg.n_layer, "num_decoder_layers": cfg.n_decoder_layer or cfg.n_layer,
        "num_heads": cfg.n_head, "n_positions": cfg.block_size,
        "feed_forward_proj": _inverse(hf._T5_MLPS, cfg.mlp, "mlp", "T5"), "layer_norm_epsilon": cfg.norm_eps,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        # A tied head reads decoder outputs scaled by d_model^-0.5, as T5's; an untied one does not.
        "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.tie_embeddings,
        "decoder_start_token_id": cfg.decoder_start_id, "dropout_rate": cfg.dropout,
    }


EXPORTERS: dict[str, Exporter] = {
    "gpt2": Exporter(hf.GPT2, "GPT2LMHeadModel", _gpt2_config, _gpt2_weight, _gpt2_sources),
    "llama": Exporter(hf.LLAMA, "LlamaForCausalLM", _llama_config),
    "bert": Exporter(hf.BERT, "BertForMaskedLM", _bert_config),
    "t5": Exporter(hf.T5, "T5ForConditionalGeneration", _t5_config),
}
"""Hugging Face ``model_type`` → exporter."""


def _family(model: nn.Module) -> str:
    """The Hugging Face family that can hold ``model``, from its config alone."""
    if isinstance(model, (EncoderModel, EncoderForMaskedLM)):
        return "bert"
    if isinstance(model, EncoderDecoder):
        return "t5"
    if not isinstance(model, DecoderLM):
        raise AttnlabError(f"to_hf supports DecoderLM (GPT-2 / Llama), EncoderModel and EncoderForMaskedLM (BERT) "
                           f"and EncoderDecoder (T5) models, got {type(model).__name__}")
    position = model.config.position
    families = {"learned": "gpt2", "rope": "llama"}
    if position not in families:
        raise AttnlabError(f"model.position='{position}' cannot be exported to Hugging Face: GPT-2 needs 'learned' "
                           "positions, Llama 'rope'")
    return families[position]


def _relevant(cfg: ModelConfig) -> dict[str, Any]:
    """The config fields that shape the model's computation, flattened and with defaults resolved."""
    flat = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "attention"}
    flat.update({f"attention.{k}": v for k, v in dataclasses.asdict(cfg.attention).items()})
    flat.update(n_kv_head=cfg.kv_heads, d_ff=cfg.ff_dim, n_decoder_layer=cfg.n_decoder_layer or cfg.n_layer)
    ignored = {"dropout", "attention.backend"}  # training-only
    if cfg.arch != "encoder_decoder":
        ignored |= {"n_decoder_layer", "decoder_start_id"}
    if cfg.arch != "encoder":
        ignored.add("type_vocab_size")
    if cfg.position != "relative":
        ignored |= {"relative_buckets", "relative_max_distance"}
    if cfg.position != "rope":
        ignored |= {"rope_theta", "rope_scaling", "rope_scaling_factor"}
    elif cfg.rope_scaling == "none":
        ignored.add("rope_scaling_factor")
    return {k: v for k, v in flat.items() if k not in ignored}


def _check_expressible(cfg: ModelConfig, hf_cfg: Mapping[str, Any], family: str) -> None:
    """Raise AttnlabError naming the first field the Hugging Face config does not carry over."""
    ours, back = _relevant(cfg), _relevant(EXPORTERS[family].layout.config(hf_cfg))
    for field, value in ours.items():
        if back.get(field) != value:
            raise AttnlabError(f"model.{field}={value!r} cannot be expressed in the Hugging Face {family} layout "
                               f"(it would read back as {back.get(field)!r}); train with a supported setting")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise AttnlabError("to_hf needs the 'transformers' package: pip install attnlab[hf]") from None
    return transformers


def to_hf(model: nn.Module, path: str | Path | None = None, *, tokenizer: Tokenizer | str | Path | None = None,
          max_shard_size: int | str | None = None, chat_template: ChatTemplate | None = None) -> nn.Module:
    """Export an attnlab model as the matching Hugging Face ``transformers`` model.

    Args:
        model: a :class:`~attnlab.models.decoder.DecoderLM`: learned positions (with
            LayerNorm, biases, a GELU MLP) become ``GPT2LMHeadModel``, RoPE (with RMSNorm, SwiGLU,
            no biases, MHA / GQA / MQA) becomes ``LlamaForCausalLM``; or a BERT-style encoder
            (post-norm, learned positions, token types): :class:`~attnlab.models.encoder.EncoderForMaskedLM`
            becomes ``BertForMaskedLM``, :class:`~attnlab.models.encoder.EncoderModel` ``BertModel``
            (whose pooler, which attnlab does not have, keeps transformers' random init); or a T5-style
            :class:`~attnlab.models.seq2seq.EncoderDecoder` (pre-norm RMSNorm, relative position bias,
            ``attention.scale=1.0``, no biases), which becomes ``T5ForConditionalGeneration``.
        path: when given, the directory the Hugging Face model is saved to
            (``save_pretrained``: ``config.json`` and ``model.safetensors``).
        tokenizer: the model's tokenizer (an attnlab :class:`~attnlab.data.Tokenizer` or a
            ``tokenizer.json`` path): its special tokens (end of text, padding, ``[CLS]`` ...
            as the family names them) go into the config's ``eos_token_id`` / ``bos_token_id`` /
            ``pad_token_id``, and with ``path`` ``tokenizer.json`` + ``tokenizer_config.json``
            are written so that ``transformers.AutoTokenizer.from_pretrained(path)`` loads it.
        max_shard_size: split the weights into ``model-0000i-of-0000n.safetensors`` shards of at
            most this size (bytes, or a string such as ``"200MB"``) with a
            ``model.safetensors.index.json``; needs ``path``.
        chat_template: a chat model's template: with ``path`` it goes into ``tokenizer_config.json``
            (``chat_template``, ``bos_token``, ``eos_token``) so ``apply_chat_template`` renders as
            attnlab does, and its end-of-turn tokens become the generation config's ``eos_token_id``
            so ``generate`` stops where ``attnlab chat`` does. Needs ``tokenizer``.

    Returns:
        The ``transformers`` model, float32, in eval mode, with the same outputs as ``model``
        (logits, or for ``BertModel`` the ``last_hidden_state``).

    Raises:
        AttnlabError: ``transformers`` is missing, a config field the family cannot express
            (the message names it), a tokenizer larger than the model's vocabulary, or
            ``max_shard_size`` without ``path`` or unreadable.
        CheckpointError: one of the model's weights has no place in the Hugging Face model
            (e.g. LoRA adapters that were not merged).
    """
    if chat_template is not None and tokenizer is None:
        raise AttnlabError("a chat template needs the model's tokenizer; pass tokenizer= too")
    family = _family(model)
    exporter = EXPORTERS[family]
    cfg: ModelConfig = model.config
    transformers = _transformers()
    shard_size = _shard_size(max_shard_size, path)
    fields = exporter.hf_config(cfg)
    tok = None if tokenizer is None else files.as_tokenizer(tokenizer)
    if tok is not None:
        roles = files.special_tokens(tok, family, cfg.vocab_size)
        fields.update(files.config_ids(tok, roles))
    hf_config = transformers.AutoConfig.for_model(**fields)
    _check_expressible(cfg, hf_config.to_dict(), family)
    hf_class = "BertModel" if isinstance(model, EncoderModel) else exporter.hf_class
    out = getattr(transformers, hf_class)(hf_config)
    # A bare encoder's weights carry the "encoder." prefix the BERT layout names them with.
    prefix = "encoder." if isinstance(model, EncoderModel) else ""
    ours = {prefix + k: v.detach().float() for k, v in model.state_dict().items()}
    used: set[str] = set()
    state = {}
    for key, current in out.state_dict().items():
        name = exporter.layout.rename(key)
        if name is None:
            raise CheckpointError(f"Hugging Face weight '{key}' has no name in attnlab's {family} layout")
        if not name:
            continue  # a buffer the import drops (recomputed from the config): keep transformers' own
        tensor = exporter.weight(name, ours)
        if tensor.shape != current.shape:
            raise CheckpointError(f"weight '{key}' would get shape {tuple(tensor.shape)} from '{name}' but "
                                  f"{hf_class} expects {tuple(current.shape)}")
        state[key] = tensor.clone()
        used.update(exporter.sources(name))
    params = {prefix + n for n, _ in model.named_parameters()}  # tied weights once
    unused = sorted(n for n in params if n not in used and not (cfg.tie_embeddings and n in exporter.layout.tied))
    if unused:
        raise CheckpointError(f"weight '{unused[0]}' has no place in Hugging Face {hf_class} "
                              f"({len(unused)} such); merge or remove adapters (LoRA) before exporting")
    out.load_state_dict(state, strict=False)
    loaded = out.state_dict()
    for key, tensor in state.items():  # a weight transformers ties to another must not be overwritten by it
        if not torch.equal(loaded[key], tensor):
            raise CheckpointError(f"weight '{key}' of {hf_class} is shared with another weight there, but the "
                                  "attnlab model keeps them apart; this combination cannot be exported")
    out = out.float().eval()
    if path is not None:
        kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
        out.save_pretrained(str(path), **kwargs)
        if tok is not None:
            files.save_tokenizer(tok, Path(path), roles, cfg.block_size)
        if chat_template is not None:
            chat_template.save(Path(path))
            stops = chat_template.stop_ids(tok)
            if stops:
                out.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
                out.generation_config.save_pretrained(str(path))
    return out


def _shard_size(max_shard_size: int | str | None, path: str | Path | None) -> int | None:
    """``max_shard_size`` in bytes (None: one file), checked before anything is written."""
    if max_shard_size is None:
        return None
    if path is None:
        raise AttnlabError("max_shard_size needs a path to save the shards to: to_hf(model, path, max_shard_size=...)")
    from transformers.utils.hub import convert_file_size_to_int

    try:
        size = convert_file_size_to_int(max_shard_size)
    except (ValueError, TypeError):
        size = 0
    if not isinstance(size, int) or size <= 0:
        raise AttnlabError(f"max_shard_size={max_shard_size!r} is not a size; give bytes (int) or e.g. '200MB'")
    return size
