"""Tokenizer training streams: generators, sample_mb, and a corpus bigger than a memory budget."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import textwrap

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

import attnlab.cli
from attnlab.data.bpe_stream import HARD_CUT_CHARS, PIECE_CHARS, safe_pieces
from attnlab.data.corpus import read_documents
from attnlab.data.tokenizer import EOS_TOKEN, Tokenizer
from attnlab.errors import AttnlabError


@pytest.fixture(scope="module")
def plays() -> list[str]:
    return [text for _, text in read_documents("builtin:shakespeare")[:4]]  # ~100K characters each


class Counting:
    """An iterator over ``texts`` that counts how many items were taken from it."""

    def __init__(self, texts):
        self.taken = 0
        self._it = iter(texts)

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._it)
        self.taken += 1
        return item


def reference_json(texts, vocab_size: int) -> str:
    """Train with tokenizers directly on the whole texts (no pieces, no batches): what train_bpe must equal."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok.to_str()


# --------------------------------------------------------------------------- same tokenizer, however fed


def test_generator_list_and_whole_documents_give_the_same_tokenizer(plays):
    assert max(len(p) for p in plays) > 4 * PIECE_CHARS  # the documents are really cut into pieces
    from_list = Tokenizer.train_bpe(plays, 800)
    from_gen = Tokenizer.train_bpe((p for p in plays), 800)
    assert from_gen.to_json() == from_list.to_json() == reference_json(plays, 800)
    assert from_list.vocab_size == 800
    assert from_gen.trained_on == from_list.trained_on
    assert from_gen.trained_on.n_documents == 4 and not from_gen.trained_on.stopped_early
    assert from_gen.trained_on.n_bytes == sum(len(p.encode()) for p in plays)


