"""The lm task: domain adaptation of a tiny GPT checkpoint lowers the loss on the new text."""

from __future__ import annotations

import json
import random

import pytest
import torch

from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune import load_finetune_config, load_finetuned, run
from attnlab.finetune.tasks.lm import LMTask

WORDS = ["the", "film", "is", "a", "great", "dull", "story", "with", "fine", "acting", "and", "weak", "plot"]


def reviews(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(n)]


@pytest.fixture
def domain(tmp_path):
    """A new domain: a text file (for train, val held out from it) and a JSONL test file."""
    txt = tmp_path / "reviews.txt"
    txt.write_text("\n".join(reviews(300, 0)) + "\n")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"body": t}) + "\n" for t in reviews(40, 1)))
    return txt, test


def recipe(init, out, train, **extra):
    over = {"init": init, "data.train": train, "train.out_dir": out, "train.batch_size": 8, "train.max_steps": 30,
            "train.warmup_steps": 3, "train.lr": 3e-3, "train.eval_every": 10, "train.log_every": 1,
            "train.device": "cpu", "train.threads": 1, "options.seq_len": 32}
    over.update(extra)
    return load_finetune_config(None, "lm", [f"{k}={v}" for k, v in over.items()])


def test_adaptation_lowers_the_loss(trained_run, domain, tmp_path):
    txt, test = domain
    out = tmp_path / "adapt"
    res = run(recipe(trained_run, out, txt, **{"data.test": test, "options.text_column": "body"}),
              progress=False, log=lambda s: None)
    before, after = res["val_start"]["loss"], res["val"]["loss"]
    assert after < 0.8 * before
    assert res["val"]["ppl"] == pytest.approx(torch.tensor(after).exp().item(), rel=1e-5)
    assert res["test"]["loss"] < before
    assert json.loads((out / "results.json").read_text())["val_start"] == res["val_start"]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["val_loss"] == before

    task, model, tok = load_finetuned(out)
    assert isinstance(task, LMTask) and task.metric == "loss" and not task.higher_is_better
    rows = [{"body": t} for t in reviews(40, 1)]
    assert task.evaluate(model, rows, tok)["loss"] == pytest.approx(res["test"]["loss"], rel=1e-4)


def test_lora_adaptation(trained_run, domain, tmp_path):
    txt, _ = domain
    res = run(recipe(trained_run, tmp_path / "lora", txt, **{"lora.rank": 4, "lora.targets": "[q, v, mlp]",
                                                             "train.lr": 1e-2}),
              progress=False, log=lambda s: None)
    assert res["val"]["loss"] < res["val_start"]["loss"]
    assert res["memory"]["params_trainable"] < res["memory"]["params_total"] / 5


def test_windows_cover_every_token_once(trained_run, tmp_path):
    task = LMTask(recipe(trained_run, tmp_path / "x", "unused.txt", **{"options.seq_len": 4}))
    task.state = {"model": {"block_size": 64}}

    class Tok:
        eos_id = 0

        def chunk_text(self, text):
            return [text]

        def encode_batch(self, texts):
            return [[int(c) for c in t.split()] for t in texts]

    feats = task.features([{"text": "1 2 3 4 5"}, {"text": "6 7"}], Tok())
    assert feats == [[1, 2, 3, 4, 5], [5, 0, 6, 7, 0]]
    batch = task.collate([[1, 2, 3], [4, 5]])
    assert batch["input_ids"].tolist() == [[1, 2], [4, 5]]
    assert batch["targets"].tolist() == [[2, 3], [5, -100]]


def test_errors(trained_run, domain, tmp_path):
    txt, _ = domain
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        run(recipe(trained_run, tmp_path / "a", txt, **{"options.seq_len": 4096}), progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="can only change a preset"):
        run(recipe(trained_run, tmp_path / "b", txt, **{"model.n_layer": 1}), progress=False, log=lambda s: None)
    with pytest.raises(AttnlabError, match="lm fine-tunes a decoder|lm needs a decoder"):
        run(recipe("preset:bert-tiny", tmp_path / "c", txt, tokenizer="bpe:300"), progress=False, log=lambda s: None)
    with pytest.raises(AttnlabError, match="has no column 'text'"):
        run(recipe(trained_run, tmp_path / "d", domain[1]), progress=False, log=lambda s: None)
