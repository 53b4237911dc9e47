"""train.compile=true: the compiled model-and-loss graph trains like the eager one."""

import json
from pathlib import Path

import pytest
from torch._dynamo.utils import counters

from attnlab.train.loop import train

pytestmark = pytest.mark.slow


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "step" in r and "val_loss" not in r]


def test_compiled_training_matches_eager(tmp_path, tiny_cfg, one_thread):
    eager = tiny_cfg(tmp_path / "eager", **{"train.max_steps": 4})
    compiled = tiny_cfg(tmp_path / "compiled", **{"train.max_steps": 4, "train.compile": "true"})
    train(eager, progress=False, log=lambda s: None)
    counters.clear()
    train(compiled, progress=False, log=lambda s: None)
    assert counters["stats"]["unique_graphs"] >= 1  # it really compiled
    assert not counters["graph_break"], dict(counters["graph_break"])  # model + loss as whole graphs
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-4)
    assert a[-1] < a[0]  # it trained
