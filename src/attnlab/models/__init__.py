"""Models assembled from blocks by config: ``build(config) -> nn.Module``.

Transformers built from a :class:`~attnlab.config.ModelConfig` (:func:`build` picks one by
``arch``): :class:`DecoderLM`, :class:`EncoderModel` / :class:`EncoderForMaskedLM` /
:class:`SequenceClassifier`, :class:`EncoderDecoder`, and :class:`VisionTransformer` (an
encoder over image patches), all running one :class:`~attnlab.models.stack.TransformerStack`
under the mask :func:`~attnlab.models.stack.forward_mask` builds; what generation needs of a
model is written as protocols in :mod:`attnlab.models.protocols`. Beside them: graph attention
(:class:`GAT`) and the recurrent baselines attention was invented for (:class:`RNNLanguageModel`,
:class:`Seq2SeqRNN`).
"""

from __future__ import annotations

from torch import nn

from attnlab.config import Config, ModelConfig
from attnlab.models.decoder import DecoderLM
from attnlab.models.encoder import EncoderForMaskedLM, EncoderModel, EncoderWithHead, MLMHead, SequenceClassifier
from attnlab.models.gat import GAT, GATLayer
from attnlab.models.rnn import RNNLanguageModel, RNNLMConfig, Seq2SeqConfig, Seq2SeqRNN
from attnlab.models.seq2seq import EncoderDecoder, Seq2SeqCache, Seq2SeqMemory
from attnlab.models.stack import TransformerStack, forward_mask
from attnlab.models.vit import VisionTransformer

ARCHS: dict[str, type[nn.Module]] = {
    "decoder": DecoderLM, "encoder": EncoderForMaskedLM, "encoder_decoder": EncoderDecoder,
}


def build(config: Config | ModelConfig) -> nn.Module:
    """Build the model a config describes (randomly initialised), by ``model.arch``.

    - ``decoder``: :class:`DecoderLM`; ``forward(input_ids)`` returns (B, T, V) next-token logits.
    - ``encoder``: :class:`EncoderForMaskedLM`; ``forward(input_ids, attention_mask,
      token_type_ids)`` returns (B, T, V) masked-token logits at every position, and its
      ``.encoder`` (an :class:`EncoderModel`) gives the hidden states.
    - ``encoder_decoder``: :class:`EncoderDecoder` (original Transformer / T5): an encoder over
      the source and a causal decoder that cross-attends to it, sharing one token embedding.
      ``forward(input_ids, decoder_input_ids, attention_mask)`` returns (B, T, V) teacher-forced
      logits over the decoder inputs (the target shifted right behind ``decoder_start_id``);
      ``encode`` / ``make_cache`` / ``decode`` run it step by step, as
      :func:`attnlab.generate.generate` does.

    Args:
        config: a whole :class:`~attnlab.config.Config` or just its ``model`` section.

    Returns:
        The ``nn.Module``.
    """
    cfg = config.model if isinstance(config, Config) else config
    return ARCHS[cfg.arch](cfg)


__all__ = [
    "ARCHS", "DecoderLM", "EncoderDecoder", "EncoderForMaskedLM", "EncoderModel", "EncoderWithHead", "GAT", "GATLayer",
    "MLMHead", "RNNLMConfig", "RNNLanguageModel", "Seq2SeqCache", "Seq2SeqConfig", "Seq2SeqMemory", "Seq2SeqRNN",
    "SequenceClassifier", "TransformerStack", "VisionTransformer", "build", "forward_mask",
]
