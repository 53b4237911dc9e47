"""The classify task end to end on a tiny synthetic sentiment task: from scratch, from a Hugging Face
BERT directory (full and LoRA), from an attnlab encoder run, and the bag-of-words baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnlab import config
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, CheckpointError, ConfigError
from attnlab.finetune import load_finetune_config, load_finetuned, run
from attnlab.finetune.baselines import NgramVocab, collate_bags, ngrams
from attnlab.finetune.init import SPECIAL_TOKENS
from attnlab.finetune.tasks.classify import encode_texts
from tests.finetune._sentiment import FILLER, TINY, write_splits


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_splits(tmp_path_factory.mktemp("sentiment"), (240, 60, 60))


def recipe(files, out: Path, init: str, **extra):
    over = {"data.train": files["train"], "data.val": files["val"], "data.test": files["test"], "init": init,
            "train.out_dir": out, "train.batch_size": 16, "train.max_steps": 40, "train.warmup_steps": 4,
            "train.lr": 3e-3, "train.eval_every": 20, "train.log_every": 1, "train.device": "cpu",
            "train.threads": 1, "train.seed": 0}
    over.update(extra)
    return load_finetune_config(None, "classify", [f"{k}={v}" for k, v in over.items()])


def fit(cfg):
    return run(cfg, progress=False, log=lambda s: None)


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def hf_bert_dir(tmp_path_factory) -> Path:
    """A random tiny BertModel saved by transformers, with a WordPiece tokenizer.json that adds [CLS]/[SEP],
    pads and truncates on its own, as all-MiniLM-L6-v2's does."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, processors

    d = tmp_path_factory.mktemp("hf-bert")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER,
                                         "good", "great", "bad", "awful", "##s"])}
    tok = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=32)
    tok.enable_truncation(32)
    tok.save(str(d / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(d)
    return d


def test_scratch_encoder_learns_and_reloads(files, tmp_path):
    out = tmp_path / "scratch"
    cfg = recipe(files, out, "preset:bert-tiny", **TINY, **{"train.max_steps": 60})
    res = fit(cfg)
    ls = losses(out)
    assert sum(ls[-5:]) / 5 < 0.7 * sum(ls[:5]) / 5
    assert res["val"]["accuracy"] >= 0.9 and res["test"]["accuracy"] >= 0.85
    assert set(res["test"]) == {"accuracy", "f1"}
    assert json.loads((out / "results.json").read_text())["test"] == res["test"]
    assert res["memory"]["params_trainable"] == res["memory"]["params_total"] > 0

    task, model, tok = load_finetuned(out)
    assert task.state["labels"] == ["negative", "positive"]
    assert model.encoder.config.n_layer == 1 and model.encoder.config.d_model == 32  # the model section applied
    rows = [json.loads(line) for line in files["test"].read_text().splitlines()]
    preds = task.predict(model, rows, tok)
    assert set(preds) <= {"negative", "positive"}
    acc = sum(p == r["label"] for p, r in zip(preds, rows, strict=False)) / len(rows)
    assert acc == pytest.approx(res["test"]["accuracy"])
    # a second load gives the very same logits
    task2, model2, tok2 = load_finetuned(out / "model")
    batch = task.collate(task.features(rows[:8], tok))
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), model2(**batch))


def test_saved_model_folder_is_verified_on_load(files, tmp_path):
    out = tmp_path / "run"
    fit(recipe(files, out, "preset:bert-tiny", **TINY, **{"train.max_steps": 2, "train.eval_every": 2}))
    folder = out / "model"
    sums = json.loads((folder / "checksums.json").read_text())
    assert sorted(sums) == sorted(p.name for p in folder.iterdir() if p.name != "checksums.json")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no temporary folder left"
    (folder / "recipe.yaml").write_bytes((folder / "recipe.yaml").read_bytes() + b"\n")
    with pytest.raises(CheckpointError, match=r"recipe\.yaml' is missing or corrupt \(checksum mismatch\); re-run"):
        load_finetuned(out)
    (folder / "checksums.json").unlink()  # a folder from before checksums loads unchecked
    assert load_finetuned(out)[0].state["labels"] == ["negative", "positive"]


def test_hf_bert_full_finetuning(files, tmp_path, hf_bert_dir):
    out = tmp_path / "hf"
    res = fit(recipe(files, out, f"hf:{hf_bert_dir}", **{"options.pooling": "mean", "options.max_length": 16}))
    assert res["test"]["accuracy"] >= 0.85
    task, model, tok = load_finetuned(out)
    feats = task.features([{"text": "the movie was good", "label": "positive"}], tok)
    ids = feats[0][0]["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 0 not in ids  # [CLS] ... [SEP], no padding from tokenizer.json
    assert task.state["pooling"] == "mean"


def test_lora_trains_only_adapters_and_head(files, tmp_path, hf_bert_dir):
    from attnlab.interop.hf import from_hf

    out = tmp_path / "lora"
    cfg = recipe(files, out, f"hf:{hf_bert_dir}", **{"lora.rank": 4, "lora.targets": "[q, v]", "train.lr": 1e-2,
                                                     "options.pooling": "mean", "options.max_length": 16,
                                                     "train.max_steps": 60})
    res = fit(cfg)
    assert res["lora"] and res["test"]["accuracy"] >= 0.8
    task, model, _ = load_finetuned(out)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith(("pooler.", "classifier.")) for n in trainable)
    assert any(n.startswith("classifier.") for n in trainable) and any(".lora_B" in n for n in trainable)
    assert res["memory"]["params_trainable"] < res["memory"]["params_total"] / 2
    base = from_hf(hf_bert_dir).state_dict()
    tuned = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()
             if k.startswith("encoder.") and ".lora_" not in k}
    assert set(tuned) == set(base)
    for k, v in base.items():
        torch.testing.assert_close(tuned[k], v, rtol=0, atol=0)
    assert any(m.lora_B.abs().sum() > 0 for m in model.modules() if hasattr(m, "lora_B"))  # the adapters learned


