"""Chapter 11: from a pretrained model to a chat model — chat template, SFT, DPO, and a conversation.

Run: .venv/bin/python docs/tutorial/code/ch11_chat_model.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from attnlab import config
from attnlab.data import Tokenizer, read_documents
from attnlab.data.chat import ChatTemplate, add_chat_tokens, encode_conversation
from attnlab.data.chat_data import read_conversations, read_preferences
from attnlab.eval.instruct import normalize_label, preference_accuracy
from attnlab.finetune import load_finetuned, run
from attnlab.finetune.recipe import finetune_config_from_dict
from attnlab.generate import SamplingConfig
from attnlab.generate.chat import ChatSession
from attnlab.train import load_model, train

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "figures"

# --- the facts and the question types: English and Chinese prompts, short answers ------------------
COUNTRIES = [  # English, Chinese, capital, capital in Chinese, continent
    ("France", "法国", "Paris", "巴黎", "Europe"), ("Germany", "德国", "Berlin", "柏林", "Europe"),
    ("Italy", "意大利", "Rome", "罗马", "Europe"), ("Spain", "西班牙", "Madrid", "马德里", "Europe"),
    ("Greece", "希腊", "Athens", "雅典", "Europe"), ("Japan", "日本", "Tokyo", "东京", "Asia"),
    ("China", "中国", "Beijing", "北京", "Asia"), ("India", "印度", "New Delhi", "新德里", "Asia"),
    ("Egypt", "埃及", "Cairo", "开罗", "Africa"), ("Kenya", "肯尼亚", "Nairobi", "内罗毕", "Africa"),
    ("Canada", "加拿大", "Ottawa", "渥太华", "America"), ("Brazil", "巴西", "Brasilia", "巴西利亚", "America"),
]
CONTINENT_ZH = {"Europe": "欧洲", "Asia": "亚洲", "Africa": "非洲", "America": "美洲"}
CAPITAL_Q = {"en": ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital of {}.",
                    "Tell me the capital of {}."],
             "zh": ["{}的首都是哪里？", "{}的首都是哪座城市？", "请说出{}的首都。", "告诉我{}的首都。"]}
CONTINENT_Q = {"en": ["Which continent is {} in?", "On which continent is {}?"],
               "zh": ["{}在哪个洲？", "{}位于哪个大洲？"]}
FOLLOW_UP = {"en": "And {}?", "zh": "那{}呢？"}  # means nothing without the turn before it
REVIEW_Q = {"en": "Is this review positive or negative? {}", "zh": "这条评论是正面还是负面？{}"}
LABELS = {"en": ("positive", "negative"), "zh": ("正面", "负面")}
REVIEW_WORDS = {"en": (["wonderful", "great", "delightful", "brilliant", "charming", "lovely"],
                       ["awful", "boring", "dreadful", "dull", "terrible", "clumsy"]),
                "zh": (["精彩", "感人", "出色", "有趣"], ["无聊", "糟糕", "乏味", "拖沓"])}
REVIEWS = {"en": ["The film was {}.", "What a {} movie.", "I found the acting {}.", "The ending was {}."],
           "zh": ["这部电影很{}。", "演员的表演很{}。", "结局很{}。", "整个故事很{}。"]}
FOLLOW_UPS = 240
TASKS = ("capital", "continent", "follow-up", "sentiment")
EXAMPLE = [{"role": "system", "content": "You answer in one word."},  # our data have no system turns; it is shown
           {"role": "user", "content": "What is the capital of Japan?"},  # to see that it is not trained on either
           {"role": "assistant", "content": "Tokyo"},
           {"role": "user", "content": "And Egypt?"},
           {"role": "assistant", "content": "Cairo"}]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)  # every answer here is a few tokens
DEMO = [("What is the capital of Japan?", "And Egypt?"), ("Which continent is Japan in?", "And Egypt?"),
        ("日本的首都是哪里？", "那埃及呢？")]


def answer(country: tuple, relation: str, lang: str) -> str:
    _, _, capital, capital_zh, continent = country
    if relation == "capital":
        return capital if lang == "en" else capital_zh
    return continent if lang == "en" else CONTINENT_ZH[continent]


def name(country: tuple, lang: str) -> str:
    return country[0] if lang == "en" else country[1]


def conversation(task: str, turns: list[tuple[str, str]], wrong: str) -> dict:
    """A record of ``attnlab data prepare instruct``'s shape, plus the wrong answer DPO will reject."""
    messages = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return {"task": task, "messages": messages, "reference": turns[-1][1], "wrong": wrong}


