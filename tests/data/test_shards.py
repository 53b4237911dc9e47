"""Streaming preparation: token shards and their index, bounded memory, num_proc, kill-and-resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.config import DataConfig
from attnlab.data import streaming
from attnlab.data.dataset import prepare
from attnlab.data.shards import PROGRESS, ShardWriter, TokenShards
from attnlab.data.tokenizer import Tokenizer

WORDS = "the king queen sword crown night blood speak lord heaven death love fair".split()
SRC = str(Path(__file__).resolve().parents[2] / "src")


def write_jsonl(path: Path, n_docs: int, lines_per_doc: int = 6, seed: int = 0) -> Path:
    """A JSON Lines corpus of generated documents (written line by line: never all in memory)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n_docs):
            words = rng.choice(WORDS, size=(lines_per_doc, 9))
            text = "".join(" ".join(w) + ".\n" for w in words)
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = np.random.default_rng(1)
    return Tokenizer.train_bpe([" ".join(rng.choice(WORDS, size=2000))], vocab_size=300)


def cfg(source: Path, **kw) -> DataConfig:
    return DataConfig(source=str(source), tokenizer="bpe:300", val_fraction=0.1, **kw)


def shard_sums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.bin"))}


# --------------------------------------------------------------------------- reading shards


def test_token_shards_index_like_the_concatenated_array():
    parts = [np.arange(0, 7), np.arange(7, 10), np.arange(10, 25)]
    whole = np.concatenate(parts).astype(np.uint16)
    ts = TokenShards([p.astype(np.uint16) for p in parts] + [np.zeros(0, np.uint16)], np.uint16)
    assert len(ts) == 25 and ts.shape == (25,) and len(ts.shards) == 3
    for i in (0, 6, 7, 9, 10, 24, -1, -25):
        assert ts[i] == whole[i]
    for sl in (slice(None), slice(5, 12), slice(9, 10), slice(3, 3), slice(-4, None), slice(0, 25, 3)):
        assert np.array_equal(ts[sl], whole[sl])
    idx = np.array([[0, 6, 7, 8], [9, 10, 11, 24]])  # windows across shard boundaries
    assert np.array_equal(ts[idx], whole[idx]) and ts[idx].dtype == np.uint16
    assert np.array_equal(np.asarray(ts), whole) and ts.tolist() == whole.tolist()
    with pytest.raises(IndexError):
        ts[25]
    with pytest.raises(IndexError):
        ts[np.array([3, 25])]


