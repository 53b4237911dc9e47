"""Exact resume: a run killed with SIGKILL and resumed computes the same losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnlab import config
from attnlab.data import prepare

pytestmark = pytest.mark.slow

# Big enough that a step takes a few milliseconds, so the kill lands mid-run.
MODEL = {"model.d_model": 128, "model.n_layer": 3, "model.n_head": 4, "model.dropout": 0.1,
         "train.batch_size": 8, "train.seq_len": 64, "train.grad_accum": 2, "train.max_steps": 80,
         "train.ckpt_every": 5}


def records(run: Path) -> list[dict]:
    """Every record of metrics.jsonl, in file order (a list, so repeated steps stay visible)."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def loss_steps(run: Path) -> list[int]:
    """The step of every training-loss record, in file order."""
    return [r["step"] for r in records(run) if "loss" in r]


def losses(run: Path) -> dict[int, float]:
    """Training loss by step; fails if a step was written twice."""
    pairs = [(r["step"], r["loss"]) for r in records(run) if "loss" in r]
    steps = [s for s, _ in pairs]
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    assert not repeated, f"steps written more than once: {repeated}"
    return dict(pairs)


def assert_one_run(run: Path, last: int) -> None:
    """metrics.jsonl reads as one run: each step 1..last once, in order, and no record goes back in time."""
    assert loss_steps(run) == list(range(1, last + 1)), "metrics file must read as one run (each step once, in order)"
    every = [r["step"] for r in records(run)]
    assert every == sorted(every), "a record goes back to an earlier step (records repeated after resume?)"


LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_runs():
    """Kill any training run a failed test left behind."""
    yield
    while LAUNCHED:
        proc = LAUNCHED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def launch(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "attnlab", "train", "gpt-tiny", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    LAUNCHED.append(proc)
    return proc


def wait_for_step(run: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    metrics = run / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(line)["step"] >= step for line in lines if line):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the run")


def test_sigkill_then_resume_reproduces_losses(tmp_path, tiny_overrides):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    prepare(config.load("gpt-tiny", tiny_overrides(ref_dir, **MODEL)).data, progress=False)  # tokenize once

    ref = launch(tiny_overrides(ref_dir, **MODEL))
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    assert_one_run(ref_dir, 80)
    reference = losses(ref_dir)

    cut = launch(tiny_overrides(cut_dir, **MODEL))
    wait_for_step(cut_dir, cut, 23)
    cut.send_signal(signal.SIGKILL)
    assert cut.wait(timeout=60) == -signal.SIGKILL
    saved = int((cut_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 20 <= saved < 80, saved
    latest = cut_dir / "checkpoints" / f"step_{saved:07d}"
    assert (latest / "meta.json").exists() and (latest / "model.safetensors").exists()  # 'latest' is always complete

    resumed = launch(tiny_overrides(cut_dir, **MODEL) + ["--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert_one_run(cut_dir, 80)
    got = losses(cut_dir)
    for step in range(saved + 1, 81):
        assert got[step] == reference[step], f"step {step}: {got[step]} != {reference[step]}"


def test_sigint_saves_checkpoint_and_resume_finishes(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = tiny_overrides(run, **{**MODEL, "train.ckpt_every": 0, "train.max_steps": 400})
    proc = launch(args)
    wait_for_step(run, proc, 3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert "continue with --resume" in err or "continue with --resume" in proc.stdout.read()
    step = int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 3 <= step < 400
    again = launch(args + ["--resume", "train.max_steps=" + str(step + 3)])
    # Changing max_steps changes only the schedule length, which is allowed.
    assert again.wait(timeout=120) == 0, again.stderr.read()
    assert_one_run(run, step + 3)
    assert os.path.exists(run / "loss.png")
