"""train.compile=true: the compiled model-and-loss graph trains like the eager one."""

import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from attnlab.errors import AttnlabError
from attnlab.train.compiled import no_silent_recompile
from attnlab.train.loop import train

pytestmark = pytest.mark.slow


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "step" in r and "val_loss" not in r]


def test_compiled_training_matches_eager(tmp_path, tiny_cfg, one_thread, fresh_dynamo):
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


def test_compiled_windowed_training_prepares_masks_and_keeps_one_graph(tmp_path, tiny_cfg, one_thread, fresh_dynamo):
    window = {"model.attention.window": 8, "model.attention.backend": "chunked", "train.max_steps": 3,
              "train.eval_every": 2, "train.seq_len": 64}
    eager = tiny_cfg(tmp_path / "eager", **window)
    compiled = tiny_cfg(tmp_path / "compiled", **window, **{"train.compile": "true"})
    train(eager, progress=False, log=lambda s: None)
    lines: list[str] = []
    counters.clear()
    train(compiled, progress=False, log=lines.append)
    assert "compiled attention: chunked (sliding_window)" in lines  # said which path the graphs use
    assert not counters["graph_break"], dict(counters["graph_break"])  # the block plans were cached first
    assert counters["stats"]["unique_graphs"] == 2  # the training step and validation, once each
    assert _losses(tmp_path / "eager") == pytest.approx(_losses(tmp_path / "compiled"), rel=1e-4)


def test_recompile_limit_stops_the_run_after_saving(fresh_dynamo):
    step = torch.compile(lambda x, n: x * n, dynamic=False)
    saved = []
    with pytest.raises(AttnlabError, match="recompiled the model 2 times.*state is saved in ckpt-7.*--resume"):
        with torch._dynamo.config.patch(recompile_limit=2), \
                no_silent_recompile(True, lambda: saved.append(7) or "ckpt-7"):
            for n in range(5):  # each new constant is a new graph
                step(torch.ones(2), n)
    assert saved == [7]
    with no_silent_recompile(False, lambda: saved.append(8)):  # off: nothing patched, nothing saved
        pass
    assert saved == [7]
