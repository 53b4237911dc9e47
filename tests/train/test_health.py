"""Training health: NaN/inf policy, loss spikes, gradient norm and update/weight ratio."""

import json
import math
from pathlib import Path

import pytest
import torch

from attnlab.cli import main
from attnlab.train import load_model, train
from attnlab.train.health import HealthMonitor, NonFiniteError, clip_gradients, snapshot, update_ratio


def quiet(s):
    pass


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run):
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


def test_monitor_skips_then_stops_after_max_in_a_row():
    h = HealthMonitor(policy="skip", max_nonfinite=3)
    assert h.check(1, 5.0, 1.0).action == "step"
    assert h.check(2, math.nan, 1.0).action == "skip"
    assert h.check(3, 4.0, math.inf).action == "skip"  # an inf gradient norm counts too
    assert h.check(4, 4.0, 1.0).action == "step"  # a good step resets the run of bad ones
    assert [h.check(s, math.nan, 1.0).action for s in (5, 6, 7)] == ["skip", "skip", "stop"]
    assert h.nonfinite_total == 5
    v = HealthMonitor(policy="stop").check(9, math.inf, 1.0)
    assert v.action == "stop" and "step 9" in v.message and "train.nonfinite=stop" in v.message


def test_monitor_flags_spikes_after_warmup_and_keeps_them_out_of_the_mean():
    h = HealthMonitor(spike_factor=2.0, warmup=3)
    assert not h.check(1, 100.0, 1.0).spike  # no judgement during warmup
    for s in range(2, 6):
        assert not h.check(s, 2.0 if s > 2 else 100.0, 1.0).spike
    h = HealthMonitor(spike_factor=2.0, warmup=3)
    for s in range(1, 6):
        h.check(s, 2.0, 1.0)
    v = h.check(6, 4.5, 1.0)
    assert v.spike and v.action == "step" and "spike" in v.message and h.spikes == 1
    assert h.mean == pytest.approx(2.0)  # the spike did not move the running mean
    assert not h.check(7, 3.9, 1.0).spike
    again = HealthMonitor()
    again.load_state_dict(h.state_dict())
    assert (again.mean, again.seen, again.spikes) == (h.mean, h.seen, h.spikes)


def test_clip_and_update_ratio_match_their_definitions():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model(torch.randn(3, 4)).pow(2).sum().backward()
    params = list(model.parameters())
    expect = torch.cat([p.grad.flatten() for p in params]).norm()
    norm = clip_gradients(params, max_norm=0.5)
    assert torch.allclose(norm, expect)
    assert torch.allclose(torch.cat([p.grad.flatten() for p in params]).norm(), torch.tensor(0.5), atol=1e-5)
    before = snapshot(params)
    with torch.no_grad():
        for p in params:
            p.mul_(1.01)
    assert update_ratio(params, before) == pytest.approx(0.01, rel=1e-6)


def test_nan_step_is_skipped_logged_and_the_run_goes_on(tiny_cfg, one_thread):
    cfg = tiny_cfg(**{"train.inject_nan_steps": [3]})
    s = train(cfg, progress=False, log=quiet)
    assert s["step"] == 8 and s["nonfinite_steps"] == 1 and math.isfinite(s["val_loss"])
    run = Path(cfg.train.out_dir)
    events = [r for r in records(run) if "event" in r]
    assert events == [{"step": 3, "event": "nonfinite", "step_loss": "nan", "nonfinite_total": 1, "spikes": 0}]
    got = losses(run)
    assert sorted(got) == [1, 2, 4, 5, 6, 7, 8] and all(math.isfinite(v) for v in got.values())
    assert all(0 < r["update_ratio"] < 1 for r in records(run) if "loss" in r)
    model, _ = load_model(cfg.train.out_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_with_stop_saves_last_good_state_and_resume_loses_nothing(tmp_path, tiny_cfg, tiny_overrides,
                                                                      one_thread, capsys, one_line_error):
    ref = tiny_cfg(tmp_path / "ref")
    train(ref, progress=False, log=quiet)
    run = tmp_path / "run"
    code = main(["train", "gpt-tiny",
                 *tiny_overrides(run, **{"train.inject_nan_steps": [4], "train.nonfinite": "stop"}),
                 "--no-progress"])
    line = one_line_error(capsys, code, "step 4: loss nan is not finite; stopping (train.nonfinite=stop)")
    assert "last good state (step 3)" in line and "--resume" in line
    assert (run / "checkpoints" / "step_0000003" / "meta.json").exists()
    with pytest.raises(NonFiniteError):  # the same from the library, in a fresh folder
        train(tiny_cfg(tmp_path / "again", **{"train.inject_nan_steps": [2], "train.nonfinite": "stop"}),
              progress=False, log=quiet)
    train(tiny_cfg(run), resume=True, progress=False, log=quiet)  # no more NaN: continue from step 3
    want, got = losses(tmp_path / "ref"), losses(run)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert got[step] == want[step], step
