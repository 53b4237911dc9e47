"""The sft task: loss on assistant tokens only, packed conversations kept apart, too-long ones skipped and
counted, an end-to-end run whose model carries its chat template, exact resume, LoRA, one-line data errors."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from attnlab.data.chat import IM_END, IM_START, encode_conversation
from attnlab.data.chat_data import read_conversations
from attnlab.data.mlm import IGNORE_INDEX
from attnlab.data.tasks import write_jsonl
from attnlab.errors import AttnlabError
from attnlab.finetune import load_finetune_config, load_finetuned, run
from attnlab.finetune.tasks.sft import SFTTask, Window, pack_windows
from attnlab.io.weights import read_weights_file

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow", "blood": "red"}
TINY = {"init": "preset:gpt-tiny", "tokenizer": "bpe:300", "model.n_layer": 1, "model.d_model": 32,
        "model.n_head": 2, "model.d_ff": 64, "model.block_size": 64, "model.dropout": 0.0}


def conversations(n: int, seed: int) -> list[dict]:
    """``n`` records: an optional system prompt, a question about a colour, a one-sentence answer."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing = rng.choice(list(COLOURS))
        msgs = [{"role": "system", "content": "Answer in one sentence."}] if rng.random() < 0.5 else []
        msgs += [{"role": "user", "content": f"What colour is the {thing}?"},
                 {"role": "assistant", "content": f"The {thing} is {COLOURS[thing]}."}]
        out.append({"messages": msgs})
    return out


def write(path: Path, records: list) -> Path:
    return write_jsonl(records, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chat")
    return {split: write(folder / f"{split}.jsonl", conversations(n, seed))
            for split, n, seed in (("train", 120, 0), ("val", 24, 1), ("test", 24, 2))}


def recipe(files: dict[str, Path], out: Path, base: dict | None = None, **extra):
    """The sft-chat recipe on ``files``, a tiny preset model (or ``base``: e.g. ``{"init": RUN}``), a few steps."""
    over = {**(TINY if base is None else base),
            "data.train": files["train"], "data.val": files["val"], "data.test": files["test"],
            "train.out_dir": out, "train.batch_size": 8, "train.max_steps": 20, "train.warmup_steps": 2,
            "train.lr": 3e-3, "train.eval_every": 10, "train.log_every": 1, "train.device": "cpu",
            "train.threads": 1, "train.optimizer": "adamw", "train.dtype": "float32", "train.seed": 0}
    over.update(extra)
    return load_finetune_config("sft-chat", "sft", [f"{k}={v}" for k, v in over.items()])


def built(files, tmp_path, **extra):
    """A task with its model and tokenizer built (no training), and its splits."""
    task = SFTTask(recipe(files, tmp_path / "unused", **extra))
    task.log = lambda s: None
    splits = task.splits()
    model, tok = task.build(splits["train"])
    return task, model, tok, splits


def quiet(s: str) -> None:
    pass


def test_shipped_recipe_loads():
    cfg = load_finetune_config("sft-chat")
    assert cfg.task == "sft" and cfg.init == "runs/gpt-tiny" and cfg.lora is None
    assert (cfg.data.train, cfg.data.test) == ("data/instruct/train.jsonl", "data/instruct/test.jsonl")
    assert cfg.options.seq_len == 0 and cfg.options.pack is True


# -- the loss mask -------------------------------------------------------------------------


def test_loss_and_gradients_come_from_assistant_tokens_only(files, tmp_path):
    task, model, tok, splits = built(files, tmp_path)
    convs = splits["train"][:12]
    feats = task.features(convs, tok)
    batch = task.collate(feats)
    # every counted target is an assistant token: as many as the assistant masks hold
    wanted = sum(sum(encode_conversation(tok, task.template, c.messages)[1]) for c in convs)
    assert int((batch["targets"] != IGNORE_INDEX).sum()) == wanted > 0

    def loss_and_grads(b):
        model.zero_grad()
        loss = task.loss(model, b)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    # change every non-assistant token (system, user, markers) of the rows: only the targets are taken
    vocab = model.config.vocab_size
    changed = [Window([t if keep else (t + 7) % vocab for t, keep in zip(f.ids, f.trained, strict=True)],
                      f.trained, f.docs) for f in feats]
    assert any(a.ids != b.ids for a, b in zip(feats, changed, strict=True))
    other = {**batch, "targets": task.collate(changed)["targets"]}
    loss, grads = loss_and_grads(batch)
    loss2, grads2 = loss_and_grads(other)
    assert torch.equal(loss, loss2)
    assert all(torch.equal(grads[n], grads2[n]) for n in grads)

    # an assistant token's change does show (the check above can fail)
    j = feats[0].trained.index(True)
    feats[0].ids[j] = (feats[0].ids[j] + 7) % vocab
    loss3, _ = loss_and_grads({**batch, "targets": task.collate(feats)["targets"]})
    assert not torch.equal(loss, loss3)

    # the loss's gradient reaches exactly the logits whose target is an assistant token
    logits = model(batch["input_ids"], document_ids=batch["document_ids"]).detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(),
                                      ignore_index=IGNORE_INDEX).backward()
    touched = logits.grad.abs().sum(-1) > 0  # (B, T)
    assert torch.equal(touched, batch["targets"] != IGNORE_INDEX)


