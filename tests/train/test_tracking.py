"""train.log_to: TensorBoard event files and W&B offline runs hold what metrics.jsonl holds, for pretraining and
fine-tuning, across an error and a resume; bad trackers and missing packages are one-line errors; the default
writes neither folder. W&B runs offline here and never logs in (no network)."""

from __future__ import annotations

import json
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.config import TrainConfig
from attnlab.errors import ConfigError
from attnlab.train import train
from attnlab.train.health import NonFiniteError
from attnlab.train.tracking import RUN_ID_FILE, wandb_init_kwargs

REL = 1e-6  # TensorBoard stores scalars as float32


def quiet(s: str) -> None:
    pass


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """W&B offline and silent, its caches and settings in the test's folder, no API key."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))


def jsonl(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers by name: [(step, value)] in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((record["step"], v))
    return out


def tensorboard(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars TensorBoard shows for the run (every event file, purges applied; a tag whose points were all
    purged has none to show)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    series = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return {tag: points for tag, points in series.items() if points}


def assert_same(got: dict[str, list[tuple[int, float]]], want: dict[str, list[tuple[int, float]]]) -> None:
    assert sorted(got) == sorted(want)
    for name, series in want.items():
        assert [s for s, _ in got[name]] == [s for s, _ in series], name
        assert [v for _, v in got[name]] == pytest.approx([v for _, v in series], rel=REL), name


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (a LevelDB-style log: 32 KiB blocks of
    [crc32, length, type] chunks after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, chunk, out = 7, 32768, b"", []
    while len(data) - pos >= 7:
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


@dataclass
class WandbSession:
    """One offline W&B session of a run folder: its run id, history rows by name ([(step, value)]), exit code."""

    run_id: str
    history: dict[str, list[tuple[int, float]]]
    exit_code: int | None


def wandb_sessions(run: Path) -> list[WandbSession]:
    """The offline W&B sessions of the run, oldest first."""
    out = []
    for f in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        session = WandbSession(f.stem.removeprefix("run-"), {}, None)
        for record in wandb_records(f):
            kind = record.WhichOneof("record_type")
            if kind == "exit":
                session.exit_code = record.exit.exit_code
            elif kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                for k, v in row.items():
                    if not k.startswith("_"):
                        session.history.setdefault(k, []).append((row["_step"], v))
        out.append(session)
    return out


def by_step(series: dict[str, list[tuple[int, float]]]) -> dict[str, dict[int, float]]:
    return {k: dict(v) for k, v in series.items()}


def test_default_writes_metrics_jsonl_only(tmp_path, tiny_cfg, one_thread):
    assert TrainConfig().log_to == ["jsonl"]
    run = tmp_path / "run"
    train(tiny_cfg(run, **{"train.max_steps": 2}), progress=False, log=quiet)
    assert (run / "metrics.jsonl").exists()
    assert not (run / "tensorboard").exists() and not (run / "wandb").exists()


def test_tensorboard_and_wandb_hold_the_metrics_jsonl_losses_across_an_error_and_a_resume(tmp_path, tiny_cfg,
                                                                                          one_thread):
    pytest.importorskip("tensorboard", reason="tensorboard not installed: pip install 'attnlab[track]'")
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'attnlab[track]'")
    run = tmp_path / "run"
    over = {"train.log_to": "[jsonl,tensorboard,wandb]", "train.eval_every": 2, "train.ckpt_every": 2}
    with pytest.raises(NonFiniteError):  # stops at step 5 after saving step 4
        train(tiny_cfg(run, **over, **{"train.inject_nan_steps": [5], "train.nonfinite": "stop"}),
              progress=False, log=quiet)
    first = jsonl(run)
    assert [s for s, _ in first["loss"]] == [1, 2, 3, 4] and [s for s, _ in first["val_loss"]] == [2, 4]
    assert [s for s, _ in first["nonfinite_total"]] == [5]  # the health event of step 5, after the checkpoint
    assert_same(tensorboard(run), first)
    sessions = wandb_sessions(run)
    assert len(sessions) == 1 and (run / "wandb" / RUN_ID_FILE).read_text().strip() == sessions[0].run_id
    assert sessions[0].exit_code == 1  # W&B finished the run, as failed, although training raised
    assert by_step(sessions[0].history) == by_step(first)  # every number of every step, exactly

    time.sleep(1.1)  # W&B names an offline session's folder by the second it starts
    lines: list[str] = []
    train(tiny_cfg(run, **over), resume=True, progress=False, log=lines.append)
    assert any("TensorBoard" in line and "W&B, offline" in line for line in lines)
    final = jsonl(run)
    assert [s for s, _ in final["loss"]] == list(range(1, 9)) and [s for s, _ in final["val_loss"]] == [2, 4, 6, 8]
    assert "nonfinite_total" not in final  # dropped with the records after the checkpoint ...
    assert_same(tensorboard(run), final)  # ... and hidden in TensorBoard too (purge_step)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the resumed run appended
    sessions = wandb_sessions(run)
    assert [s.run_id for s in sessions] == [sessions[0].run_id] * 2  # one W&B run, continued
    assert sessions[1].exit_code == 0
    after = {k: {s: v for s, v in series.items() if s > 4} for k, series in by_step(final).items()}
    assert by_step(sessions[1].history) == {k: series for k, series in after.items() if series}


def test_finetuning_sends_its_metrics_to_tensorboard_and_wandb(tmp_path, one_thread):
    pytest.importorskip("tensorboard", reason="tensorboard not installed: pip install 'attnlab[track]'")
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'attnlab[track]'")
    from attnlab.finetune import load_finetune_config, run
    from tests.finetune._sentiment import TINY, write_splits

    (tmp_path / "data").mkdir()
    files = write_splits(tmp_path / "data", (48, 16, 16))
    out = tmp_path / "ft"
    over = {"data.train": files["train"], "data.val": files["val"], "data.test": files["test"],
            "init": "preset:bert-tiny", "train.out_dir": out, "train.batch_size": 16, "train.max_steps": 4,
            "train.warmup_steps": 1, "train.lr": 3e-3, "train.eval_every": 2, "train.log_every": 1,
            "train.device": "cpu", "train.threads": 1, "train.seed": 0, "train.log_to": "[tensorboard,wandb]", **TINY}
    run(load_finetune_config(None, "classify", [f"{k}={v}" for k, v in over.items()]), progress=False, log=quiet)
    want = jsonl(out)
    assert "loss" in want and "val_accuracy" in want
    assert_same(tensorboard(out), want)
    sessions = wandb_sessions(out)
    assert len(sessions) == 1 and sessions[0].exit_code == 0 and by_step(sessions[0].history) == by_step(want)


@pytest.mark.parametrize("log_to, where", [("[foo]", "train.log_to[0]"), ("[jsonl,foo]", "train.log_to[1]")])
def test_an_unknown_tracker_is_a_one_line_error(tmp_path, tiny_overrides, capsys, one_line_error, log_to, where):
    run = tmp_path / "run"
    code = main(["train", "gpt-tiny", *tiny_overrides(run, **{"train.log_to": log_to}), "--no-progress"])
    one_line_error(capsys, code, f"{where} must be one of 'jsonl', 'tensorboard', 'wandb', got 'foo'")
    assert not run.exists()
    with pytest.raises(ConfigError, match="non-empty list"):
        TrainConfig(log_to=[])


@pytest.mark.parametrize("package, log_to", [("wandb", "[jsonl,wandb]"), ("tensorboard", "[tensorboard]")])
def test_a_missing_package_is_a_one_line_error_before_training(tmp_path, tiny_overrides, capsys, one_line_error,
                                                               monkeypatch, package, log_to):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: find_spec None, import fails
    run = tmp_path / "run"
    code = main(["train", "gpt-tiny", *tiny_overrides(run, **{"train.log_to": log_to}), "--no-progress"])
    line = one_line_error(capsys, code, f"needs {package}, which is not installed; pip install 'attnlab[track]'")
    assert line.count(package) >= 2  # names the package and how to leave it out
    assert not (run / "metrics.jsonl").exists() and not (run / "tokenizer.json").exists()  # nothing trained


def test_wandb_runs_offline_unless_wandb_mode_is_set(tmp_path):
    run = tmp_path / "my-run"
    kwargs = wandb_init_kwargs(run, {"train": {"lr": 1e-3}}, None, environ={})
    assert kwargs["mode"] == "offline" and kwargs["name"] == "my-run" and kwargs["project"] == "attnlab"
    assert kwargs["dir"] == str(run) and kwargs["config"] == {"train": {"lr": 1e-3}}
    assert kwargs["settings"]["silent"] and "id" not in kwargs
    online = wandb_init_kwargs(run, {}, "abc123", environ={"WANDB_MODE": "online"})
    assert "mode" not in online  # the user's WANDB_MODE decides
    assert online["id"] == "abc123" and online["resume"] == "allow"


@pytest.mark.slow
def test_two_processes_track_from_rank_0_only(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard", reason="tensorboard not installed: pip install 'attnlab[track]'")
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'attnlab[track]'")
    from tests.train.test_distributed import torchrun

    run = tmp_path / "ddp"
    done = torchrun(tiny_overrides(run, **{"train.log_to": "[jsonl,tensorboard,wandb]", "train.max_steps": 4}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert_same(tensorboard(run), jsonl(run))
    sessions = wandb_sessions(run)
    assert len(sessions) == 1 and by_step(sessions[0].history) == by_step(jsonl(run))
