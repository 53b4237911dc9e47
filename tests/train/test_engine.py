"""The training engine seen from pretraining: resuming with changed settings says what changed on one line,
a changed model or optimizer is still refused."""

from __future__ import annotations

import json

import pytest

from attnlab.config import TrainConfig
from attnlab.errors import CheckpointError
from attnlab.train import train
from attnlab.train.run_state import resume_changes


def quiet(s: str) -> None:
    pass


def test_resume_changes_names_each_setting_once():
    was = TrainConfig(lr=6e-4, batch_size=4, seq_len=32)
    assert resume_changes(was, TrainConfig(lr=6e-4, batch_size=4, seq_len=32, max_steps=99)) == ""
    now = TrainConfig(lr=1e-3, batch_size=8, seq_len=16)
    assert resume_changes(was, now) == ("resuming with train.batch_size=8 (was 4), train.lr=0.001 (was 0.0006), "
                                        "train.seq_len=16 (was 32)")


def test_resume_with_changed_lr_batch_and_seq_len_is_one_line(tmp_path, tiny_cfg):
    run = tmp_path / "run"
    train(tiny_cfg(run, **{"train.max_steps": 4, "train.lr": 6e-4}), progress=False, log=quiet)
    lines: list[str] = []
    s = train(tiny_cfg(run, **{"train.max_steps": 6, "train.lr": 1e-3, "train.batch_size": 2, "train.seq_len": 16}),
              resume=True, progress=False, log=lines.append)
    said = [line for line in lines if "resuming with" in line]
    assert said == ["resuming with train.batch_size=2 (was 4), train.lr=0.001 (was 0.0006), train.seq_len=16 (was 32)"]
    assert s["step"] == 6
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 7))
    lines.clear()
    train(tiny_cfg(run, **{"train.max_steps": 7, "train.lr": 1e-3, "train.batch_size": 2, "train.seq_len": 16}),
          resume=True, progress=False, log=lines.append)
    assert not [line for line in lines if "resuming with" in line]  # same settings as the checkpoint: nothing said


def test_resume_still_refuses_another_model_or_optimizer(tmp_path, tiny_cfg):
    run = tmp_path / "run"
    train(tiny_cfg(run, **{"train.max_steps": 2}), progress=False, log=quiet)
    with pytest.raises(CheckpointError, match="different model"):
        train(tiny_cfg(run, **{"model.n_layer": 3}), resume=True, progress=False, log=quiet)
    with pytest.raises(CheckpointError, match="train.optimizer=adamw"):
        train(tiny_cfg(run, **{"train.optimizer": "muon"}), resume=True, progress=False, log=quiet)
