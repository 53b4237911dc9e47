"""The dpo task: the loss by hand, log 2 at step 0, rising reward accuracy, the reference computed once and
read back on resume (exactly, after SIGKILL too), LoRA's reference with adapters switched off, bad input."""

from __future__ import annotations

import copy
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attnlab.data.chat_data import read_preferences
from attnlab.data.tasks import write_jsonl
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune import adapters_disabled, count_parameters, inject_lora, load_finetune_config, load_finetuned, run
from attnlab.finetune.lora import merge_lora
from attnlab.finetune.tasks.dpo import REFERENCE_FILE, DPOTask, dpo_loss, tokenizer_fingerprint
from tests.finetune.test_engine_finetune import kill_and_resume

WORDS = ["tell", "me", "about", "the", "weather", "today", "please", "a", "story", "of", "cats", "and", "dogs"]
LOG2 = math.log(2.0)


def pairs(n: int, seed: int) -> list[dict]:
    """Records whose chosen reply says 'good' and rejected one 'bad' around the same words: easy to tell apart."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question, body = " ".join(rng.sample(WORDS, 5)), " ".join(rng.sample(WORDS, 3))
        out.append({"task": "toy", "lang": "en", "prompt": [{"role": "user", "content": question}],
                    "chosen": f"good {body} good", "rejected": f"bad {body} bad"})
    return out


def write(path: Path, records: list[dict]) -> Path:
    return write_jsonl(records, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("prefs")
    return {name: write(d / f"{name}.jsonl", pairs(n, seed))
            for name, n, seed in (("train", 45, 0), ("val", 16, 1), ("test", 16, 2))}  # 45: not whole batches


def overrides(files: dict[str, Path], out: Path, **extra) -> dict[str, object]:
    over: dict[str, object] = {
        "init": "preset:gpt-tiny", "tokenizer": "bpe:300", "model.n_layer": 1, "model.d_model": 32, "model.n_head": 2,
        "model.block_size": 64, "model.dropout": 0.0, "data.train": files["train"], "data.val": files["val"],
        "data.test": files["test"], "train.out_dir": out, "train.batch_size": 8, "train.max_steps": 20,
        "train.warmup_steps": 2, "train.lr": 3e-3, "train.eval_every": 10, "train.log_every": 1, "train.device": "cpu",
        "train.threads": 1, "train.dtype": "float32", "train.optimizer": "adamw", "train.seed": 0}
    over.update(extra)
    return over


def recipe(files, out: Path, **extra):
    return load_finetune_config(None, "dpo", [f"{k}={v}" for k, v in overrides(files, out, **extra).items()])


def quiet(s: str) -> None:
    pass


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def built(files, tmp_path, **extra):
    """A task whose model, tokenizer and training features are built, not yet prepared."""
    task = DPOTask(recipe(files, tmp_path / "run", **extra))
    task.log = quiet
    splits = task.splits()
    model, tok = task.build(splits["train"])
    return task, splits, model, tok, task.features(splits["train"], tok)


def hand_logp(model, ids: tuple[int, ...], mask: tuple[bool, ...]) -> float:
    """Sum of log p(token t | tokens < t) over the reply's tokens, one unpadded sequence at a time, in float64."""
    with torch.no_grad():
        logp = model(torch.tensor([ids]))[0].double().log_softmax(-1)  # (T, V)
    return sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])


def test_dpo_loss_formula():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.5, -3.0])
    terms = dpo_loss(pc, pr, rc, rr, beta=0.5)
    z = [0.5 * ((-3.0 + 3.5) - (-4.0 + 3.5)), 0.5 * ((-5.0 + 4.0) - (-2.0 + 3.0))]
    want = sum(-math.log(1 / (1 + math.exp(-x))) for x in z) / 2
    assert terms.loss.item() == pytest.approx(want, rel=1e-6)
    assert terms.chosen_rewards.tolist() == pytest.approx([0.25, -0.5])
    assert terms.rejected_rewards.tolist() == pytest.approx([-0.25, 0.5])


def test_loss_equals_a_hand_computation(files, tmp_path):
    task, splits, model, tok, feats = built(files, tmp_path)
    f = feats[0]
    reply = [i for i, m in zip(f.chosen_ids, f.chosen_mask, strict=True) if m]
    assert tok.decode(reply) == "good " + splits["train"][0].chosen[5:] + "<|im_end|>\n"  # the reply and its end
    task.prepare(model, feats, tmp_path, resumed=False, splits=splits)
    batch = task.collate(feats[:4])
    ref = [(hand_logp(model, g.chosen_ids, g.chosen_mask), hand_logp(model, g.rejected_ids, g.rejected_mask))
           for g in feats[:4]]
    assert batch["ref_chosen"].tolist() == pytest.approx([r[0] for r in ref], abs=1e-4)
    assert batch["ref_rejected"].tolist() == pytest.approx([r[1] for r in ref], abs=1e-4)
    assert task.loss(model, batch).item() == pytest.approx(LOG2, abs=1e-6)  # step 0: the policy is the reference

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    beta, want = task.opt.beta, 0.0
    for g, (rc, rr) in zip(feats[:4], ref, strict=True):
        z = beta * ((hand_logp(model, g.chosen_ids, g.chosen_mask) - rc)
                    - (hand_logp(model, g.rejected_ids, g.rejected_mask) - rr))
        want += math.log1p(math.exp(-z)) / 4
    got = task.loss(model, batch).item()
    assert abs(want - LOG2) > 1e-3  # the perturbation matters
    assert got == pytest.approx(want, rel=1e-4)
    stats = task.train_metrics()
    assert set(stats) == {"reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin"}
    assert stats["reward_margin"].item() == pytest.approx((stats["reward_chosen"] - stats["reward_rejected"]).item())
    assert task.train_metrics() == {}  # taken once


