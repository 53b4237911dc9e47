"""translate / summarize: teacher-forcing batches, the RNN-with-attention baseline and the transformer
encoder-decoder learning a tiny reversal task through trainer.run, generation through
attnlab.generate, reloading with load_finetuned, and clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune import load_finetune_config, load_finetuned, run
from attnlab.finetune.recipe import finetune_config_from_dict, task_class
from attnlab.generate import generate

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention

WORDS = "red blue green gold pink gray cyan lime".split()
MODELS = {
    "rnn": {"init": "rnn", "options.rnn.d_emb": 32, "options.rnn.d_hidden": 64, "options.rnn.dropout": 0.0,
            "train.lr": 1e-2, "train.max_steps": 150, "train.eval_every": 75},
    "transformer": {"init": "preset:transformer-base-tiny", "model.n_layer": 1, "model.n_decoder_layer": 1,
                    "model.d_model": 64, "model.n_head": 4, "model.d_ff": 128, "model.block_size": 32,
                    "model.dropout": 0.0, "train.lr": 3e-3, "train.max_steps": 200, "train.eval_every": 100},
}


def reverse_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ws = rng.choices(WORDS, k=rng.randint(2, 5))
        rows.append({"source": " ".join(ws), "target": " ".join(reversed(ws))})
    return rows


def write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reverse")
    return {s: write(reverse_rows(n, seed), d / f"{s}.jsonl") for s, n, seed in
            (("train", 400, 0), ("val", 40, 1), ("test", 40, 2))}


def recipe(files: dict[str, Path], out: Path, kind: str, task: str = "translate", **extra):
    over = {"data.train": files["train"], "data.val": files["val"], "data.test": files["test"],
            "tokenizer": "bpe:400", "train.out_dir": out, "train.batch_size": 16,
            "train.warmup_steps": 5, "train.log_every": 1, "train.device": "cpu",
            "train.threads": 1, "train.seed": 0, "options.max_source_length": 16, "options.max_target_length": 12}
    over.update(MODELS[kind])
    over.update(extra)
    return load_finetune_config(None, task, [f"{k}={v}" for k, v in over.items()])


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_teacher_forcing_batch_layout(files, tmp_path):
    task = task_class("translate")(recipe(files, tmp_path, "rnn"))
    rows = [{"source": "red blue", "target": "blue red"}, {"source": "gold", "target": "gold"}]
    model, tok = task.build(reverse_rows(50, 0))
    sp, start = task.state["special"], task.state["model"]["decoder_start_id"]
    batch = task.collate(task.features(rows, tok))
    for i, r in enumerate(rows):
        tgt = tok.encode(r["target"]) + [sp["eos"]]
        n = len(tgt)
        assert batch["labels"][i, :n].tolist() == tgt and (batch["labels"][i, n:] == -100).all()
        assert batch["decoder_input_ids"][i, :n].tolist() == [start] + tgt[:-1]
        src = tok.encode(r["source"]) + [sp["eos"]]
        assert batch["input_ids"][i, :len(src)].tolist() == src
        assert batch["attention_mask"][i].tolist() == [1] * len(src) + [0] * (batch["input_ids"].shape[1] - len(src))
    assert start == sp["pad"] == tok.token_id("[PAD]") and sp["eos"] == tok.eos_id


@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_both_models_learn_to_reverse_and_reload_with_the_same_predictions(files, tmp_path, kind):
    # fp32: the reloaded model predicts without autocast, and its score must equal the run's test score
    cfg = recipe(files, tmp_path / "run", kind, **{"train.dtype": "float32"})
    untrained_task = task_class("translate")(cfg)
    test = untrained_task.read(str(files["test"]))
    torch.manual_seed(0)
    untrained, tok0 = untrained_task.build(untrained_task.read(str(files["train"])))
    untrained_bleu = untrained_task.evaluate(untrained.eval(), test, tok0)["bleu"]

    res = run(cfg, progress=False, log=lambda s: None)
    loss = losses(tmp_path / "run")
    assert sum(loss[-10:]) < 0.3 * sum(loss[:10])
    assert res["test"]["bleu"] > 40 and res["test"]["bleu"] > untrained_bleu + 30

    task, model, tok = load_finetuned(tmp_path / "run")
    assert task.state["scoring"] == {"lang": None, "bleu_tokenize": "13a", "rouge_tokenize": "default"}  # English
    preds = task.predict(model, test, tok)
    assert task.score(preds, [r["target"] for r in test]) == res["test"]
    # The predictions are attnlab.generate's greedy decoding, cut at the end-of-text token.
    sources = task._sources(test[:3], tok)
    for src, pred in zip(sources, preds[:3], strict=False):
        out = generate(model, torch.tensor([src]), 12, temperature=0.0, eos_token_id=task.state["special"]["eos"])
        row = out[0, 1:].tolist()
        assert out[0, 0].item() == model.decoder_start_id
        assert tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row).strip() == pred
    # Beam search through the same API.
    task.opt.num_beams = 3
    beams = task.predict(model, test[:4], tok)
    want = generate(model, torch.tensor([sources[0]]), 12, num_beams=3, eos_token_id=tok.eos_id)[0, 1:].tolist()
    want = want[: want.index(tok.eos_id)] if tok.eos_id in want else want
    assert beams[0] == tok.decode(want).strip()


def test_summarize_scores_rouge(tmp_path):
    rng = random.Random(0)

    def rows(n: int) -> list[dict[str, str]]:
        out = []
        for _ in range(n):
            ws = rng.choices(WORDS, k=6)
            out.append({"document": " ".join(ws), "summary": " ".join(ws[:2]), "id": 1})
        return out

    files = {s: write(rows(n), tmp_path / f"{s}.jsonl") for s, n in (("train", 300), ("val", 30), ("test", 30))}
    cfg = recipe(files, tmp_path / "run", "rnn", task="summarize", **{"train.max_steps": 80, "train.eval_every": 40})
    res = run(cfg, progress=False, log=lambda s: None)
    assert set(res["test"]) == {"rouge1", "rouge2", "rougeL"}
    assert res["test"]["rougeL"] > 60 and res["best_step"] > 0


def test_clear_errors(files, tmp_path):
    bad = write([{"source": "a", "text": "b"}], tmp_path / "bad.jsonl")
    task = task_class("translate")(recipe(files, tmp_path, "rnn"))
    with pytest.raises(AttnlabError, match="has no column 'target'.*options.source_column"):
        task.read(str(bad))
    with pytest.raises(ConfigError, match="needs an encoder-decoder"):
        task_class("translate")(recipe(files, tmp_path, "rnn", init="preset:bert-tiny")).build(reverse_rows(20, 0))
    with pytest.raises(ConfigError, match="options.rnn"):
        task_class("translate")(recipe(files, tmp_path, "rnn", **{"model.n_layer": 1})).build(reverse_rows(20, 0))
    with pytest.raises(ConfigError, match="brings no tokenizer"):
        task_class("translate")(recipe(files, tmp_path, "rnn", tokenizer="")).build(reverse_rows(20, 0))
    with pytest.raises(ConfigError, match="max_target_length=40.*decoder's context of 32"):
        task_class("translate")(recipe(files, tmp_path, "transformer", **{"options.max_target_length": 40})).build(
            reverse_rows(20, 0))
    with pytest.raises(ConfigError, match="options.rnn.scoring must be one of"):
        recipe(files, tmp_path, "rnn", **{"options.rnn.scoring": "cosine"})


@pytest.mark.parametrize("name", ["translate-rnn", "translate-transformer", "summarize-transformer"])
def test_shipped_recipes_load(name):
    cfg = load_finetune_config(name)
    assert cfg.task == name.split("-")[0] and cfg.tokenizer.startswith("bpe:")
    assert cfg.data.train == ("data/de-en/train.jsonl" if cfg.task == "translate" else "data/news/train.jsonl")
    assert finetune_config_from_dict(cfg.to_dict()) == cfg


def test_rnn_and_transformer_recipes_share_data_and_budget():
    rnn, tf = load_finetune_config("translate-rnn"), load_finetune_config("translate-transformer")
    assert rnn.data == tf.data and rnn.tokenizer == tf.tokenizer
    for key in ("batch_size", "max_steps", "grad_accum", "lr", "label_smoothing", "seed"):
        assert getattr(rnn.train, key) == getattr(tf.train, key)
    assert (rnn.options.max_source_length, rnn.options.max_target_length) == (
        tf.options.max_source_length, tf.options.max_target_length)


def test_a_hugging_face_t5_directory_fine_tunes_and_reloads(files, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    from attnlab.data.tokenizer import Tokenizer
    from attnlab.finetune.init import SPECIAL_TOKENS

    tok = Tokenizer.train_bpe([r["source"] for r in reverse_rows(200, 0)], 400, special_tokens=SPECIAL_TOKENS)
    hf = tmp_path / "t5"
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0)).save_pretrained(hf)
    tok.save(hf / "tokenizer.json")
    # (the "rnn" preset of overrides has no model section, which a pretrained init must not have)
    cfg = recipe(files, tmp_path / "run", "rnn", init=f"hf:{hf}", tokenizer="",
                 **{"train.max_steps": 40, "train.eval_every": 40, "train.lr": 3e-3, "data.max_eval": 8})
    res = run(cfg, progress=False, log=lambda s: None)
    loss = losses(tmp_path / "run")
    assert sum(loss[-5:]) < sum(loss[:5])
    task, model, tok2 = load_finetuned(tmp_path / "run")
    assert task.state["kind"] == "transformer" and task.state["special"]["eos"] == tok.eos_id
    test = task.read(str(files["test"]))[:8]
    assert task.score(task.predict(model, test, tok2), [r["target"] for r in test]) == res["test"]