def test_assistant_targets_are_reply_and_end_of_turn(files, tmp_path):
    task, _, tok, splits = built(files, tmp_path, **{"options.pack": "false"})
    conv = splits["val"][0]
    batch = task.collate(task.features([conv], tok))
    ids = batch["targets"][0][batch["targets"][0] != IGNORE_INDEX]
    assert "document_ids" not in batch  # one conversation per row: no document mask needed
    assert tok.decode(ids.tolist()) == conv.messages[-1]["content"] + IM_END + "\n"


# -- packing -------------------------------------------------------------------------------


def test_pack_windows_is_first_fit_in_order():
    assert pack_windows([5, 5, 3, 2], 8) == [[0, 2], [1, 3]]
    assert pack_windows([5, 5, 3, 2], 8, open_windows=1) == [[0], [1, 2], [3]]
    rng = random.Random(0)
    lengths = [rng.randint(1, 50) for _ in range(300)]
    windows = pack_windows(lengths, 64)
    assert sorted(i for w in windows for i in w) == list(range(300))
    assert all(sum(lengths[i] for i in w) <= 64 and w == sorted(w) for w in windows)
    assert windows == pack_windows(lengths, 64)
    assert len(windows) < 0.75 * len(lengths)  # several conversations per window


def test_packed_conversations_do_not_attend_to_each_other(files, tmp_path):
    task, model, tok, splits = built(files, tmp_path, **{"model.block_size": 128})
    model.eval()
    a, b = (task.features([c], tok)[0] for c in splits["val"][:2])
    rng = random.Random(1)
    a2 = Window([rng.randrange(model.config.vocab_size) for _ in a.ids], a.trained, a.docs)  # another A, same length

    def logits(first: Window, docs: bool = True) -> torch.Tensor:
        win = Window(first.ids + b.ids, first.trained + b.trained, [0] * len(first.ids) + [1] * len(b.ids))
        batch = task.collate([win])
        with torch.no_grad():
            return model(batch["input_ids"], document_ids=batch["document_ids"] if docs else None)[0]  # (T, V)

    n = len(a.ids)
    with_a, with_a2 = logits(a), logits(a2)
    assert not torch.allclose(with_a[:n], with_a2[:n])  # A's own logits do change
    torch.testing.assert_close(with_a[n:], with_a2[n:], rtol=0, atol=1e-6)  # B's do not
    assert not torch.allclose(logits(a, docs=False)[n:], logits(a2, docs=False)[n:])  # thanks to the mask

    feats = task.features(splits["train"], tok)  # packed: several conversations per window, none cut
    assert len(feats) < len(splits["train"]) / 2
    assert sum(max(f.docs) + 1 for f in feats) == len(splits["train"])
    assert all(len(f.ids) <= 129 for f in feats)