def test_training_raises_reward_accuracy(files, tmp_path):
    out = tmp_path / "run"
    res = run(recipe(files, out), progress=False, log=quiet)
    start, val = res["val_start"], res["val"]
    assert start["loss"] == pytest.approx(LOG2, abs=1e-6) and start["reward_accuracy"] == 0.0
    assert val["reward_accuracy"] >= 0.9 and val["loss"] < 0.6 and val["reward_margin"] > 0
    assert res["test"]["reward_accuracy"] >= 0.9 and res["test"]["pairs"] == 16
    steps = [r for r in records(out) if "loss" in r]
    assert steps[0]["step"] == 1 and steps[0]["loss"] == pytest.approx(LOG2, abs=1e-5)
    assert abs(steps[0]["reward_margin"]) < 1e-5  # rounding only: batches of other shapes than the reference's
    assert steps[-1]["reward_accuracy"] == 1.0 and steps[-1]["reward_margin"] > 0.1
    # a saved model evaluates the run's pairs against the run's reference
    task, model, tok = load_finetuned(out)
    task.load_reference(out)
    got = task.evaluate(model, read_preferences(files["test"]), tok)
    assert got["loss"] == pytest.approx(res["test"]["loss"], rel=1e-5)
    fresh, model, tok = load_finetuned(out)
    with pytest.raises(AttnlabError, match=r"test\.jsonl line 1: no reference log-probabilities.*load_reference"):
        fresh.evaluate(model, read_preferences(files["test"]), tok)


def test_reference_is_computed_once_and_read_back_on_resume(files, tmp_path, monkeypatch):
    computed = []
    real = DPOTask.reference_logps
    monkeypatch.setattr(DPOTask, "reference_logps", lambda self, model, feats: computed.extend(feats)
                        or real(self, model, feats))
    out = tmp_path / "run"
    run(recipe(files, out, **{"train.max_steps": 4, "train.ckpt_every": 2}), progress=False, log=quiet)
    assert len(computed) == 77 and len({f.key for f in computed}) == 77  # every pair once, before the first step
    path = out / REFERENCE_FILE
    saved = path.read_bytes()
    from safetensors.torch import load

    assert load(saved)["logps"].shape == (45 + 16 + 16, 2)

    def refuse(self, *a):
        raise AssertionError("the reference must not be recomputed on resume")

    monkeypatch.setattr(DPOTask, "reference_logps", refuse)
    lines: list[str] = []
    res = run(recipe(files, out, **{"train.max_steps": 6, "train.ckpt_every": 2}), resume=True, progress=False,
              log=lines.append)
    assert res["step"] == 6 and path.read_bytes() == saved
    assert any("reference log-probabilities of 77 pairs read from" in line for line in lines), lines
    path.unlink()
    with pytest.raises(AttnlabError, match="reference_logps.safetensors' is missing"):
        run(recipe(files, out, **{"train.max_steps": 8}), resume=True, progress=False, log=quiet)


def test_lora_reference_is_the_base_model_without_a_copy(files, tmp_path, monkeypatch):
    task, splits, model, tok, feats = built(files, tmp_path, **{"lora.rank": 4, "lora.targets": "[q, v, mlp]"})
    base = task.reference_logps(model, feats)
    inject_lora(model, task.cfg.lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)  # trained-looking adapters: the adapted model differs from the base
    adapted = task._pair_logps(model, feats)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with adapters_disabled(model):
        assert torch.equal(task._pair_logps(model, feats), base)
    assert torch.equal(task._pair_logps(model, feats), adapted)  # switched back on

    modules, params = len(list(model.modules())), count_parameters(model)
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("the reference must not copy the model"))
    task.prepare(model, feats, tmp_path, resumed=False, splits=None)
    assert torch.equal(task._ref_logps, base)
    assert (len(list(model.modules())), count_parameters(model)) == (modules, params)
    assert torch.equal(task._pair_logps(model, feats), adapted)

    with pytest.raises(RuntimeError), adapters_disabled(model):
        raise RuntimeError("boom")
    assert torch.equal(task._pair_logps(model, feats), adapted)  # restored after an error too
    merge_lora(model)
    with pytest.raises(ConfigError, match="merged LoRA layer .* unmerge_lora"), adapters_disabled(model):
        pass


