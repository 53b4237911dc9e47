"""Checkpoint faults: a kill mid-save, damaged files, a full disk, a read-only folder.

Each fault must be survived with nothing lost (earlier checkpoints stay loadable, damaged
ones stay on disk for inspection) and reported on one clear line.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnlab.errors import CheckpointError
from attnlab.io import durable
from attnlab.models import build
from attnlab.train import checkpoint as ck
from attnlab.train import loop, train
from attnlab.train.checkpoint import (
    check_writable,
    checkpoint_folders,
    has_checkpoint,
    latest_good_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


class Lines(list):
    """A ``log`` callable that keeps the lines."""

    def __call__(self, line: str) -> None:
        assert "\n" not in line
        self.append(line)


def names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture
def tiny(tiny_cfg):
    cfg = tiny_cfg()
    cfg.model.vocab_size = 300
    torch.manual_seed(0)
    return cfg, build(cfg)


@pytest.fixture
def save(tmp_path, tiny):
    """``save(step, **kw)`` writes a checkpoint of the tiny model into ``tmp_path / "run"``."""
    cfg, model = tiny

    def run_save(step: int, **kw):
        kw.setdefault("log", Lines())
        return save_checkpoint(tmp_path / "run", step, model, cfg, state={"marker": torch.tensor(step)}, **kw)

    return run_save


def flip(f: Path, at: float = 0.5) -> None:
    data = bytearray(f.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    f.write_bytes(bytes(data))


def damage(ckpt: Path, how: str) -> str:
    """Damage a checkpoint (or ``latest``); return a word the reason must contain."""
    if how == "truncated weights":
        f = ckpt / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
        return "truncated"
    if how == "flipped byte in weights":
        flip(ckpt / "model.safetensors")
        return "checksum mismatch"
    if how == "flipped byte in state":
        flip(ckpt / "state.pt", 0.9)
        return "checksum mismatch"
    if how == "missing weights":
        (ckpt / "model.safetensors").unlink()
        return "missing"
    if how == "missing meta":
        (ckpt / "meta.json").unlink()
        return "no meta.json"
    if how == "garbage meta":
        (ckpt / "meta.json").write_bytes(b"\x00\xff garbage")
        return "not valid"
    if how == "edited meta":  # valid JSON, but not what was written
        meta = json.loads((ckpt / "meta.json").read_text())
        meta["bytes"]["state.pt"] += 1
        (ckpt / "meta.json").write_text(json.dumps(meta))
        return "meta.json' is corrupt (checksum mismatch)"
    if how == "garbage latest":
        (ckpt.parent / "latest").write_bytes(b"\xff\xfe step_oops")
        return "does not name a checkpoint"
    if how == "latest names a missing folder":
        (ckpt.parent / "latest").write_text("step_0000099\n")
        return "missing"
    raise ValueError(how)


FOLDER_DAMAGE = ["truncated weights", "flipped byte in weights", "flipped byte in state", "missing weights",
                 "missing meta", "garbage meta", "edited meta"]


@pytest.mark.parametrize("how", FOLDER_DAMAGE)
def test_resume_skips_a_damaged_newest_checkpoint_and_keeps_it(tmp_path, save, how):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save(step)
    bad = run / "checkpoints" / "step_0000003"
    word = damage(bad, how)
    before = sorted(p.name for p in bad.iterdir())

    log = Lines()
    good, rejected = latest_good_checkpoint(run, log)
    assert good.name == "step_0000002"
    assert [p for p, _ in rejected] == [bad] and word in rejected[0][1]
    assert len(log) == 1 and str(bad) in log[0] and word in log[0] and "left in place" in log[0]

    log = Lines()
    ckpt = load_checkpoint(run, log=log)  # what --resume and generate/eval get: the same fallback, one warning
    assert ckpt.path == good and ckpt.step == 2 and int(ckpt.training_state()["marker"]) == 2
    assert len(log) == 1 and str(bad) in log[0]
    with pytest.raises(CheckpointError) as e:  # a folder named explicitly is never substituted
        load_checkpoint(bad)
    assert str(bad) in one_line(e) and word in str(e.value)
    assert sorted(p.name for p in bad.iterdir()) == before, "a damaged checkpoint must stay for inspection"
    assert has_checkpoint(run)

    # Training resumed from step 2 saves step 3 again: the damaged folder is set aside, not deleted.
    log = Lines()
    save(3, log=log)
    assert names(run) == ["corrupt-step_0000003", "latest", "step_0000001", "step_0000002", "step_0000003"]
    assert len(log) == 1 and "moved damaged checkpoint" in log[0]
    assert load_checkpoint(run, log=Lines()).step == 3


@pytest.mark.parametrize("how", ["garbage latest", "latest names a missing folder"])
def test_damaged_latest_is_reported_and_ignored(tmp_path, save, how):
    run = tmp_path / "run"
    for step in (1, 2):
        save(step)
    word = damage(run / "checkpoints" / "step_0000002", how)
    log = Lines()
    good, rejected = latest_good_checkpoint(run, log)
    assert good.name == "step_0000002"
    assert rejected[0][0].name == "latest" and word in rejected[0][1]
    assert len(log) == 1 and "latest" in log[0] and word in log[0]
    save(3)
    assert (run / "checkpoints" / "latest").read_text() == "step_0000003\n"


def test_no_good_checkpoint_is_one_clear_error_and_deletes_nothing(tmp_path, save):
    run = tmp_path / "run"
    for step, how in zip((1, 2), ("truncated weights", "missing meta"), strict=False):
        damage(save(step), how)
    before = names(run)
    with pytest.raises(CheckpointError) as e:
        latest_good_checkpoint(run, Lines())
    msg = one_line(e)
    assert f"no usable checkpoint in '{run / 'checkpoints'}': all 2 are damaged" in msg
    assert "no meta.json" in msg and "new train.out_dir" in msg
    assert names(run) == before
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_checkpoint(run, log=Lines())


def test_rotation_counts_only_good_checkpoints(tmp_path, save):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save(step, keep_last=3)
    damage(run / "checkpoints" / "step_0000002", "truncated weights")
    save(4, keep_last=3)
    assert names(run) == ["latest", "step_0000001", "step_0000002", "step_0000003", "step_0000004"]
    save(5, keep_last=3)
    save(6, keep_last=3)
    assert names(run) == ["latest", "step_0000002", "step_0000004", "step_0000005", "step_0000006"]
    good = [p.name for p in checkpoint_folders(run) if p.name != "step_0000002"]
    assert len(good) == 3 and all(verify_checkpoint(run / "checkpoints" / n) for n in good)


# ---------------------------------------------------------------------------
# SIGKILL in the middle of a save.

CHILD = r"""
import io, os, sys, time
from pathlib import Path
import torch
from attnlab import config
from attnlab.models import build
from attnlab.train import checkpoint as ck
from attnlab.io import durable