def test_batches_do_not_depend_on_the_shard_layout(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(streaming, "BATCH_CHARS", 4000)  # commits can only follow a work item
    src = write_jsonl(tmp_path / "c.jsonl", 300)
    one = prepare(cfg(src), tokenizer=tok, cache_root=tmp_path / "a", progress=False)
    many = prepare(cfg(src), tokenizer=tok, cache_root=tmp_path / "b", progress=False, shard_tokens=2000)
    assert len(one.train.shards) == 1 and len(many.train.shards) > 5 and len(many.val.shards) > 5
    index = many.meta["shards"]["train"]
    assert [sh["file"] for sh in index] == [f"train-{k:05d}.bin" for k in range(len(index))]
    assert sum(sh["n_tokens"] for sh in index) == many.meta["train"]["n_tokens"] == len(many.train)
    assert np.array_equal(np.asarray(one.train), np.asarray(many.train))
    assert np.array_equal(np.asarray(one.val), np.asarray(many.val))
    for step in range(5):
        a = one.get_batch("train", step, 8, 64, seed=3)
        b = many.get_batch("train", step, 8, 64, seed=3)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for (xa, ya), (xb, yb) in zip(one.eval_batches("val", 4, 32, 3), many.eval_batches("val", 4, 32, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert one.unigram_entropy() == pytest.approx(many.unigram_entropy())


def test_jsonl_documents_split_and_joined_like_text(tmp_path, tok):
    src = write_jsonl(tmp_path / "c.jsonl", 5)
    data = prepare(cfg(src), tokenizer=tok, cache_root=tmp_path / "c", progress=False, shard_tokens=50)
    texts = [json.loads(line)["text"] for line in src.read_text().splitlines()]
    from attnlab.data.dataset import split_documents

    train, val = split_documents([(str(i), t) for i, t in enumerate(texts)], 0.1)
    assert tok.decode(data.train) == "<|endoftext|>".join(t for _, t in train)
    assert tok.decode(data.val) == "<|endoftext|>".join(t for _, t in val)
    assert data.meta["n_documents"] == 5 and data.meta["val"]["n_documents"] == 5


# --------------------------------------------------------------------------- workers


def test_num_proc_2_gives_the_same_shards_as_1(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(streaming, "BATCH_CHARS", 4000)  # several work items in flight
    src = write_jsonl(tmp_path / "c.jsonl", 400)
    one = prepare(cfg(src), tokenizer=tok, cache_root=tmp_path / "p1", progress=False, shard_tokens=5000)
    two = prepare(cfg(src, num_proc=2), tokenizer=tok, cache_root=tmp_path / "p2", progress=False, shard_tokens=5000)
    assert len(shard_sums(one.dir)) > 4
    assert shard_sums(one.dir) == shard_sums(two.dir)
    assert one.meta["shards"] == two.meta["shards"]


# --------------------------------------------------------------------------- memory


def traced_peak(src: Path, root: Path, tok: Tokenizer) -> int:
    tracemalloc.start()
    try:
        data = prepare(cfg(src), tokenizer=tok, cache_root=root, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data.meta["train"]["n_bytes"] > 0.8 * src.stat().st_size  # it did read it all
    return peak


def test_memory_stays_bounded_while_preparing(tmp_path, tok):
    small = write_jsonl(tmp_path / "small.jsonl", 1000, lines_per_doc=14)
    big = write_jsonl(tmp_path / "big.jsonl", 8000, lines_per_doc=14)
    size = big.stat().st_size
    assert size > 6e6 and size > 7.5 * small.stat().st_size
    peak_small, peak_big = traced_peak(small, tmp_path / "s", tok), traced_peak(big, tmp_path / "b", tok)
    # a few work items, whatever the corpus size (the old preparation held ~3.8x the corpus)
    assert peak_big < 1.3 * peak_small + 500_000, f"{peak_small / 1e6:.1f} MB -> {peak_big / 1e6:.1f} MB"
    assert peak_big < size / 1.5, f"peak Python memory {peak_big / 1e6:.1f} MB for a {size / 1e6:.1f} MB corpus"


# --------------------------------------------------------------------------- kill and resume

KILLER = textwrap.dedent("""
    import os, signal, sys
    from attnlab.config import DataConfig
    from attnlab.data import prepare
    from attnlab.data.shards import ShardWriter
    from attnlab.data.tokenizer import Tokenizer

    from attnlab.data import streaming
    streaming.BATCH_CHARS = 4000  # commits can only follow a work item
    kill_at = int(sys.argv[3])
    real, calls = ShardWriter.append, [0]
    def append(self, *a, **k):
        calls[0] += 1
        if calls[0] == kill_at:  # mid-shard, after some commits: as a kill -9 would
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *a, **k)
    if kill_at:
        ShardWriter.append = append
    cfg = DataConfig(source=sys.argv[1], tokenizer="bpe:300", val_fraction=0.1, num_proc=int(sys.argv[4]))
    data = prepare(cfg, cache_root=sys.argv[2], progress=False, shard_tokens=3000)
    print(data.dir)
""")


def run_prepare(src: Path, root: Path, kill_at: int = 0, num_proc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", KILLER, str(src), str(root), str(kill_at), str(num_proc)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("num_proc", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_killed_preparation_resumes_to_the_same_shards(tmp_path, num_proc, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", 1500)
    monkeypatch.setattr(streaming, "BATCH_CHARS", 4000)  # as in the script
    clean = prepare(DataConfig(source=str(src), tokenizer="bpe:300", val_fraction=0.1), cache_root=tmp_path / "full",
                    progress=False, shard_tokens=3000).dir  # uninterrupted, in this process

    root = tmp_path / "killed"
    killed = run_prepare(src, root, kill_at=25, num_proc=num_proc)
    assert killed.returncode == -signal.SIGKILL
    partial = root / f".partial-{clean.name}"
    progress = json.loads((partial / PROGRESS).read_text())
    assert 0 < progress["docs_done"] < 1500 and progress["splits"]["train"]["shards"]  # stopped half-way
    assert not (root / clean.name).exists()

    resumed = run_prepare(src, root, num_proc=num_proc)
    assert resumed.returncode == 0, resumed.stderr
    out = Path(resumed.stdout.strip())
    assert out.name == clean.name and not partial.exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resumed_after_documents"] == progress["docs_done"]
    assert shard_sums(out) == shard_sums(clean) and len(shard_sums(out)) > 4
    assert meta["shards"] == json.loads((clean / "meta.json").read_text())["shards"]
    assert (out / "tokenizer.json").read_bytes() == (clean / "tokenizer.json").read_bytes()


def test_progress_of_other_inputs_is_not_resumed(tmp_path):
    w = ShardWriter(tmp_path, np.dtype(np.uint16), 10, key="a")
    w.append("train", np.arange(12), 30, 1)
    w.documents_done(1, 30, "doc0")
    assert (tmp_path / "train-00000.bin").is_file() and w.docs_done == 1
    w.append("train", np.arange(5), 10, 1)  # uncommitted: a stray after a kill
    w.close()
    again = ShardWriter.open(tmp_path, np.dtype(np.uint16), 10, key="a")
    assert again.docs_done == 1 and again.last_name == "doc0" and again.index()["train"][0]["n_tokens"] == 12
    assert not (tmp_path / "train-00001.bin").exists()
    other = ShardWriter.open(tmp_path, np.dtype(np.uint16), 10, key="b")
    assert other.docs_done == 0 and not list(tmp_path.glob("*.bin")) and not (tmp_path / PROGRESS).exists()


# --------------------------------------------------------------------------- cache key


def test_cache_key_follows_file_changes_and_text_field(tmp_path, tok):
    src = write_jsonl(tmp_path / "c.jsonl", 20)
    a = prepare(cfg(src), tokenizer=tok, cache_root=tmp_path / "k", progress=False)
    assert prepare(cfg(src), tokenizer=tok, cache_root=tmp_path / "k", progress=False).dir == a.dir
    body = src.read_text().replace("king", "kong")  # same size, other text
    src.write_text(body)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 1_000_000))
    b = prepare(cfg(src), tokenizer=tok, cache_root=tmp_path / "k", progress=False)
    assert b.dir != a.dir and "kong" in tok.decode(b.train[:2000])
    lines = [json.loads(x) for x in src.read_text().splitlines()]
    src.write_text("".join(json.dumps({"body": r["text"]}) + "\n" for r in lines))
    c = prepare(cfg(src, text_field="body"), tokenizer=tok, cache_root=tmp_path / "k", progress=False)
    assert c.dir not in (a.dir, b.dir) and c.meta["text_field"] == "body"