def test_training_is_deterministic_across_processes(plays, tmp_path):
    """A fresh interpreter (new hash seeds, new thread pool) trains the same tokenizer from a generator."""
    code = textwrap.dedent("""
        import sys
        from attnlab.data.corpus import read_documents
        from attnlab.data.tokenizer import Tokenizer
        docs = read_documents("builtin:shakespeare")[:4]
        sys.stdout.write(Tokenizer.train_bpe((t for _, t in docs), 800).to_json())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == Tokenizer.train_bpe(plays, 800).to_json()


# --------------------------------------------------------------------------- sample_mb


def test_sample_mb_stops_reading_and_trains_on_exactly_that_prefix(plays, caplog):
    docs = [p[i : i + 3000] for p in plays for i in range(0, len(p), 3000)]  # ~130 documents of 3 KB
    stream = Counting(docs)
    with caplog.at_level(logging.INFO, logger="attnlab.data"):
        tok = Tokenizer.train_bpe(stream, 600, sample_mb=0.1)
    used = tok.trained_on
    assert used.n_bytes == 100_000 and used.stopped_early and used.limit_bytes == 100_000
    assert stream.taken == used.n_documents < len(docs)  # nothing read past the document that reached the limit
    # the same tokenizer as training on the first 100,000 bytes, given as a list
    prefix = "".join(docs)[:100_000]
    k = used.n_documents
    assert "".join(docs[: k - 1]) == prefix[: 3000 * (k - 1)]
    same = Tokenizer.train_bpe([*docs[: k - 1], prefix[3000 * (k - 1) :]], 600)
    assert tok.to_json() == same.to_json() == reference_json([*docs[: k - 1], prefix[3000 * (k - 1) :]], 600)
    assert tok.to_json() != Tokenizer.train_bpe(docs, 600).to_json()  # the limit changed what was learned
    assert f"on {k} document(s), 0.10 MB of text (stopped at sample_mb=0.1;" in caplog.text


def test_sample_bigger_than_the_text_reads_all_of_it(plays):
    tok = Tokenizer.train_bpe(iter(plays), 800, sample_mb=100)
    assert not tok.trained_on.stopped_early and tok.trained_on.n_documents == 4
    assert tok.to_json() == Tokenizer.train_bpe(plays, 800).to_json()
    assert "(all of it)" in tok.trained_on.describe()


def test_sample_limit_never_splits_a_character():
    tok = Tokenizer.train_bpe(["é" * 1000, "more"], 300, sample_mb=11e-6)  # 11 bytes: 5½ characters
    assert tok.trained_on.n_bytes == 10 and tok.trained_on.stopped_early and tok.trained_on.n_documents == 1


def test_sample_reached_exactly_at_a_document_end():
    stream = Counting(["abcd efgh", "ijkl", "", "mnop"])
    tok = Tokenizer.train_bpe(stream, 300, sample_mb=13e-6)
    assert tok.trained_on.n_bytes == 13 and tok.trained_on.n_documents == 2 and tok.trained_on.stopped_early
    assert stream.taken == 4  # it looked one (non-empty) document further to know there was more
    exact = Tokenizer.train_bpe(["abcd efgh", "ijkl"], 300, sample_mb=13e-6)
    assert exact.trained_on.n_bytes == 13 and not exact.trained_on.stopped_early


# --------------------------------------------------------------------------- pieces, bad input, progress


def test_a_long_run_without_spaces_is_cut_hard():
    rng = random.Random(0)
    text = "".join(chr(rng.randint(0x4E00, 0x4E80)) for _ in range(3 * HARD_CUT_CHARS))  # unspaced CJK
    pieces = list(safe_pieces(text, PIECE_CHARS, HARD_CUT_CHARS))
    assert "".join(pieces) == text and max(map(len, pieces)) <= HARD_CUT_CHARS
    assert list(safe_pieces(text, PIECE_CHARS)) == [text]  # for encoding, never cut where ids would change


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_bad_sample_size_is_refused(bad):
    with pytest.raises(AttnlabError, match="sample size .* use 0"):
        Tokenizer.train_bpe(["abc"], 300, sample_mb=bad)


def test_a_non_string_item_is_refused():
    with pytest.raises(AttnlabError, match="item 1 is a bytes, not a string"):
        Tokenizer.train_bpe(iter(["abc", b"def"]), 300)


def test_an_error_in_the_stream_reaches_the_caller():
    def broken():
        yield "some text"
        raise AttnlabError("corpus.jsonl:2: no 'text' field")

    with pytest.raises(AttnlabError, match="corpus.jsonl:2"):
        Tokenizer.train_bpe(broken(), 300)


def test_progress_bar_counts_bytes(capsys, plays):
    Tokenizer.train_bpe(plays[:1], 300, sample_mb=0.05, progress=True)
    err = capsys.readouterr().err
    assert "reading text for the BPE tokenizer" in err and "50.0k/50.0k" in err


def test_cli_sample_mb(tmp_path, monkeypatch, capsys, plays):
    monkeypatch.setattr(attnlab.cli, "SUBCOMMANDS", ["tokenizer"])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in plays))
    assert plays[0].isascii() and plays[1].isascii()
    limit = len(plays[0]) + 10_000  # all of the first play and 10,000 bytes of the second
    out = tmp_path / "tok.json"
    args = ["tokenizer", "train", str(corpus), "--vocab-size", "500", "--out", str(out),
            "--sample-mb", str(limit / 1e6)]
    assert attnlab.cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert f"trained on 2 document(s), {limit / 1e6:.2f} MB of text (stopped at sample_mb=" in stdout
    assert Tokenizer.load(out).to_json() == Tokenizer.train_bpe([plays[0], plays[1][:10_000]], 500).to_json()
    assert attnlab.cli.main([*args[:-1], "-1"]) == 2
    assert "sample size -1.0 MB" in capsys.readouterr().err


# --------------------------------------------------------------------------- memory budget

CHILD = """
import json, sys
from attnlab.data.tokenizer import Tokenizer

def status(key):  # bytes
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

path, sample_mb, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
Tokenizer.train_bpe(["warm up the trainer and its threads"] * 10, 300)  # fixed costs out of the measure
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS
except OSError:
    pass  # then the peak below may include the warm-up: stricter, not looser
base = status("VmRSS:")
with open(path, encoding="utf-8") as f:
    read = [0]  # characters read from the file (it is ASCII: bytes)
    def documents():  # ~64 KB documents, read lazily
        while lines := f.readlines(1 << 16):
            read[0] += sum(map(len, lines))
            yield "".join(lines)
    tok = Tokenizer.train_bpe(documents(), 2000, sample_mb=sample_mb)
tok.save(out)
used = tok.trained_on
print(json.dumps({"growth": status("VmHWM:") - base, "n_bytes": used.n_bytes, "n_documents": used.n_documents,
                  "stopped_early": used.stopped_early, "read": read[0]}))
"""


def write_corpus(path, mb: int) -> None:
    """``mb`` MB of Zipf-distributed pseudo-words in lines, written 1 MB block at a time."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(20_000)]
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))
    blocks = []
    for _ in range(8):
        lines, size = [], 0
        while size < 1_000_000:
            line = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(5, 20))) + ".\n"
            lines.append(line)
            size += len(line)
        blocks.append("".join(lines))
    with open(path, "w", encoding="utf-8") as f:
        for i in range(mb):
            f.write(blocks[i % len(blocks)])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc to measure memory")
def test_training_on_a_corpus_bigger_than_the_memory_budget_stays_under_it(tmp_path):
    """150 MB of text, a 120 MB budget of extra RSS: streamed, with sample_mb=25, the trainer stays far under it.

    Holding the corpus (or just the file's lines) in memory would take more than the budget;
    the sample's tokenizer equals one trained on the same 25 MB given as a list.
    """
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 150)
    assert corpus.stat().st_size >= 150_000_000
    budget, sample_mb = 120_000_000, 25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = tmp_path / "tok.json"
    run = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(sample_mb), str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["growth"] < budget, f"peak RSS grew by {got['growth'] / 1e6:.0f} MB, over the budget"
    assert got["n_bytes"] == sample_mb * 1_000_000 and got["stopped_early"]
    assert got["read"] < sample_mb * 1_000_000 + (1 << 17)  # the file was read no further than the sample

    with open(corpus, encoding="utf-8") as f:  # the same 25 MB, as a list of the same documents, in this process
        sample = io.StringIO(f.read(sample_mb * 1_000_000))
    docs = ["".join(lines) for lines in iter(lambda: sample.readlines(1 << 16), [])]
    assert len(docs) == got["n_documents"]
    assert Tokenizer.load(out).to_json() == Tokenizer.train_bpe(docs, 2000).to_json()