def test_bad_input_is_refused_with_its_line(files, tmp_path):
    bad = pairs(3, 5)
    bad[1]["rejected"] = bad[1]["chosen"]
    path = write(tmp_path / "same.jsonl", bad)
    with pytest.raises(AttnlabError, match=r"same\.jsonl line 2: 'chosen' equals 'rejected'"):
        run(recipe(files, tmp_path / "a", **{"data.train": path}), progress=False, log=quiet)

    with pytest.raises(AttnlabError, match=r"train\.jsonl are longer than options.max_length=8 tokens"):
        run(recipe(files, tmp_path / "b", **{"options.max_length": 8}), progress=False, log=quiet)
    with pytest.raises(ConfigError, match="options.beta must be positive"):
        recipe(files, tmp_path / "c", **{"options.beta": 0})

    task, splits, model, tok, _ = built(files, tmp_path)
    other = Tokenizer.train_bpe([" ".join(WORDS[::-1]) * 20, "zebra quartz"], 280)
    recs = pairs(4, 6)
    recs[0]["chosen_input_ids"] = tok.encode(recs[0]["chosen"])  # this tokenizer's: accepted
    recs[1]["tokenizer"] = tokenizer_fingerprint(tok)
    recs[2]["chosen_input_ids"] = other.encode(recs[2]["chosen"])
    path = write(tmp_path / "ids.jsonl", recs)
    with pytest.raises(AttnlabError, match=r"ids\.jsonl line 3: input ids were made by another tokenizer "
                                           r"\(chosen_input_ids .*\); give text, or re-tokenize"):
        task.features(read_preferences(path), tok)
    assert len(task.features(read_preferences(path)[:2], tok)) == 2
    recs[2] = {**pairs(1, 7)[0], "tokenizer": tokenizer_fingerprint(other)}
    with pytest.raises(AttnlabError, match=r"ids\.jsonl line 3: input ids were made by another tokenizer"):
        task.features(read_preferences(write(path, recs)), tok)


def test_too_long_pairs_are_skipped_and_counted(files, tmp_path):
    recs = pairs(10, 8)
    recs[3]["chosen"] = " ".join(WORDS * 6)
    path = write(tmp_path / "some-long.jsonl", recs)
    task, _, _, tok, _ = built(files, tmp_path)
    lines: list[str] = []
    task.log = lines.append
    assert len(task.features(read_preferences(path), tok)) == 9
    assert lines == [f"dpo: skipped 1 of 10 preference pairs longer than 64 tokens (options.max_length; "
                     f"first: {path} line 4)"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses(files, tmp_path):
    opts = {"model.d_model": 128, "model.d_ff": 256, "train.max_steps": 60, "train.ckpt_every": 5,
            "train.eval_every": 20}

    def cli(out: Path, *more: str) -> list[str]:
        recipe_file = tmp_path / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump({"task": "dpo"}))
        over = overrides(files, out, **opts)
        return [sys.executable, "-m", "attnlab", "finetune", "dpo", str(recipe_file),
                *[f"{k}={v}" for k, v in over.items()], "--no-progress", *more]

    def losses(out: Path) -> dict[int, tuple[float, float]]:
        return {r["step"]: (r["loss"], r["reward_margin"]) for r in records(out) if "loss" in r}

    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    log = kill_and_resume(cli, ref_dir, cut_dir, losses)
    assert "pairs read from" in log  # the resumed run read the reference back, it did not recompute it
    assert (cut_dir / REFERENCE_FILE).read_bytes() == (ref_dir / REFERENCE_FILE).read_bytes()


def test_shipped_recipe_loads():
    cfg = load_finetune_config("dpo-chat", "dpo")
    assert cfg.init == "runs/sft-chat" and cfg.options.beta == 0.1 and cfg.options.max_length == 0
    assert cfg.data.train == "data/preferences/train.jsonl" and cfg.data.test == "data/preferences/test.jsonl"


def test_lora_run_from_a_pretrained_decoder(files, tmp_path, trained_run):
    """From an `attnlab train` run: ChatML's markers are new tokens, so under LoRA the embeddings train too."""
    over = overrides(files, tmp_path / "lora", **{"init": trained_run, "lora.rank": 4, "lora.targets": "[q, v, mlp]",
                                                  "train.lr": 1e-2})
    over = {k: v for k, v in over.items() if k != "tokenizer" and not k.startswith("model.")}
    lines: list[str] = []
    res = run(load_finetune_config(None, "dpo", [f"{k}={v}" for k, v in over.items()]), progress=False,
              log=lines.append)
    assert "LoRA: the token embeddings train too (2 new chat token(s) start equal and must learn to differ; " \
           "an sft run as init has them already)" in lines
    assert res["val_start"]["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert res["val"]["loss"] < 0.6 and res["val"]["reward_accuracy"] >= 0.9
    assert res["memory"]["params_trainable"] < res["memory"]["params_total"]
