"""Evaluation: language-model loss and perplexity, classification, SQuAD, BLEU, chrF and ROUGE
(tokenized by the references' language: :func:`detect_lang`)."""

from attnlab.eval.lang import detect_lang
from attnlab.eval.lm import evaluate_lm
from attnlab.eval.metrics import (
    METRICS,
    accuracy,
    bleu,
    chrf,
    compute,
    confusion_matrix,
    exact_match,
    f1,
    normalize_answer,
    perplexity,
    precision_recall_f1,
    rouge,
    squad_scores,
)

__all__ = [
    "METRICS", "accuracy", "bleu", "chrf", "compute", "confusion_matrix", "detect_lang", "evaluate_lm", "exact_match",
    "f1", "normalize_answer", "perplexity", "precision_recall_f1", "rouge", "squad_scores",
]
