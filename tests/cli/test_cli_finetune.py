"""`attnlab finetune` and `attnlab eval` on a fine-tuned model, through attnlab.cli.main."""

from __future__ import annotations

import json

import pytest

import attnlab.cli

ROWS = [{"text": f"{w} film {i}", "label": lab} for i in range(12)
        for w, lab in (("great", "pos"), ("awful", "neg"))]


@pytest.fixture
def files(tmp_path):
    out = {}
    for split, rows in (("train", ROWS), ("val", ROWS[:8]), ("test", ROWS[8:16])):
        out[split] = tmp_path / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def bow_args(files, out, *extra):
    return ["finetune", "classify", "sentiment-bow", f"data.train={files['train']}", f"data.val={files['val']}",
            f"data.test={files['test']}", f"train.out_dir={out}", "train.max_steps=20", "train.eval_every=10",
            "train.lr=0.1", "options.bow_min_count=1", "--no-progress", *extra]


def test_finetune_then_eval(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert attnlab.cli.main(bow_args(files, out, "--json")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test"]["accuracy"] == 1.0 and result["task"] == "classify"

    assert attnlab.cli.main(["eval", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "classify" and res["examples"] == 8 and res["accuracy"] == result["test"]["accuracy"]

    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text("".join(json.dumps({**r, "label": "neg" if r["label"] == "pos" else "pos"}) + "\n"
                               for r in ROWS[:10]))
    assert attnlab.cli.main(["eval", str(out / "model"), "--data", str(flipped)]) == 0
    line = capsys.readouterr().out
    assert "(classify) on" in line and "(10 examples)" in line and "accuracy 0.0000" in line

    assert attnlab.cli.main(["eval", str(out), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 8


@pytest.mark.parametrize("args, needle", [
    (["finetune", "clasify", "sentiment-bow"], "unknown task 'clasify' (did you mean 'classify'?)"),
    (["finetune", "classify", "sentiment-bwo"], "recipe 'sentiment-bwo' not found (did you mean 'sentiment-bow'?)"),
    (["finetune", "classify", "sentiment-bow", "options.max_lenght=3"], "did you mean 'max_length'"),
    (["finetune", "classify", "sentiment-bow", "train.lr=fast"], "train.lr must be a number"),
    (["finetune", "classify", "sentiment-minilm", "data.train=nope.jsonl"], "data file 'nope.jsonl' not found"),
])
def test_finetune_errors_are_one_line(capsys, one_line_error, args, needle):
    one_line_error(capsys, attnlab.cli.main(args), needle)


def test_missing_init_and_bad_label(files, tmp_path, capsys, one_line_error):
    code = attnlab.cli.main(["finetune", "classify", "sentiment-minilm", f"data.train={files['train']}",
                             f"data.val={files['val']}", f"data.test={files['test']}",
                             f"train.out_dir={tmp_path / 'm'}", "--no-progress"])
    one_line_error(capsys, code, "init is not set")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "meh", "label": "neutral"}) + "\n")
    code = attnlab.cli.main(bow_args({**files, "test": bad}, tmp_path / "b"))
    one_line_error(capsys, code, "label 'neutral' is not one of the labels (neg, pos)")


def test_eval_errors(files, tmp_path, capsys, one_line_error):
    out = tmp_path / "run"
    assert attnlab.cli.main(bow_args(files, out)) == 0
    capsys.readouterr()
    one_line_error(capsys, attnlab.cli.main(["eval", str(out), "--data", str(tmp_path / "nope.jsonl")]), "not found")
    (out / "model" / "model.safetensors").write_bytes(b"corrupt")
    one_line_error(capsys, attnlab.cli.main(["eval", str(out)]), "is missing or corrupt")


def test_lm_finetune_then_eval_on_a_text_file(trained_run, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("the film was fine and the plot was thin.\n" * 60)
    out = tmp_path / "lm"
    assert attnlab.cli.main(["finetune", "lm", "lm-adapt", f"init={trained_run}", f"data.train={text}", "data.val=",
                             "data.test=", f"train.out_dir={out}", "train.max_steps=5", "train.batch_size=4",
                             "options.seq_len=32", "train.device=cpu", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["val"]["loss"] < result["val_start"]["loss"]
    assert attnlab.cli.main(["eval", str(out), "--data", str(text), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "lm" and res["examples"] == 1 and res["loss"] < result["val_start"]["loss"]


def test_data_prepare_counts_squad_questions_not_lines(capsys, tmp_path):
    import json

    from attnlab.cli import main

    assert main(["data", "prepare", "squad-shakespeare", "--out", str(tmp_path), "--limit", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = json.loads((tmp_path / "train.json").read_text())
    n = sum(len(p["qas"]) for a in train["data"] for p in a["paragraphs"])
    assert n > 1 and lines[0].endswith(f"({n:,} examples)")
