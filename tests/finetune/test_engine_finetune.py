"""Fine-tuning on the training engine: Muon at its own learning rate, exact resume after SIGKILL,
train.compile and 2-process DDP following the eager single process, resume with changed settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import attnlab.train.engine as engine
from attnlab.errors import AttnlabError
from attnlab.finetune import load_finetune_config, run
from attnlab.finetune.trainer import BatchStream, epoch_batches
from attnlab.train.schedule import lr_at
from tests.finetune._sentiment import TINY, write_splits

RTOL = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_splits(tmp_path_factory.mktemp("sentiment"), (96, 32, 32))


def overrides(files: dict[str, Path], out: Path, **extra) -> dict[str, object]:
    over: dict[str, object] = {
        "data.train": files["train"], "data.val": files["val"], "data.test": files["test"], "init": "preset:bert-tiny",
        "train.out_dir": out, "train.batch_size": 16, "train.max_steps": 8, "train.warmup_steps": 2, "train.lr": 3e-3,
        "train.eval_every": 4, "train.log_every": 1, "train.device": "cpu", "train.threads": 1, "train.seed": 0,
        **TINY}
    over.update(extra)
    return over


def recipe(files, out: Path, **extra):
    return load_finetune_config(None, "classify", [f"{k}={v}" for k, v in overrides(files, out, **extra).items()])


def losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def assert_close(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for s in want:
        assert abs(got[s] - want[s]) <= RTOL * abs(want[s]), f"step {s}: {got[s]} vs {want[s]}"


def quiet(s: str) -> None:
    pass


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory) -> dict[int, float]:
    """The eager single-process run the compiled and DDP runs are compared with (2 micro-batches per step)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run(recipe(files, out, **{"train.grad_accum": 2}), progress=False, log=quiet)
    return losses(out)


def test_batch_stream_is_the_epochs_in_order(files):
    class Task:
        def length(self, f):
            return None

        def collate(self, feats):
            return {"idx": torch.tensor(feats)}

    stream = BatchStream(Task(), list(range(10)), 4, seed=3)
    expected = epoch_batches(10, 4, 3, 0) + epoch_batches(10, 4, 3, 1) + epoch_batches(10, 4, 3, 2)
    assert stream.per_epoch == 3
    assert [stream[k]["idx"].tolist() for k in range(9)] == expected
    assert stream[4]["idx"].tolist() == expected[4]  # any order: a pure function of the index


def test_muon_runs_at_its_own_learning_rate(files, tmp_path, monkeypatch):
    made = []
    real = engine.build_optimizer

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(engine, "build_optimizer", spy)
    cfg = recipe(files, tmp_path / "muon", **{"train.optimizer": "muon", "train.muon_lr": 0.02,
                                               "train.max_steps": 3, "train.warmup_steps": 0})
    res = run(cfg, progress=False, log=quiet)
    assert res["step"] == 3
    muon, adamw = made[-1].optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    frac = lr_at(2, cfg.train) / cfg.train.lr  # the schedule at the last step
    assert 0 < frac < 1
    assert [g["lr"] for g in muon.param_groups] == pytest.approx([0.02 * frac])
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([3e-3 * frac] * 2)


@pytest.mark.slow
def test_compiled_finetuning_matches_eager(files, tmp_path, reference):
    out = tmp_path / "compiled"
    run(recipe(files, out, **{"train.grad_accum": 2, "train.compile": "true"}), progress=False, log=quiet)
    assert_close(losses(out), reference)


