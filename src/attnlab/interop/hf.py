"""Import Hugging Face checkpoints into attnlab models, one *layout* per model family.

A :class:`Layout` knows how to read a family's ``config.json`` into a
:class:`~attnlab.config.ModelConfig`, which attnlab model to build, and how each of the
family's weight names maps to ours. :data:`LAYOUTS` is keyed by the Hugging Face
``model_type``:

- ``"bert"``: ``BertModel`` → :class:`~attnlab.models.encoder.EncoderModel`,
  ``BertForMaskedLM`` / ``BertForPreTraining`` → :class:`~attnlab.models.encoder.EncoderForMaskedLM`;
- ``"t5"``: ``T5ForConditionalGeneration`` and ``T5Model`` →
  :class:`~attnlab.models.seq2seq.EncoderDecoder` (T5 v1.0 ``relu`` and v1.1 ``gated-gelu``);
- ``"gpt2"``: ``GPT2LMHeadModel`` / ``GPT2Model`` → :class:`~attnlab.models.decoder.DecoderLM`
  (Conv1D weights transposed, the fused ``c_attn`` split into q, k, v);
- ``"llama"``: ``LlamaForCausalLM`` → :class:`~attnlab.models.decoder.DecoderLM` (RoPE, RMSNorm,
  SwiGLU, GQA; our RoPE rotates the two halves of the head dim as Llama does, so q and k
  need no permutation).

``transformers`` is only needed to pass a model
object; a local directory is read with ``safetensors`` (one file or shards, see
:mod:`attnlab.interop.files`; ``torch.load(weights_only=True)`` for ``pytorch_model.bin``), and
its ``tokenizer.json`` comes along on request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.config import AttentionConfig, ModelConfig
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.interop import files
from attnlab.io.weights import load_weights
from attnlab.models.decoder import DecoderLM
from attnlab.models.encoder import EncoderForMaskedLM, EncoderModel
from attnlab.models.seq2seq import EncoderDecoder


@dataclass(frozen=True)
class Layout:
    """How one Hugging Face model family maps onto attnlab.

    Attributes:
        name: the family (the Hugging Face ``model_type``).
        architectures: Hugging Face classes whose weights this layout can import.
        config: ``config.json`` dict → our :class:`ModelConfig` (raises AttnlabError when unsupported).
        rename: Hugging Face weight name → our name, ``""`` for a weight we deliberately drop,
            or None for a name we do not know (an error).
        build: ``(cfg, state)`` → the model to load ``state`` (our names) into; it may complete
            ``state`` (e.g. a head the checkpoint leaves implicit) or reject it.
        tied: our names of weights shared with the token embedding when ``cfg.tie_embeddings``
            (dropped from the checkpoint's weights before loading).
    """

    name: str
    architectures: tuple[str, ...]
    config: Callable[[Mapping[str, Any]], ModelConfig]
    rename: Callable[[str], str | None]
    build: Callable[[ModelConfig, dict[str, torch.Tensor]], nn.Module]
    tied: tuple[str, ...] = ()


def _require(hf: Mapping[str, Any], family: str, keys: tuple[str, ...]) -> None:
    """Raise CheckpointError naming the first of ``keys`` that ``config.json`` lacks."""
    missing = [k for k in keys if k not in hf]
    if missing:
        raise CheckpointError(f"{family} config.json lacks '{missing[0]}'; is it a complete Hugging Face config?")


# -- BERT ------------------------------------------------------------------------------

_BERT_ACTS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}

_BERT_NAMES = {  # Hugging Face suffix → ours, inside encoder layer i
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.o_proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
    "output.LayerNorm": "mlp_norm",
    # outside the layers
    "embeddings.word_embeddings": "encoder.tok_emb",
    "embeddings.position_embeddings": "encoder.pos",
    "embeddings.token_type_embeddings": "encoder.type_emb",
    "embeddings.LayerNorm": "encoder.emb_norm",
    "cls.predictions.transform.dense": "head.dense",
    "cls.predictions.transform.LayerNorm": "head.norm",
    "cls.predictions.decoder": "head.decoder",
}
_BERT_DROPPED = ("embeddings.position_ids", "pooler.", "cls.seq_relationship.")


def _bert_config(hf: Mapping[str, Any]) -> ModelConfig:
    _require(hf, "BERT", ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"))
    act = hf.get("hidden_act", "gelu")
    if act not in _BERT_ACTS:
        raise AttnlabError(f"BERT hidden_act '{act}' is not supported; supported: {', '.join(_BERT_ACTS)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise AttnlabError(f"BERT position_embedding_type '{hf['position_embedding_type']}' is not supported; "
                           "only 'absolute'")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise AttnlabError("BERT configured as a decoder (is_decoder / add_cross_attention) is not supported")
    return ModelConfig(
        arch="encoder", vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 512),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
        d_ff=hf.get("intermediate_size"), norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_placement="post", mlp=_BERT_ACTS[act], position="learned", bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", 0.0),
    )


def _bert_rename(key: str) -> str | None:
    key = key.removeprefix("bert.")
    key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # pre-2019 LayerNorm names
    if key.startswith(_BERT_DROPPED):
        return ""
    if key == "cls.predictions.bias":
        return "head.decoder.bias"
    stem, _, leaf = key.rpartition(".")
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", stem)
    if m:
        ours = _BERT_NAMES.get(m.group(2))
        if ours is None or ours.startswith(("encoder.", "head.")):
            return None
        return f"encoder.blocks.{m.group(1)}.{ours}.{leaf}"
    ours = _BERT_NAMES.get(stem)
    return None if ours is None or not ours.startswith(("encoder.", "head.")) else f"{ours}.{leaf}"


def _bert_build(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    if any(k.startswith("head.") for k in state):
        return EncoderForMaskedLM(cfg)
    return _Bare(EncoderModel(cfg))


class _Bare(nn.Module):
    """Holds an encoder under the name ``encoder`` so both BERT builds share one naming."""

    def __init__(self, encoder: EncoderModel):
        super().__init__()
        self.encoder = encoder


BERT = Layout("bert", ("BertModel", "BertForMaskedLM", "BertForPreTraining"), _bert_config, _bert_rename, _bert_build,
              tied=("head.decoder.weight",))


# -- T5 --------------------------------------------------------------------------------

_T5_MLPS = {"relu": "relu", "gated-gelu": "geglu", "gated-gelu_new": "geglu", "gated-silu": "swiglu",
            "gelu": "gelu_exact", "gelu_new": "gelu"}
"""T5 ``feed_forward_proj`` → our ``mlp`` (``gated-gelu`` is the tanh GELU, "gelu_new")."""

_T5_SUBLAYERS = {"encoder": ("attn", "mlp"), "decoder": ("attn", "cross_attn", "mlp")}
"""Our sublayer behind each ``block.i.layer.j`` of a T5 stack."""
_T5_MODULES = {"SelfAttention": "attn", "EncDecAttention": "cross_attn", "DenseReluDense": "mlp"}
_T5_NORMS = {"attn": "attn_norm", "cross_attn": "cross_norm", "mlp": "mlp_norm"}
_T5_LEAVES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
              "wi": "up_proj", "wi_0": "gate_proj", "wi_1": "up_proj", "wo": "down_proj"}
_T5_TOP = {"shared.weight": "tok_emb.weight", "encoder.embed_tokens.weight": "tok_emb.weight",
           "decoder.embed_tokens.weight": "tok_emb.weight", "lm_head.weight": "lm_head.weight",
           "encoder.final_layer_norm.weight": "encoder.final_norm.weight",
           "decoder.final_layer_norm.weight": "decoder.final_norm.weight"}


def _t5_tied(hf: Mapping[str, Any]) -> bool:
    """Whether T5 scales the decoder output by d_model^-0.5 before the head (attnlab: a tied head).

    transformers >= 5 writes ``scale_decoder_outputs`` (and always ``tie_word_embeddings: true``);
    older configs say ``tie_word_embeddings: false`` for T5 v1.1, which neither ties nor scales.
    """
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return bool(hf.get("tie_word_embeddings", True))


def _t5_config(hf: Mapping[str, Any]) -> ModelConfig:
    _require(hf, "T5", ("vocab_size", "d_model", "d_kv", "num_layers", "num_heads"))
    if hf["d_kv"] * hf["num_heads"] != hf["d_model"]:
        raise AttnlabError(f"T5 with d_kv * num_heads = {hf['d_kv']} * {hf['num_heads']} != d_model = {hf['d_model']} "
                           "is not supported: attnlab's heads split d_model (head dim = d_model / n_head)")
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _T5_MLPS:
        raise AttnlabError(f"T5 feed_forward_proj '{proj}' is not supported; supported: {', '.join(_T5_MLPS)}")
    start = hf.get("decoder_start_token_id")
    return ModelConfig(
        arch="encoder_decoder", vocab_size=hf["vocab_size"], block_size=hf.get("n_positions") or 512,
        n_layer=hf["num_layers"], n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
        n_head=hf["num_heads"], d_model=hf["d_model"], d_ff=hf.get("d_ff", 4 * hf["d_model"]), norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), norm_placement="pre", mlp=_T5_MLPS[proj], position="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), bias=False,
        tie_embeddings=_t5_tied(hf), embed_scale=False,
        decoder_start_id=start if start is not None else (hf.get("pad_token_id") or 0),
        dropout=hf.get("dropout_rate", 0.0), attention=AttentionConfig(scale=1.0),
    )


def _t5_rename(key: str) -> str | None:
    if key in _T5_TOP:
        return _T5_TOP[key]
    m = re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.(\w+)(?:\.(\w+))?\.weight", key)
    if m is None:
        return None
    stack, block, j, module, leaf = m.group(1), m.group(2), int(m.group(3)), m.group(4), m.group(5)
    sublayers = _T5_SUBLAYERS[stack]
    if j >= len(sublayers):
        return None
    ours = sublayers[j]
    if leaf is None:
        return f"{stack}.blocks.{block}.{_T5_NORMS[ours]}.weight" if module == "layer_norm" else None
    if _T5_MODULES.get(module) != ours:
        return None
    if leaf == "relative_attention_bias":
        if block != "0":
            return None
        # One table per stack, in its first self-attention layer; old checkpoints also carry an
        # unused one in the first cross-attention layer.
        return f"{stack}.pos.relative_attention_bias.weight" if ours == "attn" else ""
    if leaf not in _T5_LEAVES or (ours == "mlp") != leaf.startswith("w"):
        return None
    return f"{stack}.blocks.{block}.{ours}.{_T5_LEAVES[leaf]}.weight"


def _t5_build(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    emb, head = state.get("tok_emb.weight"), state.get("lm_head.weight")
    if emb is not None and cfg.tie_embeddings and head is not None and not torch.equal(head, emb):
        raise AttnlabError("T5 checkpoint scales decoder outputs (tie_word_embeddings / scale_decoder_outputs) but "
                           "its lm_head differs from the shared embedding; attnlab scales the head's input only for "
                           "a tied head, so this combination is not supported")
    if emb is not None and not cfg.tie_embeddings and head is None:
        # transformers >= 5 ties T5's head to the embedding and omits it from checkpoints (and
        # T5Model has no head): the head is the shared embedding, without output scaling.
        state["lm_head.weight"] = emb
    return EncoderDecoder(cfg)


T5 = Layout("t5", ("T5ForConditionalGeneration", "T5Model"), _t5_config, _t5_rename, _t5_build,
            tied=("lm_head.weight",))

# -- GPT-2 -----------------------------------------------------------------------------

_GPT2_ACTS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu"}
"""GPT-2 ``activation_function`` → our ``mlp`` ("gelu_new" is the tanh GELU)."""

_GPT2_NAMES = {  # Hugging Face stem → ours, inside block i (``h.i``)
    "ln_1": "attn_norm", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.o_proj",
    "ln_2": "mlp_norm", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj",
}
_GPT2_TOP = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos.weight", "ln_f.weight": "final_norm.weight",
             "ln_f.bias": "final_norm.bias", "lm_head.weight": "lm_head.weight"}


def _gpt2_config(hf: Mapping[str, Any]) -> ModelConfig:
    _require(hf, "GPT-2", ("vocab_size", "n_embd", "n_layer", "n_head"))
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTS:
        raise AttnlabError(f"GPT-2 activation_function '{act}' is not supported; supported: {', '.join(_GPT2_ACTS)}")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise AttnlabError("GPT-2 scale_attn_by_inverse_layer_idx is not supported; attnlab scales every layer alike")
    if hf.get("add_cross_attention"):
        raise AttnlabError("GPT-2 with add_cross_attention is not supported; attnlab's decoder-only LM has no "
                           "cross-attention")
    return ModelConfig(
        arch="decoder", vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
        n_head=hf["n_head"], d_model=hf["n_embd"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"], norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_placement="pre", mlp=_GPT2_ACTS[act], position="learned",
        bias=True, tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("resid_pdrop", 0.0),
        attention=AttentionConfig(scale=None if hf.get("scale_attn_weights", True) else 1.0),
    )


def _gpt2_rename(key: str) -> str | None:
    key = key.removeprefix("transformer.")
    if key in _GPT2_TOP:
        return _GPT2_TOP[key]
    m = re.fullmatch(r"h\.(\d+)\.(.+)\.(\w+)", key)
    if m is None:
        return None
    if m.group(2) == "attn" and m.group(3) in ("bias", "masked_bias"):
        return ""  # the causal-mask buffers of old checkpoints
    ours = _GPT2_NAMES.get(m.group(2))
    return None if ours is None or m.group(3) not in ("weight", "bias") else f"blocks.{m.group(1)}.{ours}.{m.group(3)}"


def _gpt2_build(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    for name in [k for k in state if k.startswith("blocks.") and state[k].dim() == 2]:
        state[name] = state[name].t()  # GPT-2's Conv1D stores (in, out); nn.Linear (out, in)
    for name in [k for k in state if ".attn.qkv." in k]:
        fused = state.pop(name)  # (3·D, D) weight or (3·D,) bias: q, k, v stacked
        for proj, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0), strict=False):
            state[name.replace(".qkv.", f".{proj}.")] = part
    if "lm_head.weight" not in state and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]  # GPT2Model: GPT-2's head is the embedding
    return DecoderLM(cfg)


GPT2 = Layout("gpt2", ("GPT2LMHeadModel", "GPT2Model"), _gpt2_config, _gpt2_rename, _gpt2_build,
              tied=("lm_head.weight",))


# -- Llama -----------------------------------------------------------------------------

_LLAMA_NAMES = {  # Hugging Face stem → ours, inside block i (``model.layers.i``)
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj", "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm",
}
_LLAMA_TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight",
              "lm_head.weight": "lm_head.weight"}
_LLAMA_ROPE = {"default": "none", "linear": "linear"}
"""Hugging Face ``rope_type`` → our ``rope_scaling`` (HF "linear" is position interpolation, as ours)."""


def _llama_rope(hf: Mapping[str, Any]) -> tuple[float, str, float]:
    """(theta, our rope_scaling, factor) from ``rope_theta`` / ``rope_scaling`` (transformers < 5)
    or ``rope_parameters`` (transformers >= 5)."""
    spec = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind not in _LLAMA_ROPE:
        raise AttnlabError(f"Llama rope scaling '{kind}' is not supported; supported: {', '.join(_LLAMA_ROPE)}")
    factor = float(spec.get("factor", 1.0)) if kind != "default" else 1.0
    return float(spec.get("rope_theta") or hf.get("rope_theta") or 10000.0), _LLAMA_ROPE[kind], factor


def _llama_config(hf: Mapping[str, Any]) -> ModelConfig:
    _require(hf, "Llama", ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads"))
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d // heads) or d % heads:
        raise AttnlabError(f"Llama head_dim {hf.get('head_dim')} with hidden_size / num_attention_heads = {d} / "
                           f"{heads} is not supported: attnlab's heads split hidden_size (head dim = d_model / n_head)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise AttnlabError(f"Llama {flag}: true is not supported; attnlab's Llama layout has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise AttnlabError(f"Llama hidden_act '{hf['hidden_act']}' is not supported; only 'silu' (SwiGLU)")
    theta, scaling, factor = _llama_rope(hf)
    return ModelConfig(
        arch="decoder", vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=heads, n_kv_head=hf.get("num_key_value_heads") or heads, d_model=d,
        d_ff=hf["intermediate_size"], norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), norm_placement="pre",
        mlp="swiglu", position="rope", rope_theta=theta, rope_scaling=scaling, rope_scaling_factor=factor,
        bias=False, tie_embeddings=hf.get("tie_word_embeddings", False), dropout=hf.get("attention_dropout", 0.0),
    )


def _llama_rename(key: str) -> str | None:
    if key in _LLAMA_TOP:
        return _LLAMA_TOP[key]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(\w+)", key)
    if m is None:
        return None
    if m.group(2) == "self_attn.rotary_emb" and m.group(3) == "inv_freq":
        return ""  # recomputed from rope_theta
    ours = _LLAMA_NAMES.get(m.group(2))
    return None if ours is None or m.group(3) != "weight" else f"blocks.{m.group(1)}.{ours}.weight"


LLAMA = Layout("llama", ("LlamaForCausalLM",), _llama_config, _llama_rename, lambda cfg, state: DecoderLM(cfg),
               tied=("lm_head.weight",))

LAYOUTS: dict[str, Layout] = {"bert": BERT, "t5": T5, "gpt2": GPT2, "llama": LLAMA}
"""Hugging Face ``model_type`` → layout."""


# -- reading checkpoints ----------------------------------------------------------------


WeightLoader = Callable[[], Mapping[str, torch.Tensor]]


def _read_dir(path: Path) -> tuple[dict[str, Any], WeightLoader]:
    """config.json of a saved Hugging Face model directory, and a loader for its weights."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"'{path}' has no config.json; pass a Hugging Face model directory or model object")
    try:
        hf_cfg = json.loads((path / "config.json").read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{path / 'config.json'}' is not valid JSON ({str(e).splitlines()[0]}); "
                              "re-download or re-save the model") from None
    if not isinstance(hf_cfg, dict):
        raise CheckpointError(f"'{path / 'config.json'}' holds a JSON {type(hf_cfg).__name__}, not a model config "
                              "object; re-download or re-save the model")
    return hf_cfg, lambda: files.read_weights(path)


def _read(model_or_path: Any) -> tuple[dict[str, Any], WeightLoader]:
    """The Hugging Face config dict and a weight loader, from a directory or a model object."""
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_dir():
            raise CheckpointError(f"'{path}' is not a directory; pass a local Hugging Face model directory "
                                  "(hub names are not downloaded) or a transformers model")
        return _read_dir(path)
    cfg = getattr(model_or_path, "config", None)
    if isinstance(model_or_path, nn.Module) and hasattr(cfg, "to_dict"):
        return cfg.to_dict(), model_or_path.state_dict
    raise AttnlabError(f"from_hf expects a transformers model or a directory path, got {type(model_or_path).__name__}")


def from_hf(model_or_path: str | Path | nn.Module, *,
            with_tokenizer: bool = False) -> nn.Module | tuple[nn.Module, Tokenizer | None]:
    """Import a Hugging Face model into the matching attnlab model.

    Args:
        model_or_path: a ``transformers`` model object, or a local directory with
            ``config.json`` and ``model.safetensors``, shards listed by
            ``model.safetensors.index.json``, or ``pytorch_model.bin``.
        with_tokenizer: also return the directory's tokenizer (``tokenizer.json``, or
            ``vocab.json`` + ``merges.txt``): ``(model, tokenizer)``, the tokenizer None when
            there is none (always for a model object).

    Returns:
        For BERT: an :class:`~attnlab.models.encoder.EncoderModel` (forward → (B, T, d)
        hidden states, as ``BertModel``'s ``last_hidden_state``; the pooler is dropped) when
        the checkpoint has no MLM head, else an
        :class:`~attnlab.models.encoder.EncoderForMaskedLM` (forward → (B, T, V) logits).
        For T5 (``T5ForConditionalGeneration`` or ``T5Model``): an
        :class:`~attnlab.models.seq2seq.EncoderDecoder` whose
        ``forward(input_ids, decoder_input_ids, attention_mask)`` gives the logits of
        ``T5ForConditionalGeneration``; a ``T5Model`` has no head of its own, so its logits
        come from the shared embedding, as transformers ties them.
        For GPT-2 and Llama: a :class:`~attnlab.models.decoder.DecoderLM` (forward → (B, T, V)
        logits of ``GPT2LMHeadModel`` / ``LlamaForCausalLM``; a ``GPT2Model``'s head is its
        token embedding).
        The model is in eval mode, in float32. With ``with_tokenizer``: ``(model, tokenizer or None)``.

    Raises:
        AttnlabError: an unsupported ``model_type``, architecture or config option.
        CheckpointError: a missing file, an unknown weight name, a missing weight, or a shape mismatch.
    """
    hf_cfg, read_state = _read(model_or_path)
    is_dir = isinstance(model_or_path, (str, Path))
    model_type = hf_cfg.get("model_type")
    layout = LAYOUTS.get(model_type) if isinstance(model_type, str) else None
    if layout is None:
        raise AttnlabError(f"Hugging Face model_type '{model_type}' is not supported; supported: {', '.join(LAYOUTS)}")
    archs = hf_cfg.get("architectures") or []
    if archs and not set(archs) & set(layout.architectures):
        raise AttnlabError(f"architecture {archs[0]} is not supported for '{layout.name}'; supported: "
                           f"{', '.join(layout.architectures)}")
    try:
        cfg = layout.config(hf_cfg)
    except (TypeError, ValueError) as e:  # e.g. "n_embd": "wide"
        raise CheckpointError(f"{layout.name} config.json has a value of the wrong type ({e}); "
                              "is it a complete Hugging Face config?") from None
    state: dict[str, torch.Tensor] = {}
    for key, tensor in read_state().items():
        ours = layout.rename(key)
        if ours is None:
            raise CheckpointError(f"weight '{key}' has no place in attnlab's {layout.name} layout; "
                                  f"is this a {'/'.join(layout.architectures)} checkpoint?")
        if ours:
            state[ours] = tensor
    model = layout.build(cfg, state)
    if cfg.tie_embeddings:
        for name in layout.tied:  # shared with the word embeddings
            state.pop(name, None)
    load_weights(model, state, source=f"the weights of '{model_or_path}'" if is_dir else "the model's weights",
                 fix="the weights do not fit the config.json beside them; re-save the model")  # strict: names, shapes
    out = model.encoder if isinstance(model, _Bare) else model
    out = out.float().eval()
    if not with_tokenizer:
        return out
    return out, files.read_tokenizer(Path(model_or_path)) if is_dir else None
