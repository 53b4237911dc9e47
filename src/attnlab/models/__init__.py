"""Models assembled from blocks by config: ``build(config) -> nn.Module``."""

from __future__ import annotations

from torch import nn

from attnlab.config import Config, ModelConfig
from attnlab.models.decoder import DecoderLM
from attnlab.models.encoder import EncoderForMaskedLM, EncoderModel, MLMHead, SequenceClassifier
from attnlab.models.gat import GAT, GATLayer
from attnlab.models.seq2seq import EncoderDecoder, Seq2SeqCache, Seq2SeqMemory

ARCHS: dict[str, type[nn.Module]] = {
    "decoder": DecoderLM, "encoder": EncoderForMaskedLM, "encoder_decoder": EncoderDecoder,
}


def build(config: Config | ModelConfig) -> nn.Module:
    """Build the model a config describes (randomly initialised).

    Args:
        config: a whole :class:`~attnlab.config.Config` or just its ``model`` section.

    Returns:
        An ``nn.Module`` whose ``forward(input_ids, ...)`` returns (B, T, V) logits: next-token
        logits for ``arch: decoder`` (:class:`DecoderLM`), masked-token logits at every
        position for ``arch: encoder`` (:class:`EncoderForMaskedLM`, whose ``.encoder`` gives
        hidden states); teacher-forced logits ``forward(input_ids, decoder_input_ids,
        attention_mask)`` for ``arch: encoder_decoder`` (:class:`EncoderDecoder`, which also
        has ``encode`` / ``make_cache`` / ``decode``).
    """
    cfg = config.model if isinstance(config, Config) else config
    return ARCHS[cfg.arch](cfg)


__all__ = [
    "ARCHS", "DecoderLM", "EncoderDecoder", "EncoderForMaskedLM", "EncoderModel", "GAT", "GATLayer", "MLMHead",
    "Seq2SeqCache", "Seq2SeqMemory", "SequenceClassifier", "build",
]
