"""Inputs, logit comparison and float32 tolerances shared by the Hugging Face interop tests."""

import torch

V = 101  # vocabulary of the tiny GPT-2 / Llama checkpoints (tests/interop/conftest.py TINY_HF)

SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}

# Largest |ours − transformers| allowed in float32 (measured on CPU; a tanh-vs-exact GELU mix-up is far above):
# GPT-2, Llama, tiny BERT, export and file round trips <= 1.5e-6 observed (logits up to ~6).
F32_ATOL = 5e-6
# T5 logits (up to ~26 with an untied head): 9.5e-6 observed; the real MiniLM's hidden states: 3.0e-6.
F32_ATOL_WIDE = 2e-5


def random_ids(seed: int = 1) -> torch.Tensor:
    """(3, 12) random token ids below :data:`V`."""
    return torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(seed))


def max_logit_diff(ours, ref, input_ids: torch.Tensor) -> float:
    """Largest |our logits − transformers' logits| on ``input_ids``."""
    with torch.no_grad():
        return (ours(input_ids) - ref(input_ids).logits).abs().max().item()
