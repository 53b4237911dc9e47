"""``attnlab convert SRC OUT``: Hugging Face folder ⇄ attnlab checkpoint.

- SRC is a Hugging Face folder (``config.json`` + safetensors): OUT becomes an attnlab run
  folder (a step-0 checkpoint with config and tokenizer) that ``attnlab generate``,
  ``attnlab eval`` and ``attnlab finetune init=OUT`` read.
- SRC is an attnlab run or checkpoint folder, or a causal-LM fine-tuning run (``lm``, ``sft``,
  ``dpo``; LoRA adapters merged, the chat template kept): OUT becomes a Hugging Face folder that
  ``transformers.AutoModel*.from_pretrained(OUT)`` loads, with the tokenizer
  (``tokenizer.json`` + ``tokenizer_config.json``) that ``AutoTokenizer.from_pretrained(OUT)`` loads;
  ``--max-shard-size 200MB`` splits the weights into shards.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert between Hugging Face folders and attnlab checkpoints",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", help="a Hugging Face folder (config.json) or an attnlab run/checkpoint folder")
    p.add_argument("out", help="the folder to write (must not exist)")
    p.add_argument("--max-shard-size", default=None,
                   help="attnlab → Hugging Face: shard the weights, e.g. 200MB (default: one file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.errors import AttnlabError

    src, out = Path(args.source), Path(args.out)
    if not src.exists():
        raise AttnlabError(f"'{src}' not found; give a Hugging Face folder or an attnlab run folder")
    if out.exists():
        raise AttnlabError(f"'{out}' already exists; choose a new output folder (nothing is overwritten)")
    if (src / "config.json").is_file():
        if args.max_shard_size is not None:
            raise AttnlabError("--max-shard-size applies to attnlab → Hugging Face only; drop it")
        _hf_to_attnlab(src, out)
    else:
        size = args.max_shard_size
        _attnlab_to_hf(src, out, int(size) if size is not None and size.isdigit() else size)
    return 0


def _hf_to_attnlab(src: Path, out: Path) -> None:
    from attnlab.config import Config
    from attnlab.errors import AttnlabError
    from attnlab.interop.hf import from_hf
    from attnlab.models import ARCHS
    from attnlab.train.checkpoint import save_checkpoint

    model, tok = from_hf(src, with_tokenizer=True)
    arch = model.config.arch
    if not isinstance(model, ARCHS[arch]):
        raise AttnlabError(f"'{src}' holds a {type(model).__name__} without its output head; attnlab checkpoints "
                           f"need the full {ARCHS[arch].__name__} (e.g. BertForMaskedLM, not BertModel)")
    cfg = Config(model=model.config)
    cfg.train.out_dir = str(out)
    out.mkdir(parents=True)
    tok_file = None if tok is None else tok.save(out / "tokenizer.json")
    if tok is None:
        print(f"note: no tokenizer in '{src}'; the checkpoint has none (generate/eval need one)")
    cfg.save(out / "config.yaml")
    ckpt = save_checkpoint(out, 0, model, cfg, state={}, tokenizer_file=tok_file)
    print(f"{type(model).__name__} from '{src}' → attnlab checkpoint {ckpt}")


def _attnlab_to_hf(src: Path, out: Path, max_shard_size: int | str | None) -> None:
    from attnlab.finetune.init import finetuned_folder
    from attnlab.interop.export import to_hf
    from attnlab.train.checkpoint import load_model

    if finetuned_folder(src) is not None:
        _finetuned_to_hf(src, out, max_shard_size)
        return
    model, ckpt = load_model(src)
    hf = to_hf(model, out, tokenizer=ckpt.tokenizer_file, max_shard_size=max_shard_size)
    if ckpt.tokenizer_file is None:
        print(f"note: '{src}' has no tokenizer; '{out}' has none either")
    print(f"{ckpt.path} → {type(hf).__name__} in '{out}'")


def _finetuned_to_hf(src: Path, out: Path, max_shard_size: int | str | None) -> None:
    """A fine-tuned causal LM (adapters merged) with its tokenizer and chat template."""
    from attnlab.data.chat import ChatTemplate, template_name
    from attnlab.finetune.init import load_backbone
    from attnlab.interop.export import to_hf

    backbone = load_backbone(str(src))  # a fine-tuned decoder, LoRA merged; anything else is refused
    template = ChatTemplate.load(backbone.folder) if backbone.folder is not None else None
    hf = to_hf(backbone.model.eval(), out, tokenizer=backbone.tokenizer, max_shard_size=max_shard_size,
               chat_template=template)
    chat = f", chat template: {template_name(template)}" if template is not None else ""
    print(f"{backbone.folder} → {type(hf).__name__} in '{out}'{chat}")