def build_conversations(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Training and held-out conversations. Every fact is in training, but no held-out prompt is.

    Per country and language, one of the four capital questions is held out, and one in four of
    the other prompts (a continent question's wording, a review's adjective and template, a
    follow-up's pair of countries): the test asks known facts in words training never used.
    """
    rng = random.Random(seed)
    train, test = [], []

    def put(rec: dict, slot: int) -> None:
        (test if slot % 4 == 0 else train).append(rec)

    for i, c in enumerate(COUNTRIES):
        other = COUNTRIES[(i + 1 + rng.randrange(len(COUNTRIES) - 1)) % len(COUNTRIES)]  # never c itself
        wrong_continent = next(o[4] for o in COUNTRIES[i:] + COUNTRIES if o[4] != c[4])
        for k, lang in enumerate(("en", "zh")):
            for j, q in enumerate(CAPITAL_Q[lang]):
                put(conversation("capital", [(q.format(name(c, lang)), answer(c, "capital", lang))],
                                 answer(other, "capital", lang)), i + 2 * k + j)
            for j, q in enumerate(CONTINENT_Q[lang]):
                wrong = wrong_continent if lang == "en" else CONTINENT_ZH[wrong_continent]
                put(conversation("continent", [(q.format(name(c, lang)), answer(c, "continent", lang))], wrong),
                    i + 2 * k + j)
    # Follow-ups: "And Japan?" asks for the capital or the continent, whichever the first question asked.
    pairs = [(a, b, rel, lang) for a in range(len(COUNTRIES)) for b in range(len(COUNTRIES)) if a != b
             for rel in ("capital", "continent") for lang in ("en", "zh")]
    rng.shuffle(pairs)
    for k, (a, b, rel, lang) in enumerate(pairs[:FOLLOW_UPS]):
        ca, cb = COUNTRIES[a], COUNTRIES[b]
        first = rng.choice((CAPITAL_Q if rel == "capital" else CONTINENT_Q)[lang])
        right, repeat = answer(cb, rel, lang), answer(ca, rel, lang)
        wrong = repeat if repeat != right else answer(cb, "continent" if rel == "capital" else "capital", lang)
        put(conversation("follow-up", [(first.format(name(ca, lang)), repeat),
                                       (FOLLOW_UP[lang].format(name(cb, lang)), right)], wrong), k)
    for lang in ("en", "zh"):
        for polarity, words in enumerate(REVIEW_WORDS[lang]):
            for w, word in enumerate(words):
                for t, template in enumerate(REVIEWS[lang]):
                    put(conversation("sentiment", [(REVIEW_Q[lang].format(template.format(word)),
                                                    LABELS[lang][polarity])], LABELS[lang][1 - polarity]), w + t)
    rng.shuffle(train)
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def preference_pairs(rows: list[dict]) -> list[dict]:
    """DPO's data: the same prompts, the right answer chosen over a wrong one."""
    return [{"task": r["task"], "prompt": r["messages"][:-1], "chosen": r["reference"], "rejected": r["wrong"]}
            for r in rows]


# --- the three stages ------------------------------------------------------------------------------
def pretrain(tmp: Path) -> Path:
    """A 2-layer GPT on Shakespeare and Tang poems (chapter 7's recipe, shorter): it knows letters, not answers."""
    corpus = tmp / "corpus"
    corpus.mkdir()
    (corpus / "shakespeare.txt").write_text(read_documents("builtin:shakespeare")[0][1][:150_000], encoding="utf-8")
    (corpus / "poetry.txt").write_text(read_documents("builtin:poetry")[0][1][:40_000], encoding="utf-8")
    cfg = config.load("gpt-tiny", [
        f"data.source={corpus}", "data.tokenizer=bpe:1024", f"data.cache_dir={tmp / 'cache'}",
        "model.vocab_size=0", "model.block_size=128", "model.n_layer=2", "model.n_head=4", "model.d_model=128",
        f"train.out_dir={tmp / 'pretrained'}", "train.batch_size=8", "train.seq_len=128", "train.max_steps=100",
        "train.optimizer=adamw", "train.warmup_steps=10", "train.lr=3e-3", "train.min_lr=3e-4", "train.eval_every=50",
        "train.eval_batches=4", "train.ckpt_every=0", "train.log_every=10", "train.device=cpu", "train.seed=0",
        "train.dtype=float32",  # the same numbers on every CPU (auto: bf16 where the CPU multiplies it natively)
    ])
    summary = train(cfg, progress=False, log=lambda s: None)
    print(f"pretrained {summary['step']} steps on Shakespeare and Tang poems: val loss {summary['val_loss']:.2f}")
    return tmp / "pretrained"


def finetune(task: str, init: str, files: dict[str, str], out: Path, steps: int, lr: float, optimizer: str,
             options: dict) -> dict:
    """One ``attnlab finetune TASK`` run (the same recipe as a YAML file would hold)."""
    recipe = {"task": task, "init": init, "data": files, "options": options,
              "train": {"out_dir": str(out), "batch_size": 8, "max_steps": steps, "optimizer": optimizer, "lr": lr,
                        "min_lr": lr / 10, "warmup_steps": 5, "weight_decay": 0.0, "eval_every": steps // 5,
                        "log_every": 2, "device": "cpu", "dtype": "float32", "seed": 0}}
    return run(finetune_config_from_dict(recipe), progress=False, log=lambda s: None)


def held_out_scores(model, tok: Tokenizer, template: ChatTemplate, test: list[dict], pairs: list) -> dict[str, float]:
    """Exact match of greedy replies per task (case, spaces and punctuation ignored), and preference accuracy."""
    session = ChatSession(model, tok, template, GREEDY)
    hits: dict[str, list[bool]] = {t: [] for t in TASKS}
    for r in test:
        session.reset()
        session.history = r["messages"][:-2]  # a follow-up's first turn, with its right answer
        reply = session.reply(r["messages"][-2]["content"])
        hits[r["task"]].append(normalize_label(reply) == normalize_label(r["reference"]))
    scores = {t: sum(h) / len(h) for t, h in hits.items()}
    scores["all"] = sum(sum(h) for h in hits.values()) / len(test)
    # Does the model give the right answer a higher log-probability than the wrong one?
    scores["prefers right"] = preference_accuracy(model, tok, template, pairs, progress=False)["accuracy"]
    return scores


# --- figures ---------------------------------------------------------------------------------------
def draw_tokens(ax, tok: Tokenizer, ids: list[int], trained: list[bool], fontsize: int = 12) -> None:
    """Each token as a box (spaces as ·, newlines as ↵), green when the loss trains on it."""
    fig = ax.figure
    cols = ax.get_position().width * fig.get_figwidth() * 72 / (0.6 * fontsize)  # monospace characters per line
    lines = ax.get_position().height * fig.get_figheight() * 72 / (2.2 * fontsize)
    x = y = 0
    for i, t in zip(ids, trained, strict=True):
        text = tok.decode([i]).replace(" ", "·").replace("\n", "↵")
        if x + len(text) > cols:
            x, y = 0, y + 1
        ax.text(x, -y, text, family="monospace", fontsize=fontsize, va="center",
                bbox=dict(boxstyle="square,pad=0.2", fc="#7fcf7f" if t else "#e0e0e0", ec="white", lw=1))
        x += len(text) + 1.0
        if text.endswith("↵"):
            x, y = 0, y + 1
    ax.set(xlim=(-0.5, cols - 0.5), ylim=(-lines + 0.5, 0.5))
    ax.axis("off")


def mask_figure(task, tok: Tokenizer, convs: list, path: Path) -> None:
    ids, assistant = encode_conversation(tok, task.template, EXAMPLE)
    windows = task.features(convs, tok)  # SFT's training rows: whole conversations packed, with document ids
    docs = torch.tensor(max(windows, key=lambda w: max(w.docs)).docs)  # (T,) the row with the most conversations
    t = torch.arange(len(docs))
    allowed = (t[None, :] <= t[:, None]) & (docs[None, :] == docs[:, None])  # (T, T): causal and same conversation
    fig = plt.figure(figsize=(13, 4.2))
    ax = fig.add_axes((0.01, 0.02, 0.6, 0.86))
    draw_tokens(ax, tok, ids, assistant)
    ax.set_title("the example in ChatML tokens; green: the assistant's, the only targets of the SFT loss", fontsize=10)
    ax = fig.add_axes((0.69, 0.12, 0.3, 0.74))
    ax.imshow(allowed, cmap="Greens", interpolation="nearest")
    ax.set_title(f"one packed SFT row: {int(docs.max()) + 1} conversations, {len(docs)} tokens;\n"
                 "green: query (row) may attend to key (column)", fontsize=10)
    ax.set(xlabel="key position", ylabel="query position")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def sft_figure(run_dir: Path, path: Path) -> None:
    rec = records(run_dir)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(*zip(*[(r["step"], r["loss"]) for r in rec if "loss" in r], strict=True), label="train (assistant tokens)")
    ax.plot(*zip(*[(r["step"], r["val_loss"]) for r in rec if "val_loss" in r], strict=True), "o-",
            label="held-out prompts (assistant tokens)")
    ax.set(xlabel="step", ylabel="nats / assistant token", title="SFT: loss on the replies only", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dpo_figure(run_dir: Path, path: Path) -> None:
    rec = records(run_dir)
    val = [r for r in rec if "val_reward_margin" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(*zip(*[(r["step"], r["reward_accuracy"]) for r in rec if "reward_accuracy" in r], strict=True),
                 label="train batches")
    axes[0].plot([r["step"] for r in val], [r["val_reward_accuracy"] for r in val], "o-", label="held-out pairs")
    axes[0].set(xlabel="step", ylabel="reward accuracy", ylim=(-0.05, 1.05),
                title="pairs with reward(chosen) > reward(rejected)")
    for key, label in (("chosen", "chosen reply"), ("rejected", "rejected reply"), ("margin", "margin")):
        axes[1].plot([r["step"] for r in val], [r[f"val_reward_{key}"] for r in val], "o-", label=label)
    axes[1].axhline(0, color="gray", lw=0.8)
    axes[1].set(xlabel="step", ylabel="β · log(π / π_ref), summed over the reply",
                title="held-out pairs: implicit rewards")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    torch.set_num_threads(1)  # one thread: reproducible timings, and no slowdown on a busy 2-core machine
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_rows, test_rows = build_conversations()
    print(f"{len(train_rows)} training conversations; held out: "
          + ", ".join(f"{sum(r['task'] == t for r in test_rows)} {t}" for t in TASKS))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chat = {"train": write_jsonl(tmp / "chat-train.jsonl", train_rows),
                "val": write_jsonl(tmp / "chat-test.jsonl", test_rows)}
        prefs = {"train": write_jsonl(tmp / "prefs-train.jsonl", preference_pairs(train_rows)),
                 "val": write_jsonl(tmp / "prefs-test.jsonl", preference_pairs(test_rows))}
        pretrained = pretrain(tmp)

        # 1. The chat template: ChatML, with <|im_start|> and <|im_end|> added as two new tokens.
        template = ChatTemplate.default()
        tok = add_chat_tokens(Tokenizer.load(pretrained / "tokenizer.json"), template)
        print(f"\n--- a conversation rendered with ChatML ---\n{template.render(EXAMPLE)}", end="")
        ids, assistant = encode_conversation(tok, template, EXAMPLE)
        print(f"--- {len(ids)} tokens, {sum(assistant)} of them the assistant's: the only ones SFT trains on ---")

        # 2. SFT from the pretrained run (the loss on assistant tokens only), then 3. DPO from the SFT run.
        sft = finetune("sft", str(pretrained), chat, tmp / "sft", 200, 3e-3, "muon", {"seq_len": 0, "pack": True})
        print(f"SFT: held-out assistant-token loss {sft['val_start']['loss']:.2f} -> {sft['val']['loss']:.2f}, "
              f"token accuracy {sft['val_start']['accuracy']:.0%} -> {sft['val']['accuracy']:.0%} "
              f"({sft['seconds']:.0f} s)")
        dpo = finetune("dpo", str(tmp / "sft"), prefs, tmp / "dpo", 40, 1e-4, "adamw", {"beta": 0.1})
        print(f"DPO: held-out reward accuracy {dpo['val_start']['reward_accuracy']:.0%} -> "
              f"{dpo['val']['reward_accuracy']:.0%}, reward margin {dpo['val']['reward_margin']:.3f} "
              f"(chosen {dpo['val']['reward_chosen']:+.3f}, rejected {dpo['val']['reward_rejected']:+.3f}) "
              f"({dpo['seconds']:.0f} s)")

        sft_task, sft_model, sft_tok = load_finetuned(sft["model"])
        mask_figure(sft_task, sft_tok, read_conversations(chat["train"]), out_dir / "ch11_mask.png")
        sft_figure(tmp / "sft", out_dir / "ch11_sft_loss.png")
        dpo_figure(tmp / "dpo", out_dir / "ch11_dpo.png")

        # 4. Chat: the same second message means another question after another first one.
        dpo_task, dpo_model, dpo_tok = load_finetuned(dpo["model"])
        print("\n--- chatting with the SFT + DPO model (greedy) ---")
        for first, second in DEMO:
            session = ChatSession(dpo_model, dpo_tok, dpo_task.template, GREEDY)
            print(f"user: {first}\nassistant: {session.reply(first)}\nuser: {second}\n"
                  f"assistant: {session.reply(second)}\n")
        print("--- and outside what it was taught (a 13th country, small talk) ---")
        for question in ("What is the capital of Peru?", "How are you?"):
            session = ChatSession(dpo_model, dpo_tok, dpo_task.template, GREEDY)
            print(f"user: {question}\nassistant: {session.reply(question)}")
        print()

        # 5. Every stage on the held-out prompts; the pretrained model is asked in plain User:/Assistant: lines.
        pairs = read_preferences(prefs["val"])
        pre_model, _ = load_model(pretrained)
        pre_tok = Tokenizer.load(pretrained / "tokenizer.json")
        stages = {"pretrained only": held_out_scores(pre_model, pre_tok, ChatTemplate.plain(), test_rows, pairs),
                  "SFT": held_out_scores(sft_model, sft_tok, sft_task.template, test_rows, pairs),
                  "SFT + DPO": held_out_scores(dpo_model, dpo_tok, dpo_task.template, test_rows, pairs)}
    columns = (*TASKS, "all", "prefers right")
    print("held-out          " + "".join(f"{c:>14}" for c in columns))
    for stage, scores in stages.items():
        print(f"{stage:<18}" + "".join(f"{scores[c]:>14.0%}" for c in columns))
    print(f"\nwrote ch11_mask.png, ch11_sft_loss.png, ch11_dpo.png ({time.time() - t0:.1f} s)")
    return {"sft": sft["val"], "dpo": dpo["val"], "stages": stages}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the figures")
    main(parser.parse_args().out)