tmp, kill_points = Path(sys.argv[1]), [int(k) for k in sys.argv[2:]]
cfg = config.load(tmp / "cfg.yaml")
model = build(cfg)
real_write = durable.write_file


def hang_at(kill_at, ready):  # the kill_at-th file written by the next save is half-written, then we hang
    calls = []

    def write(path, data):
        calls.append(path)
        if len(calls) < kill_at:
            return real_write(path, data)
        if callable(data):
            buf = io.BytesIO()
            data(buf)
            data = buf.getvalue()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        ready.write_text(f"{os.getpid()} {path}")
        time.sleep(120)  # the test kills us long before; its teardown kills the whole process group anyway

    return write


for k in kill_points:  # one forked process per kill point: torch is imported once
    if os.fork() == 0:
        run = tmp / f"run{k}"
        for step in (1, 2):
            ck.save_checkpoint(run, step, model, cfg, state={"marker": torch.tensor(step)})
        durable.write_file = hang_at(k, tmp / f"ready{k}")
        ck.save_checkpoint(run, 3, model, cfg, state={"marker": torch.tensor(3)})
        os._exit(1)
statuses = [os.wait()[1] for _ in kill_points]
sys.exit(0 if all(os.WIFSIGNALED(s) and os.WTERMSIG(s) == 9 for s in statuses) else 1)
"""

# The files written by one save, in order: weights, optimizer state, meta.json (before the folder
# is renamed into place), then the temporary 'latest' (after it).
KILL_POINTS = {1: "model.safetensors", 2: "state.pt", 3: "meta.json", 4: ".latest.tmp"}


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process it forked (started with ``start_new_session=True``), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has already exited
        pass
    proc.wait(timeout=60)
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_loses_nothing(tmp_path, tiny):
    cfg, model = tiny
    cfg.save(tmp_path / "cfg.yaml")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # Its own process group, so the teardown reaches every forked child whatever happens here.
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path), *map(str, KILL_POINTS)],
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for k in KILL_POINTS:
            ready = tmp_path / f"ready{k}"
            t0 = time.time()
            while not ready.exists() or not ready.read_text():
                assert parent.poll() is None, parent.stderr.read()
                assert time.time() - t0 < 120, "child never reached the kill point"
                time.sleep(0.01)
            pid, path = ready.read_text().split(" ", 1)
            assert KILL_POINTS[k] in Path(path).name
            os.kill(int(pid), signal.SIGKILL)
        assert parent.wait(timeout=60) == 0, parent.stderr.read()
    finally:
        kill_process_group(parent)

    for k in KILL_POINTS:
        run = tmp_path / f"run{k}"
        root = run / "checkpoints"
        leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
        assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-step_0000003-" if k < 4 else ".latest.tmp-")
        assert (root / "latest").read_text() == "step_0000002\n", "'latest' must still name a complete checkpoint"
        verify_checkpoint(root / "step_0000001")
        verify_checkpoint(root / "step_0000002")
        expected = 3 if k == 4 else 2  # killed after the rename: step 3 is complete and is used
        log = Lines()
        ckpt = load_checkpoint(run, log=log)
        assert (ckpt.step, int(ckpt.training_state()["marker"]), log) == (expected, expected, [])
        assert has_checkpoint(run)

        log = Lines()  # the next save cleans up after the killed one
        save_checkpoint(run, 4, model, cfg, state={"marker": torch.tensor(4)}, log=log)
        assert not [p for p in root.iterdir() if p.name.startswith(".")]
        assert names(run) == ["latest"] + [f"step_{s:07d}" for s in ((1, 2, 4) if k < 4 else (2, 3, 4))]
        assert len(log) == (1 if k < 4 else 0) and (k == 4 or "unfinished checkpoint" in log[0])
        assert load_checkpoint(run, log=log).step == 4


# ---------------------------------------------------------------------------
# A full disk.


class FullDisk:
    """Stands in for ``open`` in attnlab.io.durable (every checkpoint write goes through it):
    writes to files named like ``target`` get half their bytes through, then ``OSError(ENOSPC)``, as on a full disk."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if "w" not in mode or self.target not in Path(path).name:
            return f
        write = f.write

        def half_then_full(b):
            write(bytes(b)[: len(b) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        f.write = half_then_full
        return f


@pytest.mark.parametrize("target", ["model.safetensors", "state.pt", "meta.json", "latest"])
def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, save, monkeypatch, target):
    run = tmp_path / "run"
    save(1)
    monkeypatch.setattr(durable, "open", FullDisk(target), raising=False)
    with pytest.raises(CheckpointError) as e:
        save(2)
    monkeypatch.undo()
    msg = one_line(e)
    assert f"'{run / 'checkpoints'}': the disk is full (No space left on device)" in msg
    assert "free space" in msg and "df -h" in msg
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "temporary files left"
    assert (run / "checkpoints" / "latest").read_text() == "step_0000001\n"
    verify_checkpoint(run / "checkpoints" / "step_0000001")
    if target == "latest":  # the folder was complete; only the pointer could not be updated
        assert msg.startswith("saved step_0000002 but could not update 'latest'")
        assert load_checkpoint(run, log=Lines()).step == 2
    else:
        assert msg.startswith("could not save checkpoint step_0000002") and "step_0000001 is intact" in msg
        assert names(run) == ["latest", "step_0000001"]
        assert load_checkpoint(run, log=Lines()).step == 1
    save(2)  # space freed: saving works again
    assert load_checkpoint(run, log=Lines()).step == 2


@pytest.fixture
def mount_point(tmp_path):
    """``mount(*args)`` runs ``mount ARGS`` (root with CAP_SYS_ADMIN only; skipped elsewhere), unmounted after."""
    mounted = []

    def mount(*args: str) -> Path:
        r = subprocess.run(["mount", *args], capture_output=True, text=True) if shutil.which("mount") else None
        if r is None or r.returncode != 0:
            pytest.skip(f"cannot mount here ({r.stderr.strip() if r else 'no mount command'})")
        if "remount" not in " ".join(args):
            mounted.append(args[-1])
        return Path(args[-1])

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", where]).returncode != 0:
            subprocess.run(["umount", "-l", where], check=True)


def test_real_full_disk(tmp_path, tiny, mount_point):
    cfg, model = tiny
    one = save_checkpoint(tmp_path / "probe", 1, model, cfg, state={})
    size = sum(f.stat().st_size for f in one.iterdir())
    disk = tmp_path / "disk"
    disk.mkdir()
    # one fits, two do not
    mount_point("-t", "tmpfs", "-o", f"size={size * 3 // 2 // 4096 * 4096 + 8192}", "tmpfs", str(disk))
    run = disk / "run"
    save_checkpoint(run, 1, model, cfg, state={})
    with pytest.raises(CheckpointError, match="step_0000002 in .*: the disk is full .*step_0000001 is intact"):
        save_checkpoint(run, 2, model, cfg, state={}, log=Lines())
    assert names(run) == ["latest", "step_0000001"]
    assert load_checkpoint(run).step == 1
    with pytest.raises(CheckpointError, match=r"only \d+ MiB free on the disk holding .* needs about 100 MiB"):
        check_writable(run, need_bytes=100 << 20)


# ---------------------------------------------------------------------------
# A read-only output folder. chmod does not stop root, so as root the folder is made
# read-only for real with a read-only bind mount (skipped where mounting is not allowed);
# the monkeypatched variant runs everywhere.


@pytest.fixture
def read_only(mount_point):
    """``read_only(folder)`` makes an existing folder read-only for this process, even as root."""
    chmodded = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            chmodded.append(folder)
        else:
            mount_point("--bind", str(folder), str(folder))
            mount_point("-o", "remount,bind,ro", str(folder))
        return folder

    yield make
    for folder in chmodded:
        folder.chmod(0o755)


def test_read_only_run_folder_fails_before_training_and_still_loads(tmp_path, save, read_only):
    run = tmp_path / "run"
    save(1)
    read_only(run)
    with pytest.raises(CheckpointError) as e:
        check_writable(run)
    msg = one_line(e)
    assert f"cannot save checkpoints in '{run / 'checkpoints'}': the folder is not writable" in msg
    assert "writable folder" in msg
    with pytest.raises(CheckpointError, match="could not save checkpoint step_0000002 .*not writable"):
        save(2)
    assert load_checkpoint(run, log=Lines()).step == 1  # inference from read-only media works
    with pytest.raises(CheckpointError, match="not writable"):
        check_writable(run / "new-run")


def test_read_only_file_system_probe(tmp_path, monkeypatch):
    def read_only_open(path, mode="r", *a, **k):
        if "w" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return builtins.open(path, mode, *a, **k)

    monkeypatch.setattr(durable, "open", read_only_open, raising=False)
    with pytest.raises(CheckpointError) as e:
        check_writable(tmp_path / "run")
    assert "not writable (Read-only file system); set train.out_dir to a writable folder" in one_line(e)
    monkeypatch.undo()
    check_writable(tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoints").iterdir()), "the probe file must be removed"


def test_file_in_the_way_of_the_run_folder(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(CheckpointError) as e:
        check_writable(tmp_path / "runs" / "gpt")
    assert "a file is in the way of a folder" in one_line(e) and "train.out_dir" in str(e.value)


# ---------------------------------------------------------------------------
# Through the training loop.


def quiet(s: str) -> None:
    pass


def losses(run: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_train_resumes_from_the_newest_good_checkpoint(tmp_path, tiny_cfg, capsys):
    run = tmp_path / "run"
    train(tiny_cfg(run, **{"train.ckpt_every": 4}), progress=False, log=quiet)
    reference = losses(run)
    damage(run / "checkpoints" / "step_0000008", "flipped byte in weights")
    lines = Lines()
    s = train(tiny_cfg(run, **{"train.ckpt_every": 4}), resume=True, progress=False, log=lines)
    assert any("resumed from" in line and "step_0000004" in line for line in lines), lines
    warned = [line for line in lines + capsys.readouterr().err.splitlines() if "step_0000008" in line]
    assert warned and "checksum mismatch" in warned[0], "the skipped checkpoint must be named with the reason"
    assert s["step"] == 8
    assert losses(run) == reference, "steps 5-8 are recomputed exactly"
    assert "corrupt-step_0000008" in names(run)


def test_disk_full_stops_training_with_the_last_checkpoint_intact(tmp_path, tiny_cfg, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_cfg(run, **{"train.ckpt_every": 4})
    full = FullDisk("model.safetensors")
    real_save = ck.save_checkpoint
    calls = []

    def fail_second(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            monkeypatch.setattr(durable, "open", full, raising=False)
        return real_save(*a, **k)

    monkeypatch.setattr(loop, "save_checkpoint", fail_second)
    with pytest.raises(CheckpointError,
                       match="could not save checkpoint step_0000008 .*disk is full.*step_0000004 is intact"):
        train(cfg, progress=False, log=quiet)
    monkeypatch.undo()
    assert names(run) == ["latest", "step_0000004"]
    s = train(tiny_cfg(run, **{"train.ckpt_every": 4}), resume=True, progress=False, log=quiet)
    assert s["step"] == 8 and load_checkpoint(run).step == 8


def test_train_on_a_read_only_folder_fails_before_any_step(tmp_path, tiny_cfg, read_only):
    (tmp_path / "ro").mkdir()
    parent = read_only(tmp_path / "ro")
    with pytest.raises(CheckpointError, match="not writable"):
        train(tiny_cfg(parent / "run"), progress=False, log=quiet)
    assert not (parent / "run" / "metrics.jsonl").exists()