def test_encoder_run_folder_as_init(files, tmp_path, tiny_overrides):
    from attnlab.train import train

    run_dir = tmp_path / "mlm-run"  # a masked-LM encoder from `attnlab train`: no [CLS]/[SEP] in its vocabulary
    train(config.load("bert-tiny", tiny_overrides(run_dir, **{"train.max_steps": 3})), progress=False,
          log=lambda s: None)
    res = fit(recipe(files, tmp_path / "ft", str(run_dir), **{"options.max_length": 16, "options.pooling": "mean"}))
    assert res["test"]["accuracy"] >= 0.8
    task, model, tok = load_finetuned(tmp_path / "ft")
    assert model.encoder.config.d_model == 64 and tok.to_json() == Tokenizer.load(run_dir / "tokenizer.json").to_json()
    assert set(task.state["special"].values()) == {tok.eos_id}  # <|endoftext|> stands in for [CLS]/[SEP]/[PAD]
    # a decoder is not an encoder
    with pytest.raises(ConfigError, match="classify needs an encoder"):
        fit(recipe(files, tmp_path / "bad", "preset:gpt-tiny", tokenizer="bpe:300"))


def test_bow_baseline(files, tmp_path):
    out = tmp_path / "bow"
    res = fit(recipe(files, out, "bow", **{"train.lr": 0.1, "train.max_steps": 30}))
    assert res["test"]["accuracy"] >= 0.95
    assert not (out / "model" / "tokenizer.json").exists()
    task, model, tok = load_finetuned(out)
    assert tok is None
    assert task.predict(model, [{"text": "a great film"}, {"text": "an awful film"}], tok) == ["positive", "negative"]
    with pytest.raises(ConfigError, match="lora does not apply"):
        fit(recipe(files, tmp_path / "bow-lora", "bow", **{"lora.rank": 2}))
    with pytest.raises(ConfigError, match="drop the tokenizer and model settings"):
        fit(recipe(files, tmp_path / "bow-tok", "bow", tokenizer="bpe:300"))


def test_bow_features():
    assert ngrams("Not GOOD, don't!", 2) == ["not", "good", "don't", "!", "not good", "good don't", "don't !"]
    vocab = NgramVocab.fit(["a good film", "a bad film", "good good"], n=1, min_count=2)
    assert vocab.grams == ["a", "film", "good"]
    ids, weights = vocab.encode("good good film zzz")
    assert ids == [1, 2] and sum(w * w for w in weights) == pytest.approx(1.0)
    assert weights[1] > weights[0]  # tf 2 beats tf 1 at equal idf
    assert vocab.encode("zzz") == ([], [])
    batch = collate_bags([vocab.encode("a film"), vocab.encode("zzz"), vocab.encode("good")])
    assert batch["offsets"].tolist() == [0, 2, 2] and batch["ngram_ids"].tolist() == [0, 1, 2]
    assert NgramVocab.from_state(vocab.to_state()).encode("a good") == vocab.encode("a good")


def test_pairs_truncate_longest_first():
    tok = Tokenizer.train_bpe(["aa bb cc dd ee ff gg"] * 5, 300, special_tokens=SPECIAL_TOKENS)
    ids = {"cls": 1, "sep": 2, "pad": 0}
    a, b = "aa bb cc dd ee ff", "gg"
    (ex,) = encode_texts(tok, [a], [b], 7, ids, types=True)
    assert len(ex["input_ids"]) == 7
    n_a = len(ex["input_ids"]) - 3 - len(tok.encode(b))
    assert ex["input_ids"][:1] == [1] and ex["input_ids"][1 + n_a] == 2 and ex["input_ids"][-1] == 2
    assert ex["token_type_ids"] == [0] * (n_a + 2) + [1] * (len(tok.encode(b)) + 1)
    (single,) = encode_texts(tok, [a], None, 4, ids, types=False)
    assert single == {"input_ids": [1, *tok.encode(a)[:2], 2]}


def test_label_errors(files, tmp_path):
    bad = tmp_path / "val.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": "neutral"}) + "\n")
    with pytest.raises(AttnlabError, match=r"label 'neutral' is not one of the labels \(negative, positive\)"):
        fit(recipe(files, tmp_path / "a", "bow", **{"data.val": bad}))
    with pytest.raises(AttnlabError, match="label 'negative' is not one of the labels"):
        fit(recipe(files, tmp_path / "b", "bow", **{"options.labels": "[positive, neutral]"}))
    with pytest.raises(AttnlabError, match="has no column 'sentiment'"):
        fit(recipe(files, tmp_path / "c", "bow", **{"options.label_column": "sentiment"}))
    with pytest.raises(ConfigError, match="exceeds the encoder's context"):
        fit(recipe(files, tmp_path / "d", "preset:bert-tiny", **{**TINY, "options.max_length": 64}))
