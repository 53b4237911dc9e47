"""Loading a model to chat with (``attnlab chat``, ``attnlab generate --chat``): a fine-tuned run or a pretrained one.

A fine-tuned run (``RUN`` or ``RUN/model`` with ``task.json``, written by ``attnlab finetune lm``
or ``sft``) is read by :func:`attnlab.finetune.saved.load_finetuned`; any other path is a run or
checkpoint folder of ``attnlab train`` (:func:`attnlab.cli._common.load_for_decoding`). The
template comes from :func:`attnlab.data.chat.template_for` on the folder holding the tokenizer:
its ``tokenizer_config.json`` (what ``sft`` writes), else ChatML when the tokenizer has
``<|im_start|>``/``<|im_end|>``, else the plain ``User:/Assistant:`` template.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from attnlab.data import Tokenizer
    from attnlab.data.chat import ChatTemplate
    from attnlab.generate.quantize import WeightsReport


def is_finetuned(path: str | Path) -> bool:
    """Whether ``path`` is a fine-tuned run (``RUN/model/task.json``) or its model folder (``task.json``)."""
    from attnlab.finetune.saved import MODEL_DIR

    p = Path(path)
    return (p / MODEL_DIR / "task.json").is_file() or (p / "task.json").is_file()


def _check_causal(model: torch.nn.Module, what: str) -> None:
    """Refuse a model that is not a decoder-only LM (one line naming ``what`` it is)."""
    from attnlab.errors import AttnlabError
    from attnlab.models.protocols import CausalLM, is_encoder_decoder

    if is_encoder_decoder(model) or not isinstance(model, CausalLM):
        raise AttnlabError(f"{what} holds a {type(model).__name__}, not a decoder-only language model; chat with "
                           "a run of attnlab train (model.arch=decoder) or a model fine-tuned with the lm or sft task")


def _load_finetuned(path: str, dev: torch.device) -> tuple[torch.nn.Module, Tokenizer, Path]:
    """Model, tokenizer and model folder of a fine-tuned causal LM (LoRA layers merged into plain linears)."""
    from attnlab.errors import AttnlabError
    from attnlab.finetune.lora import remove_lora
    from attnlab.finetune.saved import MODEL_DIR, load_finetuned

    folder = Path(path) / MODEL_DIR if (Path(path) / MODEL_DIR / "task.json").is_file() else Path(path)
    task, model, tok = load_finetuned(folder, dev)
    _check_causal(model, f"'{folder}' (a fine-tuned {task.name} model)")
    if tok is None:
        raise AttnlabError(f"'{folder}' has no tokenizer.json; re-run the fine-tuning, which saves it")
    remove_lora(model, merge=True)  # inference: one matmul per layer, and --quantize reaches every linear
    return model, tok, folder


def load_chat_model(path: str, device: str = "auto", dtype: str = "auto", quantize: str = "none",
                    ) -> tuple[torch.nn.Module, Tokenizer, ChatTemplate, torch.device, WeightsReport]:
    """Model (eval mode, weights converted per ``dtype``/``quantize``), tokenizer, chat template, device
    and weights report of a fine-tuned or pretrained run.

    The caller prints :func:`chat_lines` on stderr once its own checks passed, so that an error
    stays the only line.

    Raises:
        AttnlabError: a missing or damaged run, a model that is not a decoder-only LM, no tokenizer,
            or an unsupported ``dtype``/``quantize`` combination (one line).
    """
    from attnlab.cli._common import load_for_decoding, torch_device
    from attnlab.data.chat import template_for
    from attnlab.errors import AttnlabError
    from attnlab.generate.quantize import prepare_weights, resolve_inference_precision

    if not Path(path).exists():
        raise AttnlabError(f"'{path}' not found; pass a fine-tuned run (RUN or RUN/model) or a run or checkpoint "
                           "folder of attnlab train")
    if is_finetuned(path):
        dev = torch_device(device)
        resolve_inference_precision(dtype, quantize, dev)  # refuse before loading
        model, tok, folder = _load_finetuned(path, dev)
        weights = prepare_weights(model, dev, dtype, quantize)
    else:
        model, tok, ckpt, dev, weights = load_for_decoding(path, device, dtype, quantize)
        _check_causal(model, f"'{ckpt.path}' (model.arch={ckpt.config.model.arch})")
        folder = ckpt.path
    return model, tok, template_for(folder, tok), dev, weights


def chat_lines(template: ChatTemplate, weights: WeightsReport) -> str:
    """What ``chat`` and ``generate --chat`` print on stderr: the template used and the weights."""
    from attnlab.data.chat import template_name

    return f"chat template: {template_name(template)}\n{weights.line()}"