# -- too long, bad data --------------------------------------------------------------------


def test_too_long_conversations_are_skipped_and_counted(files, tmp_path):
    long = {"messages": [{"role": "user", "content": "Tell me everything."},
                         {"role": "assistant", "content": " ".join(["blue green white"] * 40)}]}
    records = conversations(10, 3)
    records[2:2] = [long]
    records.append(long)
    train = write(tmp_path / "train.jsonl", records)
    lines: list[str] = []
    res = run(recipe({**files, "train": train}, tmp_path / "run", **{"train.max_steps": 2}), progress=False,
              log=lines.append)
    assert f"skipped 2 of 12 conversations longer than 65 tokens (first: {train} line 3)" in lines
    assert res["step"] == 2

    with pytest.raises(AttnlabError) as e:
        run(recipe({**files, "train": train}, tmp_path / "short", **{"options.seq_len": 4}), progress=False, log=quiet)
    assert "longer than 5 tokens" in str(e.value) and "raise options.seq_len" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("record, needle", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "line 2: the conversation has no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "line 2: message 1 has unknown role 'robot'"),
    ({"prompt": "hi"}, "line 2: no conversation found"),
])
def test_bad_conversations_are_one_line_cli_errors(files, tmp_path, capsys, one_line_error, record, needle):
    from attnlab.cli import main

    bad = write(tmp_path / "bad.jsonl", [conversations(1, 0)[0], record])
    args = [f"{k}={v}" for k, v in {**TINY, "data.train": bad, "data.val": files["val"],
                                    "train.out_dir": tmp_path / "run", "train.device": "cpu"}.items()]
    code = main(["finetune", "sft", "sft-chat", *args, "--no-progress"])
    line = one_line_error(capsys, code, needle)
    assert str(bad) in line


