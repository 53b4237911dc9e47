"""Evaluation: language-model loss, perplexity and bits per byte."""

from attnlab.eval.perplexity import evaluate_lm

__all__ = ["evaluate_lm"]
