"""image-classify: the digits source, a ViT trained end to end through the trainer, reloading, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune import load_finetune_config, load_finetuned, run
from attnlab.finetune.tasks.image import random_shift

pytest.importorskip("sklearn")

from attnlab.data.sources import prepare_source  # noqa: E402
from attnlab.data.sources.digits import prepare  # noqa: E402

TINY = {"model.n_layer": 2, "model.n_head": 2, "model.d_model": 64, "model.d_ff": 128}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The whole digits set, split 70/15/15."""
    out = tmp_path_factory.mktemp("digits")
    prepare(out, seed=0)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cfg(data: Path, out: Path, **extra):
    overrides = {
        "init": "preset:vit-tiny", "data.train": str(data / "train.jsonl"), "data.val": str(data / "val.jsonl"),
        "data.test": str(data / "test.jsonl"), "train.out_dir": str(out), "train.device": "cpu",
        "train.threads": 1, "train.seed": 0, "train.batch_size": 64, "train.max_steps": 120, "train.lr": 5e-3,
        "train.warmup_steps": 10, "train.eval_every": 60, "train.log_every": 10, **TINY,
    }
    overrides.update(extra)
    return load_finetune_config(None, "image-classify", [f"{k}={v}" for k, v in overrides.items()])


def test_digits_source_writes_valid_files(tmp_path, digits):
    files = {k: _lines(v) for k, v in prepare_source("digits", tmp_path / "small", seed=3, limit=100).items()}
    assert [len(files[k]) for k in ("train", "val", "test")] == [70, 15, 15]
    full = {k: _lines(digits / f"{k}.jsonl") for k in ("train", "val", "test")}
    assert sum(map(len, full.values())) == 1797
    for rows in full.values():
        for r in rows:
            assert set(r) == {"image", "label"} and len(r["image"]) == 64
            assert all(isinstance(v, int) and 0 <= v <= 16 for v in r["image"])
            assert isinstance(r["label"], int) and 0 <= r["label"] <= 9
    assert {r["label"] for r in full["test"]} == set(range(10))
    # seeded: the same seed gives the same split, another seed another one
    again = _lines(prepare(tmp_path / "again", seed=0)["test"])
    assert again == full["test"]
    assert _lines(prepare(tmp_path / "other", seed=1)["test"]) != full["test"]


def test_digits_source_reads_a_csv_and_reports_bad_input(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    csv = tmp_path / "digits.csv"
    np.savetxt(csv, np.c_[d.data[:40], d.target[:40]], fmt="%d", delimiter=",")
    files = prepare(tmp_path / "out", path=str(csv))
    assert sum(len(_lines(p)) for p in files.values()) == 40
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(AttnlabError, match="has 3 columns; expected 64 pixels and a label"):
        prepare(tmp_path / "x", path=str(tmp_path / "bad.csv"))
    with pytest.raises(AttnlabError, match="not found"):
        prepare(tmp_path / "x", path=str(tmp_path / "missing.csv"))
    with pytest.raises(AttnlabError, match="leaves a split empty"):
        prepare(tmp_path / "x", limit=3)


def test_trains_a_vit_on_digits_and_reloads(tmp_path, digits):
    # fp32: the reported accuracy is computed under the run's autocast, the reloaded predictions below without
    # it; with bf16 autocast (dtype=auto on a CPU with native bf16) a near-tie can flip one of 269 examples.
    result = run(_cfg(digits, tmp_path / "run", **{"train.dtype": "float32"}), progress=False, log=lambda s: None)
    assert result["precision"] == "float32"
    assert result["test"]["accuracy"] > 0.5  # chance: 0.1 (about 0.8 in 120 steps)
    assert result["best_step"] in (60, 120)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"] == result["test"]
    task, model, tok = load_finetuned(tmp_path / "run")
    assert tok is None and task.state["labels"] == list(range(10))
    test = _lines(digits / "test.jsonl")
    preds = task.predict(model, test, None)
    assert all(isinstance(p, int) for p in preds)
    assert np.mean([p == r["label"] for p, r in zip(preds, test, strict=False)]) == pytest.approx(
        result["test"]["accuracy"])
    _, again, _ = load_finetuned(tmp_path / "run" / "model")
    assert task.predict(again, test, None) == preds
    images = torch.stack([task.image_tensor(r) for r in test[:8]])  # (8, 1, 8, 8)
    logits, weights = model(images, return_weights=True)
    assert logits.shape == (8, 10) and weights[0].shape == (8, 2, 17, 17)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_data_and_settings_are_clear_errors(tmp_path, digits):
    ok = _lines(digits / "train.jsonl")[:30]
    cases = [
        ({"image": [0] * 63, "label": 1}, "image has 63 values .* expected channels×size×size = 1×8×8 = 64"),
        ({"image": [255] * 64, "label": 1}, r"pixel values must lie in \[0, options.max_value=16\]"),
        ({"image": [0] * 64, "label": 1.5}, "must be an integer or a string"),
        ({"pixels": [0] * 64, "label": 1}, "has no column 'image'"),
    ]
    for i, (bad, needle) in enumerate(cases):
        train = _write(tmp_path / f"bad{i}.jsonl", ok + [bad])
        with pytest.raises(AttnlabError, match=needle):
            run(_cfg(digits, tmp_path / f"r{i}", **{"data.train": str(train)}), progress=False, log=lambda s: None)
    # a validation label the model has no output for
    only_some = _write(tmp_path / "some.jsonl", [r for r in ok if r["label"] < 5])
    needle = r"val example \d+ has label [5-9], which is not one of the 5 training labels"
    with pytest.raises(AttnlabError, match=needle):
        run(_cfg(digits, tmp_path / "r5", **{"data.train": str(only_some)}), progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="tokenizer=bpe:512 is not used by image-classify"):
        run(_cfg(digits, tmp_path / "r6", tokenizer="bpe:512"), progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="set init=preset:vit-tiny"):
        run(_cfg(digits, tmp_path / "r7", init="hf:/nowhere"), progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="options.patch_size=3 does not divide options.image_size=8"):
        _cfg(digits, tmp_path / "r8", **{"options.patch_size": 3})


def test_shift_augmentation_moves_images_by_at_most_one_pixel():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 4] = 1.0
    y = random_shift(x)
    assert y.shape == x.shape and torch.equal(y.sum((1, 2, 3)), torch.ones(64))
    pos = y[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {3, 4, 5}
