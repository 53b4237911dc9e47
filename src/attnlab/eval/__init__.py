"""Evaluation: language-model loss and perplexity, classification, SQuAD, BLEU, chrF and ROUGE."""

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
    "METRICS", "accuracy", "bleu", "chrf", "compute", "confusion_matrix", "evaluate_lm", "exact_match", "f1",
    "normalize_answer", "perplexity", "precision_recall_f1", "rouge", "squad_scores",
]
