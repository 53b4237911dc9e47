"""Optimizers (AdamW, Muon + AdamW), the learning-rate scaling and activation checkpointing."""

import json
import shutil

import pytest
import torch

from attnlab import config
from attnlab.errors import CheckpointError
from attnlab.models import build
from attnlab.train import train
from attnlab.train.distributed import enable_activation_checkpointing
from attnlab.train.optim import OptimizerGroup, build_optimizer, set_lr


def quiet(s):
    pass


def losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_muon_takes_hidden_matrices_adamw_the_rest():
    cfg = config.load("llama-tiny", ["model.vocab_size=300", "train.optimizer=muon", "train.muon_lr=0.05"])
    model = build(cfg)
    opt = build_optimizer(model, cfg.train, "cpu")
    assert isinstance(opt, OptimizerGroup)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon and all(n.startswith("blocks.") and n.endswith("_proj.weight") for n in in_muon)
    assert {"tok_emb.weight", "lm_head.weight", "final_norm.weight"} <= in_adamw
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())  # every parameter exactly once
    set_lr(opt, cfg.train.lr / 2, cfg.train.lr)  # half-way down the schedule: every group at half its peak
    assert [g["lr"] for g in muon.param_groups] == [0.025]
    assert all(g["lr"] == cfg.train.lr / 2 for g in adamw.param_groups)


def test_adamw_stays_a_plain_optimizer():
    cfg = config.load("gpt-tiny", ["model.vocab_size=300", "train.optimizer=adamw"])
    opt = build_optimizer(build(cfg), cfg.train, "cpu")
    assert isinstance(opt, torch.optim.AdamW) and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_muon_trains_and_resumes_exactly(tmp_path, tiny_cfg, one_thread):
    extra = {"train.optimizer": "muon", "train.muon_lr": 0.02, "train.ckpt_every": 4}
    ref = tiny_cfg(tmp_path / "ref", **extra)
    train(ref, progress=False, log=quiet)
    want = losses(tmp_path / "ref")
    assert want[8] < want[1] - 0.3  # it learns
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000008")  # as if killed after the step-4 save
    train(tiny_cfg(cut, **extra), resume=True, progress=False, log=quiet)
    got = losses(cut)
    assert [got[s] for s in range(5, 9)] == [want[s] for s in range(5, 9)]
    with pytest.raises(CheckpointError, match="trained with train.optimizer=muon"):
        train(tiny_cfg(cut, **{"train.max_steps": 9}), resume=True, progress=False, log=quiet)


def test_activation_checkpointing_gives_the_same_loss_and_gradients(one_thread):
    cfg = config.load("gpt-tiny", ["model.vocab_size=300", "model.n_layer=2", "model.d_model=64", "model.n_head=2"])
    ids = torch.randint(0, 300, (2, 16))
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build(cfg)
        if checkpointed:
            assert enable_activation_checkpointing(model) == 2
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=False):
        assert torch.allclose(a, b, atol=1e-6)


def test_sharded_muon_steps_plain_tensors_exactly_like_muon():
    """Without shards ShardedMuon is torch.optim.Muon, bit for bit (its FSDP path: test_distributed)."""
    from attnlab.train.muon import ShardedMuon

    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(8, 5, generator=gen), torch.randn(4, 12, generator=gen)]
    a = [torch.nn.Parameter(w.clone()) for w in weights]
    b = [torch.nn.Parameter(w.clone()) for w in weights]
    opts = [torch.optim.Muon(a, lr=0.05, weight_decay=0.1), ShardedMuon(b, lr=0.05, weight_decay=0.1)]
    for step in range(3):
        for params, opt in zip((a, b), opts, strict=False):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            opt.step()
    for x, y in zip(a, b, strict=False):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], weights[0])  # it stepped
