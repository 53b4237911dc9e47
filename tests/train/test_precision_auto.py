"""``train.dtype=auto``: bf16 autocast exactly where the capability check says the device multiplies
bf16 natively, said on one log line and recorded; and fp32 and bf16 runs train alike."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import attnlab.precision as precision
from attnlab.cli import main
from attnlab.finetune import load_finetune_config, run
from attnlab.train import train
from attnlab.train.run_state import autocast_for, run_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object only: nothing runs on CUDA here

# Loss equivalence of fp32 and bf16 autocast over 50 steps of the tiny model (lr 1e-3): measured on this
# project's CPU (Xeon, AMX-BF16), the per-step training losses differed by at most 7.3e-4 nats (seeds 1337,
# 1, 2; 1.4e-4 relative) and the final validation losses by at most 1.8e-4. bf16 keeps 8 bits of mantissa,
# so each matmul rounds at ~4e-3 relative; the tolerance leaves ~14x room for another CPU's kernels.
# (At lr 3e-3 one seed goes through a loss spike around step 26 where the two runs part by 0.76 nats for
# two steps: that is the run's instability, not precision, so the comparison uses a stable learning rate.)
STEP_TOL = 0.01
VAL_TOL = 0.01


@pytest.fixture
def native(monkeypatch):
    """A function setting what the capability check answers."""
    return lambda answer: monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: answer)


@pytest.mark.parametrize("answer, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_follows_the_capability_check(native, answer, dtype):
    native(answer)
    logged: list[str] = []
    p = run_precision(CPU, "auto", logged.append)
    assert p.dtype == dtype
    assert logged == [f"precision: {p.reason}"] and "auto" in p.reason
    with autocast_for(CPU, "auto"):
        out = torch.nn.Linear(8, 8)(torch.randn(2, 8))  # (2, 8)
    assert out.dtype == dtype


@pytest.mark.parametrize("answer", [True, False])
def test_auto_on_cuda_is_bf16_and_explicit_settings_win(native, answer):
    native(answer)
    assert run_precision(CUDA, "auto", lambda s: None).dtype == torch.bfloat16
    assert run_precision(CPU, "float32", lambda s: None).reason == "float32 (asked for)"
    assert run_precision(CPU, "bfloat16", lambda s: None).dtype == torch.bfloat16


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("answer, name", [(True, "bfloat16"), (False, "float32")])
def test_a_training_run_says_and_records_its_precision(native, tiny_cfg, tmp_path, answer, name):
    native(answer)
    logged: list[str] = []
    summary = train(tiny_cfg(tmp_path / "run", **{"train.max_steps": 2}), progress=False, log=logged.append)
    lines = [line for line in logged if line.startswith("precision:")]
    reason = "this CPU multiplies bf16 natively" if answer else "no native bf16 on this cpu"
    assert lines == [f"precision: {name}{' autocast' if answer else ''} (auto: {reason})"]
    assert summary["precision"] == name
    assert [r["precision"] for r in _records(tmp_path / "run") if "val_loss" in r] == [name]


def test_fp32_and_bf16_losses_agree_over_50_steps(tiny_cfg, tmp_path):
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = tiny_cfg(tmp_path / dtype, **{"train.dtype": dtype, "train.max_steps": 50, "train.lr": 1e-3})
        summary = train(cfg, progress=False, log=lambda s: None)
        assert summary["precision"] == dtype
        runs[dtype] = ([r["loss"] for r in _records(tmp_path / dtype) if "loss" in r], summary["val_loss"])
    (l32, v32), (l16, v16) = runs["float32"], runs["bfloat16"]
    gaps = [abs(a - b) for a, b in zip(l32, l16, strict=True)]  # per-step training loss, nats/token
    assert len(gaps) == 50
    assert 0 < max(gaps) <= STEP_TOL, max(gaps)  # > 0: bf16 really ran
    assert abs(v32 - v16) <= VAL_TOL, (v32, v16)
    assert l16[-1] < l16[0] - 0.5  # and both learned


def test_eval_cli_dtype(capsys, trained_run, native):
    native(True)
    assert main(["eval", str(trained_run), "--json", "--batches", "2"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["precision"] == "bfloat16"
    assert out.err.strip() == "precision: bfloat16 autocast (auto: this CPU multiplies bf16 natively)"
    assert main(["eval", str(trained_run), "--json", "--batches", "2", "--dtype", "float32"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["precision"] == "float32" and out.err.strip() == "precision: float32 (asked for)"


def test_finetune_records_its_precision(native, tmp_path):
    native(False)
    rng = random.Random(0)
    for split in ("train", "val", "test"):
        rows = [{"text": f"{rng.choice(['good', 'bad'])} movie", "label": rng.choice(["positive", "negative"])}
                for _ in range(16)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {"data.train": tmp_path / "train.jsonl", "data.val": tmp_path / "val.jsonl",
            "data.test": tmp_path / "test.jsonl", "init": "preset:bert-tiny", "train.out_dir": tmp_path / "ft",
            "train.batch_size": 8, "train.max_steps": 2, "train.warmup_steps": 1, "train.eval_every": 2,
            "train.device": "cpu", "train.threads": 1, "model.n_layer": 1, "model.d_model": 32, "model.n_head": 2,
            "model.d_ff": 64, "model.block_size": 32, "tokenizer": "bpe:300", "options.max_length": 16}
    logged: list[str] = []
    summary = run(load_finetune_config(None, "classify", [f"{k}={v}" for k, v in over.items()]), progress=False,
                  log=logged.append)
    said = [line for line in logged if line.startswith("precision:")]
    assert said == ["precision: float32 (auto: no native bf16 on this cpu)"]
    assert summary["precision"] == "float32"
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["precision"] == "float32"
