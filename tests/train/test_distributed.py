"""Several processes on CPU (gloo): DDP and FSDP2 follow the single-process loss trajectory,
and a checkpoint saved by 2 processes resumes in 1."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch.distributed as dist

from attnlab.cli import main
from attnlab.errors import AttnlabError
from attnlab.train import load_model, train
from attnlab.train.checkpoint.dist import is_dist_checkpoint
from attnlab.train.distributed import DistEnv, setup

# Accumulation (2 micro-batches) exercises no_sync / set_requires_gradient_sync; a save at step 4.
OPTS = {"train.grad_accum": 2, "train.ckpt_every": 4}
RTOL = 1e-4


def quiet(s):
    pass


def losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def assert_close(got, want, steps):
    for s in steps:
        assert abs(got[s] - want[s]) <= RTOL * abs(want[s]), f"step {s}: {got[s]} vs {want[s]}"


def torchrun(args: list[str], nproc: int = 2, timeout: float = 150) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m attnlab train gpt-tiny ARGS``, killed whole on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "attnlab", "train", "gpt-tiny", *args, "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank: a stuck collective never hangs the suite
        out, err = proc.communicate()
        raise AssertionError(f"torchrun timed out after {timeout} s:\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def reference(tmp_path, tiny_cfg, one_thread):
    """The single-process run (also fills the tokenized-data cache the processes share)."""
    run = tmp_path / "ref"
    train(tiny_cfg(run, **OPTS), progress=False, log=quiet)
    return losses(run)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_and_resume_in_one(parallel, tmp_path, reference, tiny_cfg, tiny_overrides, one_thread):
    run = tmp_path / parallel
    done = torchrun(tiny_overrides(run, **OPTS, **{"train.parallel": parallel}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished 8 steps") == 1 and f"{parallel} over 2 processes" in done.stdout  # rank 0 only
    got = losses(run)
    assert sorted(got) == list(range(1, 9))
    assert_close(got, reference, range(1, 9))

    ckpt = run / "checkpoints" / "step_0000008"
    assert is_dist_checkpoint(ckpt) and json.loads((ckpt / "meta.json").read_text())["world_size"] == 2
    assert any(f.startswith("dcp/") for f in json.loads((ckpt / "meta.json").read_text())["sha256"])
    model, loaded = load_model(run)  # inference reads the consolidated weights
    assert loaded.step == 8 and model.lm_head.weight is model.tok_emb.weight

    shutil.rmtree(ckpt)  # as if the run died after its step-4 save
    train(tiny_cfg(run, **OPTS), resume=True, progress=False, log=quiet)  # one process, no process group
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, 9))
    assert_close(resumed, reference, range(5, 9))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_compiled_two_processes_match_one_eager(parallel, tmp_path, reference, tiny_overrides):
    """train.compile under DDP (no_sync during accumulation) and FSDP2 follows the eager single process."""
    run = tmp_path / f"{parallel}-compiled"
    done = torchrun(tiny_overrides(run, **OPTS, **{"train.parallel": parallel, "train.compile": "true"}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled attention: sdpa (causal)") == 1  # prepared, said once (rank 0)
    assert_close(losses(run), reference, range(1, 9))


@pytest.mark.slow
def test_fsdp_muon_matches_one_process(tmp_path, tiny_cfg, tiny_overrides, one_thread):
    """Muon on FSDP2 shards (ShardedMuon: one gather per matrix) follows torch.optim.Muon in one process."""
    muon = {**OPTS, "train.optimizer": "muon", "train.muon_lr": 0.02}
    train(tiny_cfg(tmp_path / "ref", **muon), progress=False, log=quiet)
    done = torchrun(tiny_overrides(tmp_path / "fsdp", **muon, **{"train.parallel": "fsdp"}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(losses(tmp_path / "fsdp"), losses(tmp_path / "ref"), range(1, 9))


def test_fsdp_resumes_a_single_process_checkpoint(tmp_path, reference, tiny_cfg, one_thread):
    run = tmp_path / "fsdp"
    shutil.copytree(tmp_path / "ref", run)
    shutil.rmtree(run / "checkpoints" / "step_0000008")  # the plain step-4 checkpoint is the newest
    train(tiny_cfg(run, **OPTS, **{"train.parallel": "fsdp"}), resume=True, progress=False, log=quiet)
    assert not dist.is_initialized()  # FSDP in one process started (and ended) its own group
    assert is_dist_checkpoint(run / "checkpoints" / "step_0000008")
    assert_close(losses(run), reference, range(5, 9))


def test_a_user_error_is_printed_once_by_rank_0(monkeypatch, capsys, tmp_path, tiny_overrides, one_line_error):
    args = ["train", "gpt-tiny", *tiny_overrides(tmp_path / "bad", **{"train.batch_size": 3})]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 2
    assert capsys.readouterr().err == ""  # the other ranks fail quietly
    monkeypatch.setenv("RANK", "0")
    one_line_error(capsys, main(args), "train.batch_size=3 (the global micro-batch) does not split over 2 processes")


def test_global_batch_is_split_evenly(monkeypatch, tiny_cfg):
    assert [DistEnv(rank=r, world_size=4).shard(8) for r in range(4)] == [
        slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(AttnlabError, match=r"train.batch_size=4 .* does not split over 3 processes"):
        setup(tiny_cfg().train, "cpu")
