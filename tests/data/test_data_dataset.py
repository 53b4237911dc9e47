"""prepare(): split, tokenizer training, cache files and reuse; TokenData batches and statistics."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from attnlab.config import DataConfig
from attnlab.data import dataset as ds
from attnlab.data.dataset import TokenData, bits_per_byte, prepare, split_documents, token_dtype
from attnlab.data.shards import TokenShards
from attnlab.data.tokenizer import EOS_TOKEN, Tokenizer
from attnlab.errors import AttnlabError

VOCAB = 300
MARK = "Zyxwvqjk"  # appears only in the last (validation) line of each document


def lines(seed: int, n: int) -> str:
    rng = np.random.default_rng(seed)
    words = "the king queen sword crown night blood speak lord heaven death love fair".split()
    return "".join(" ".join(rng.choice(words, size=8)) + ".\n" for _ in range(n))


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(3):
        (d / f"doc{i}.txt").write_text(lines(i, 120) + f"{MARK}{i} ends the play.\n")
    return d


def cfg_for(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), tokenizer=kw.pop("tokenizer", f"bpe:{VOCAB}"),
                      val_fraction=kw.pop("val_fraction", 0.1), **kw)


@pytest.fixture
def data(corpus, tmp_path) -> TokenData:
    return prepare(cfg_for(corpus), cache_root=tmp_path / "cache", progress=False)


def fake_data(tmp_path, train: np.ndarray, val: np.ndarray, n_bytes=(0, 0), vocab_size=VOCAB) -> TokenData:
    """A prepared-data folder written by hand, with chosen token arrays."""
    d = tmp_path / "fake"
    d.mkdir()
    Tokenizer.train_bpe(["abc abc abd"], vocab_size=VOCAB).save(d / "tokenizer.json")
    train.astype(np.uint16).tofile(d / "train.bin")
    val.astype(np.uint16).tofile(d / "val.bin")
    meta = {
        "vocab_size": vocab_size,
        "dtype": "uint16",
        "train": {"n_tokens": len(train), "n_bytes": n_bytes[0]},
        "val": {"n_tokens": len(val), "n_bytes": n_bytes[1]},
    }
    (d / "meta.json").write_text(json.dumps(meta))
    return TokenData(d)


# --------------------------------------------------------------------------- splitting


def test_split_documents_holds_out_line_aligned_ends():
    docs = [("a", lines(0, 200)), ("b", lines(1, 50)), ("tiny", "x")]
    train, val = split_documents(docs, 0.1)
    assert [n for n, _ in val] == ["a", "b"]  # every document long enough contributes
    for (_name, text), (_, tr), (_, va) in zip(docs, train, val, strict=False):
        assert tr + va == text
        assert tr.endswith("\n")  # cut at a line start
        assert abs(len(va) / len(text) - 0.1) < 0.03
    assert train[-1] == ("tiny", "x")


def test_dtype_choice():
    assert token_dtype(256) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert token_dtype(65537) == np.uint32
    assert token_dtype(128_256) == np.uint32


# --------------------------------------------------------------------------- prepare


def test_prepare_writes_cache(data, corpus):
    files = sorted(p.name for p in data.dir.iterdir())
    assert files == ["meta.json", "tokenizer.json", "train-00000.bin", "val-00000.bin"]  # shards + index in meta
    assert not [p for p in data.dir.parent.iterdir() if p.name.startswith(".")]  # no work folder, no lock left
    m = data.meta
    assert m["vocab_size"] == data.tokenizer.vocab_size == VOCAB
    assert m["dtype"] == "uint16" and data.train.dtype == np.uint16 and isinstance(data.train, TokenShards)
    assert m["shards"] == {"train": [{"file": "train-00000.bin", "n_tokens": len(data.train)}],
                           "val": [{"file": "val-00000.bin", "n_tokens": len(data.val)}]}
    assert m["source"] == str(corpus) and m["tokenizer"] == f"bpe:{VOCAB}" and len(m["fingerprint"]) == 64
    assert m["train"]["n_tokens"] == len(data.train) and m["val"]["n_tokens"] == len(data.val)
    assert os.path.getsize(data.dir / "train-00000.bin") == 2 * len(data.train)
    # the token files are exactly the split texts, joined by <|endoftext|>
    docs = [(p.name, p.read_text()) for p in sorted(corpus.glob("*.txt"))]
    train, val = split_documents(docs, 0.1)
    assert data.tokenizer.decode(data.train) == EOS_TOKEN.join(t for _, t in train)
    assert data.tokenizer.decode(data.val) == EOS_TOKEN.join(t for _, t in val)
    assert m["train"]["n_bytes"] == sum(len(t.encode()) for _, t in train)
    assert int((np.asarray(data.val) == data.tokenizer.eos_id).sum()) == 2


def test_prepare_reuses_cache_without_retokenizing(data, corpus, tmp_path, monkeypatch):
    mtime = os.stat(data.dir / "train-00000.bin").st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("retokenized although the cache matched")

    monkeypatch.setattr(Tokenizer, "encode_batch", boom)
    monkeypatch.setattr(Tokenizer, "train_bpe", boom)
    again = prepare(cfg_for(corpus), cache_root=tmp_path / "cache", progress=False)
    assert again.dir == data.dir
    assert os.stat(again.dir / "train-00000.bin").st_mtime_ns == mtime
    assert np.array_equal(again.train, data.train)


def test_cache_key_follows_inputs(data, corpus, tmp_path):
    other = prepare(cfg_for(corpus, val_fraction=0.2), cache_root=tmp_path / "cache", progress=False)
    assert other.dir != data.dir
    (corpus / "doc0.txt").write_text("changed text\n" * 50)
    changed = prepare(cfg_for(corpus), cache_root=tmp_path / "cache", progress=False)
    assert changed.dir not in (data.dir, other.dir)


def test_incomplete_cache_is_rebuilt(data, corpus, tmp_path):
    (data.dir / "train-00000.bin").write_bytes(b"\x00\x01")  # as if cut short
    stale = data.dir.parent / f".tmp-{data.dir.name}-{2**22 + 12345}"  # left by a killed run
    stale.mkdir()
    again = prepare(cfg_for(corpus), cache_root=tmp_path / "cache", progress=False)
    assert len(again.train) == again.meta["train"]["n_tokens"] > 1
    assert not stale.exists()


def test_interrupted_run_leaves_no_trusted_cache_and_resumes(corpus, data, tmp_path, monkeypatch):
    from attnlab.data import streaming

    real = streaming.encode_items

    def dies_in_the_second_document(*a, **k):
        gen = real(*a, **k)
        for _ in range(90):  # ~60 items per document
            yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(streaming, "BATCH_CHARS", 100)
    monkeypatch.setattr(streaming, "encode_items", dies_in_the_second_document)
    root = tmp_path / "cache2"
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg_for(corpus), cache_root=root, progress=False, shard_tokens=1000)
    assert sorted(p.name for p in root.iterdir()) == [f".lock-{data.dir.name}", f".partial-{data.dir.name}"]
    monkeypatch.setattr(streaming, "encode_items", real)
    again = prepare(cfg_for(corpus), cache_root=root, progress=False)
    assert again.meta["resumed_after_documents"] == 1  # the first document was committed
    assert np.array_equal(again.train, data.train) and np.array_equal(again.val, data.val)


def test_uint32_files_for_large_vocab(corpus, data, tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "token_dtype", lambda vocab_size: np.dtype(np.uint32))
    big = prepare(cfg_for(corpus), tokenizer=data.tokenizer, cache_root=tmp_path / "c32", progress=False)
    assert big.meta["dtype"] == "uint32" and big.train.dtype == np.uint32
    assert os.path.getsize(big.dir / "train-00000.bin") == 4 * len(big.train)
    assert np.array_equal(big.train, data.train)


def test_tokenizer_trained_on_train_text_only(corpus, tmp_path, monkeypatch):
    seen = []
    real = Tokenizer.train_bpe.__func__

    def spy(cls, texts, vocab_size, **kw):
        texts = list(texts)
        seen.extend(texts)
        return real(cls, texts, vocab_size, **kw)

    monkeypatch.setattr(Tokenizer, "train_bpe", classmethod(spy))
    data = prepare(cfg_for(corpus), cache_root=tmp_path / "cache", progress=False)
    joined = "".join(seen)
    assert joined and MARK not in joined
    assert joined == "".join(
        t for _, t in split_documents([(p.name, p.read_text()) for p in sorted(corpus.glob("*.txt"))], 0.1)[0])
    assert all(f"{MARK}{i}" in data.tokenizer.decode(data.val) for i in range(3))


def test_tokenizer_from_path(data, corpus, tmp_path):
    path = data.tokenizer.save(tmp_path / "tok" / "tokenizer.json")
    loaded = prepare(cfg_for(corpus, tokenizer=str(path)), cache_root=tmp_path / "cache2", progress=False)
    assert np.array_equal(loaded.train, data.train)
    assert loaded.meta["tokenizer"] == str(path)


@pytest.mark.parametrize("spec", ["bpe:abc", "nope/tokenizer.json", "bpe:100"])
def test_bad_tokenizer_spec(corpus, tmp_path, spec):
    with pytest.raises(AttnlabError, match="bpe:4096"):
        prepare(cfg_for(corpus, tokenizer=spec), cache_root=tmp_path / "cache", progress=False)


def test_progress_bar(corpus, tmp_path, capsys):
    prepare(cfg_for(corpus), cache_root=tmp_path / "cache", progress=True)
    err = capsys.readouterr().err
    assert "tokenizing" in err and "B/s" in err and "100%" in err  # one pass, bytes per second, ETA


# --------------------------------------------------------------------------- batches


def test_get_batch_shapes_and_targets(data):
    x, y = data.get_batch("train", step=3, batch_size=4, seq_len=16, seed=1)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(data.train, dtype=np.int64), 17)
    for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
        assert (windows == row).all(axis=1).any()  # each (x, y) pair is a real stretch of text


def test_get_batch_is_a_pure_function_of_its_arguments(data, tmp_path):
    args = dict(batch_size=8, seq_len=16, seed=7)
    x1, y1 = data.get_batch("train", step=5, **args)
    data.get_batch("train", step=6, **args)  # no hidden state advances
    torch.manual_seed(123)
    x2, y2 = TokenData(data.dir).get_batch("train", step=5, **args)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for other in (
        data.get_batch("train", step=6, **args),
        data.get_batch("train", step=5, micro=1, **args),
        data.get_batch("train", step=5, batch_size=8, seq_len=16, seed=8),
    ):
        assert not torch.equal(x1, other[0])


def test_get_batch_starts_are_uniform_and_reach_the_end(tmp_path):
    d = fake_data(tmp_path, np.arange(40), np.arange(10))
    starts = torch.cat([d.get_batch("train", s, 16, 8, seed=0)[0][:, 0] for s in range(200)])
    assert starts.min() == 0 and starts.max() == 40 - 8 - 1  # every valid window, never past the end
    x, y = d.get_batch("train", 0, 4, 8, seed=0)
    assert torch.equal(y, x + 1)


def test_get_batch_data_too_small(tmp_path):
    d = fake_data(tmp_path, np.arange(40), np.arange(10))
    with pytest.raises(AttnlabError, match="too small for seq_len=9.*lower train.seq_len or add text"):
        d.get_batch("val", 0, 2, 9, seed=0)
    with pytest.raises(AttnlabError, match="unknown split"):
        d.get_batch("test", 0, 2, 4, seed=0)


def test_eval_batches_deterministic_evenly_spaced_non_overlapping(tmp_path):
    d = fake_data(tmp_path, np.arange(1000), np.arange(500))
    batches = list(d.eval_batches("val", batch_size=4, seq_len=32, max_batches=3))
    assert len(batches) == 3 and all(x.shape == (4, 32) for x, _ in batches)
    again = list(d.eval_batches("val", batch_size=4, seq_len=32, max_batches=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=False))
    starts = torch.cat([x[:, 0] for x, _ in batches]).tolist()
    assert starts[0] == 0 and starts[-1] == 500 - 32 - 1  # spans the whole split
    gaps = np.diff(starts)
    assert gaps.min() >= 32 and gaps.max() - gaps.min() <= 1  # non-overlapping, evenly spaced
    assert all(torch.equal(y, x + 1) for x, y in batches)


def test_eval_batches_capped_by_data(tmp_path):
    d = fake_data(tmp_path, np.arange(1000), np.arange(100))
    full = list(d.eval_batches("val", batch_size=2, seq_len=10, max_batches=100))
    assert len(full) == 4  # 9 windows fit; 4 full batches of 2
    starts = torch.cat([x[:, 0] for x, _ in full]).tolist()
    assert np.diff(starts).min() >= 10
    small = list(d.eval_batches("val", batch_size=16, seq_len=10, max_batches=5))
    assert len(small) == 1 and small[0][0].shape == (9, 10)  # fewer windows than a batch


# --------------------------------------------------------------------------- statistics


def test_bytes_per_token_and_unigram_entropy_by_hand(tmp_path):
    d = fake_data(tmp_path, np.array([5, 5, 5, 5]), np.array([1, 1, 2, 3]), n_bytes=(6, 10))
    assert d.bytes_per_token("val") == 2.5
    assert d.bytes_per_token("train") == 1.5
    assert d.unigram_entropy("val") == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert d.unigram_entropy("train") == 0.0
    assert bits_per_byte(2.5 * math.log(2), 2.5) == pytest.approx(1.0)


def test_statistics_sane_on_real_data(data):
    bpt = data.bytes_per_token("train")
    assert 1.0 < bpt < 8.0
    h = data.unigram_entropy("train")
    assert 0 < h < math.log(data.vocab_size)


def test_tokenizer_sample_mb_reaches_the_trainer_and_keys_the_cache(corpus, data, tmp_path, monkeypatch):
    seen = {}
    real = Tokenizer.train_bpe.__func__

    def spy(cls, texts, vocab_size, **kw):
        seen.update(kw)
        return real(cls, texts, vocab_size, **kw)

    monkeypatch.setattr(Tokenizer, "train_bpe", classmethod(spy))
    sampled = prepare(cfg_for(corpus, tokenizer_sample_mb=0.005), cache_root=tmp_path / "cache", progress=False)
    assert seen["sample_mb"] == 0.005 and sampled.dir != data.dir