def _launch(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank: never leave children behind
        proc.communicate()
        raise AssertionError(f"timed out after {timeout} s") from None


def _cli(files, out: Path, tmp_path: Path, **extra) -> list[str]:
    """``attnlab finetune classify RECIPE overrides --no-progress`` with the recipe in a YAML file."""
    over = overrides(files, out, **extra)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"init": "preset:bert-tiny"}))
    return ["finetune", "classify", str(path), *[f"{k}={v}" for k, v in over.items() if k != "init"], "--no-progress"]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(files, tmp_path, reference):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "attnlab",
           *_cli(files, out, tmp_path, **{"train.grad_accum": 2, "train.parallel": "ddp"})]
    proc = _launch(cmd)
    stdout, stderr = _finish(proc, timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("ddp over 2 processes") == 1  # rank 0 alone logs
    assert_close(losses(out), reference)
    assert (out / "results.json").is_file() and (out / "model" / "task.json").is_file()


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    metrics = out / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if metrics.exists() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()
                                    if line.endswith("}")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("timed out waiting for the run")


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses(files, tmp_path):
    # Dropout on: the resumed run must restore the RNG too. Wide enough that a step takes a few milliseconds.
    opts = {"model.dropout": 0.1, "model.d_model": 128, "model.d_ff": 256, "train.max_steps": 60,
            "train.ckpt_every": 5, "train.eval_every": 20}
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = _launch([sys.executable, "-m", "attnlab", *_cli(files, ref_dir, tmp_path, **opts)])
    _, err = _finish(ref, timeout=300)
    assert ref.returncode == 0, err[-3000:]
    reference = losses(ref_dir)
    assert sorted(reference) == list(range(1, 61))

    cut = _launch([sys.executable, "-m", "attnlab", *_cli(files, cut_dir, tmp_path, **opts)])
    _wait_for_step(cut_dir, cut, 23)
    os.killpg(cut.pid, signal.SIGKILL)
    assert cut.wait(timeout=60) == -signal.SIGKILL
    saved = int((cut_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 20 <= saved < 60, saved

    again = _launch([sys.executable, "-m", "attnlab", *_cli(files, cut_dir, tmp_path, **opts), "--resume"])
    out, err = _finish(again, timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert f"resumed from {cut_dir / 'checkpoints'}" in out + err
    got = losses(cut_dir)
    assert sorted(got) == list(range(1, 61)), "metrics file must read as one run"
    assert got == reference  # bit-identical, every step
    want, have = (json.loads((d / "results.json").read_text()) for d in (ref_dir, cut_dir))
    assert (have["best_step"], have["val"], have["test"]) == (want["best_step"], want["val"], want["test"])


def test_resume_with_changed_settings_says_what_changed(files, tmp_path):
    out = tmp_path / "run"
    run(recipe(files, out, **{"train.max_steps": 4, "train.ckpt_every": 2}), progress=False, log=quiet)
    with pytest.raises(AttnlabError, match="already holds a fine-tuning run; pass --resume"):
        run(recipe(files, out), progress=False, log=quiet)
    lines: list[str] = []
    res = run(recipe(files, out, **{"train.max_steps": 6, "train.lr": 1e-3, "train.batch_size": 8}), resume=True,
              progress=False, log=lines.append)
    changed = [line for line in lines if line.startswith("resuming with")]
    assert changed == ["resuming with train.batch_size=8 (was 16), train.lr=0.001 (was 0.003)"], lines
    assert res["step"] == 6 and sorted(losses(out)) == list(range(1, 7))
    assert json.loads((out / "results.json").read_text())["step"] == 6


def test_resume_refusals(files, tmp_path):
    with pytest.raises(AttnlabError, match="nothing to resume"):
        run(recipe(files, tmp_path / "none"), resume=True, progress=False, log=quiet)
    out = tmp_path / "run"
    run(recipe(files, out, **{"train.max_steps": 2}), progress=False, log=quiet)
    with pytest.raises(AttnlabError, match="fine-tuned with model="):
        run(recipe(files, out, **{"model.n_layer": 2}), resume=True, progress=False, log=quiet)


def test_nonfinite_follows_the_policy(files, tmp_path):
    out = tmp_path / "nan"
    res = run(recipe(files, out, **{"train.inject_nan_steps": "[2]"}), progress=False, log=quiet)
    assert res["step"] == 8 and sorted(losses(out)) == [1, *range(3, 9)]  # step 2 skipped, the run goes on
    events = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "event" in r]
    assert [(e["step"], e["event"]) for e in events] == [(2, "nonfinite")]
    with pytest.raises(AttnlabError, match=r"not finite.*train.nonfinite=stop.*step 1\) is saved"):
        run(recipe(files, tmp_path / "stop", **{"train.inject_nan_steps": "[2]", "train.nonfinite": "stop"}),
            progress=False, log=quiet)


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(files, tmp_path):
    out = tmp_path / "run"
    opts = {"model.d_model": 128, "model.d_ff": 256, "train.max_steps": 2000, "train.eval_every": 0}
    proc = _launch([sys.executable, "-m", "attnlab", *_cli(files, out, tmp_path, **opts)])
    _wait_for_step(out, proc, 3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = _finish(proc, timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "continue with --resume" in stdout + stderr
    step = int((out / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 3 <= step < 2000 and not (out / "results.json").exists()
    again = _launch([sys.executable, "-m", "attnlab", *_cli(files, out, tmp_path, **opts), "--resume",
                     f"train.max_steps={step + 2}"])
    _, stderr = _finish(again, timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert max(losses(out)) == step + 2 and json.loads((out / "results.json").read_text())["step"] == step + 2


def kill_and_resume(cli, ref_dir: Path, cut_dir: Path, losses_of, steps: int = 60, kill_at: int = 23) -> str:
    """Run ``cli(ref_dir)`` to the end; run ``cli(cut_dir)``, SIGKILL it past step ``kill_at``, resume it
    (``cli(cut_dir, "--resume")``) to the end. Checks the kill left a checkpoint and every step's losses
    (``losses_of(folder)``) are bit-identical; returns the resumed run's output for the caller's own checks."""
    ref = _launch(cli(ref_dir))
    _, err = _finish(ref, timeout=300)
    assert ref.returncode == 0, err[-3000:]
    reference = losses_of(ref_dir)
    assert sorted(reference) == list(range(1, steps + 1))
    cut = _launch(cli(cut_dir))
    _wait_for_step(cut_dir, cut, kill_at)
    os.killpg(cut.pid, signal.SIGKILL)
    assert cut.wait(timeout=60) == -signal.SIGKILL
    saved = int((cut_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 20 <= saved < steps, saved
    again = _launch(cli(cut_dir, "--resume"))
    out, err = _finish(again, timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert losses_of(cut_dir) == reference  # bit-identical, every step
    want, have = (json.loads((d / "results.json").read_text()) for d in (ref_dir, cut_dir))
    assert (have["best_step"], have["val"], have["test"]) == (want["best_step"], want["val"], want["test"])
    return out + err