def test_options_are_checked(files, tmp_path):
    with pytest.raises(Exception, match=r"options.seq_len must be >= 0"):
        recipe(files, tmp_path, **{"options.seq_len": -1})
    with pytest.raises(Exception, match=r"exceeds the model's context of 64"):
        built(files, tmp_path, **{"options.seq_len": 100})


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_run(trained_run, files, tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """Full SFT of the tiny Shakespeare GPT (no chat tokens: ChatML's are added)."""
    out = tmp_path_factory.mktemp("sft") / "run"
    lines: list[str] = []
    res = run(recipe(files, out, {"init": trained_run}, **{"train.max_steps": 30}), progress=False, log=lines.append)
    return out, res, lines


def test_sft_run_end_to_end(sft_run, files):
    out, res, lines = sft_run
    assert "chat template: ChatML (default); 2 new token embedding(s) for its markers" in lines
    assert res["val"]["loss"] < 0.7 * res["val_start"]["loss"]
    assert res["val"]["accuracy"] > res["val_start"]["accuracy"]
    config = json.loads((out / "model" / "tokenizer_config.json").read_text())
    assert IM_START in config["chat_template"] and config["eos_token"] == IM_END

    task, model, tok = load_finetuned(out)
    assert isinstance(task, SFTTask) and task.state["new_tokens"] == 2
    assert tok.token_id(IM_START) is not None and tok.token_id(IM_END) is not None
    again = task.evaluate(model, read_conversations(files["test"]), tok)
    assert again["loss"] == pytest.approx(res["test"]["loss"], rel=1e-5)
    assert again["tokens"] == res["test"]["tokens"]


def test_second_sft_starts_from_the_first(sft_run, files, tmp_path):
    out, res, _ = sft_run
    lines: list[str] = []
    res2 = run(recipe(files, tmp_path / "again", {"init": out}, **{"train.max_steps": 2}), progress=False,
               log=lines.append)
    assert "chat template: ChatML (default)" in lines  # read from tokenizer_config.json; no new tokens this time
    assert res2["val_start"]["loss"] == pytest.approx(res["val"]["loss"], rel=1e-4)  # starts where the first ended


def test_lora_sft_changes_only_the_adapters(sft_run, files, tmp_path):
    init, _, _ = sft_run
    out = tmp_path / "lora"
    res = run(recipe(files, out, {"init": init}, **{"lora.rank": 4, "lora.targets": "[q, v, mlp]",
                                    "train.max_steps": 10, "train.lr": 1e-2}), progress=False, log=quiet)
    assert res["val"]["loss"] < res["val_start"]["loss"]
    before = read_weights_file(init / "model" / "model.safetensors")
    after = read_weights_file(out / "model" / "model.safetensors")
    adapters = {k for k in after if ".lora_" in k}
    assert adapters and set(after) - adapters == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(not torch.equal(after[k], torch.zeros_like(after[k])) for k in adapters if k.endswith("lora_B"))


def test_lora_sft_trains_new_chat_token_embeddings(trained_run, files, tmp_path):
    lines: list[str] = []
    out = tmp_path / "lora"
    run(recipe(files, out, {"init": trained_run}, **{"lora.rank": 4, "train.max_steps": 3}), progress=False,
        log=lines.append)
    assert any(line.startswith("LoRA: the token embeddings train too (2 new chat token(s)") for line in lines)
    task, model, tok = load_finetuned(out)
    emb = model.tok_emb.weight  # (V, D)
    assert not torch.equal(emb[tok.token_id(IM_START)], emb[tok.token_id(IM_END)])  # they start equal
    blocks = {k: v for k, v in read_weights_file(out / "model" / "model.safetensors").items()
              if k.startswith("blocks.") and ".lora_" not in k}
    from attnlab.train.checkpoint import load_model

    base, _ = load_model(trained_run)
    assert blocks and all(torch.equal(v, base.state_dict()[k]) for k, v in blocks.items())


# -- resume --------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses(files, tmp_path):
    from tests.finetune.test_engine_finetune import kill_and_resume, losses

    opts = {**TINY, "model.dropout": 0.1, "model.d_model": 128, "model.d_ff": 256, "data.train": files["train"],
            "data.val": files["val"], "data.test": files["test"], "train.max_steps": 60, "train.ckpt_every": 5,
            "train.eval_every": 20, "train.log_every": 1, "train.batch_size": 8, "train.device": "cpu",
            "train.threads": 1}

    def cli(out: Path, *more: str) -> list[str]:
        over = [f"{k}={v}" for k, v in {**opts, "train.out_dir": out}.items()]
        return [sys.executable, "-m", "attnlab", "finetune", "sft", "sft-chat", *over, "--no-progress", *more]

    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    log = kill_and_resume(cli, ref_dir, cut_dir, losses)
    assert f"resumed from {cut_dir / 'checkpoints'}" in log


def test_template_that_fails_to_render_names_file_and_line(trained_run, files, tmp_path, capsys, one_line_error):
    """An init whose own template refuses a conversation (Llama-2 style: roles must alternate)."""
    import shutil

    from attnlab.cli import main
    from attnlab.data.chat import ChatTemplate
    from attnlab.train.checkpoint import load_checkpoint

    init = tmp_path / "init"
    shutil.copytree(trained_run, init)
    strict = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
              "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    ChatTemplate(strict, eos_token="<|endoftext|>").save(load_checkpoint(init).tokenizer_file.parent)
    two_users = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                              {"role": "assistant", "content": "c"}]}
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = write(tmp_path / "bad.jsonl", [good, two_users])
    code = main(["finetune", "sft", "sft-chat", f"init={init}", f"data.train={bad}", f"data.val={bad}",
                 f"data.test={bad}",
                 f"train.out_dir={tmp_path / 'run'}", "train.device=cpu", "train.max_steps=1", "--no-progress"])
    line = one_line_error(capsys, code, "line 2: chat template failed to render: Conversation roles must alternate")
    assert str(bad) in line
