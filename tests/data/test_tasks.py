"""Task data readers: JSON Lines, CSV/TSV, JSON lists, SQuAD, compression, and their errors."""

from __future__ import annotations

import bz2
import gzip
import json

import pytest
import torch

from attnlab.data.tasks import pad_batch, read_records, read_squad, require_columns, split_records, write_jsonl
from attnlab.errors import AttnlabError

ROWS = [{"text": "a good film", "label": "positive"}, {"text": "dull, slow", "label": "negative"}]
SQUAD = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{
    "context": "Ada Lovelace wrote the first program in 1843.",
    "qas": [{"id": "q1", "question": "Who wrote it?", "answers": [{"text": "Ada Lovelace", "answer_start": 0}]},
            {"id": "q2", "question": "When?", "answers": [{"text": "1843", "answer_start": 40},
                                                           {"text": "in 1843", "answer_start": 37}]}]}]}]}


def test_jsonl_csv_tsv_json(tmp_path):
    assert read_records(write_jsonl(ROWS, tmp_path / "d.jsonl")) == ROWS
    (tmp_path / "d.csv").write_text('text,label\na good film,positive\n"dull, slow",negative\n')
    assert read_records(tmp_path / "d.csv") == ROWS
    (tmp_path / "d.tsv").write_text("text\tlabel\na good film\tpositive\ndull, slow\tnegative\n")
    assert read_records(tmp_path / "d.tsv") == ROWS
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    assert read_records(tmp_path / "d.json") == ROWS


def test_byte_order_mark_is_not_part_of_the_header(tmp_path):
    (tmp_path / "d.csv").write_bytes("\ufefftext,label\na good film,positive\n".encode("utf-8"))
    assert read_records(tmp_path / "d.csv") == ROWS[:1]


def test_compressed_files(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in ROWS)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(text)
    (tmp_path / "d.csv.bz2").write_bytes(bz2.compress(b'text,label\na good film,positive\n"dull, slow",negative\n'))
    assert read_records(tmp_path / "d.jsonl.gz") == ROWS
    assert read_records(tmp_path / "d.csv.bz2") == ROWS


def test_blank_lines_skipped_and_malformed_line_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert read_records(p) == ROWS
    p.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(AttnlabError, match=r"line 2 is not valid JSON"):
        read_records(p)


@pytest.mark.parametrize("name, content, message", [
    ("missing.jsonl", None, "not found"),
    ("d.txt", "hello", "unknown data format '.txt'"),
    ("d.jsonl", "", "holds no records"),
    ("d.jsonl", "[1, 2]\n", "every record must be a JSON object"),
    ("d.json", '{"a": 1}', "JSON list of records or a SQuAD object"),
])
def test_read_errors(tmp_path, name, content, message):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(AttnlabError, match=message) as e:
        read_records(p)
    assert "\n" not in str(e.value)


def test_corrupt_compressed_file(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(AttnlabError, match="cannot be read as .jsonl"):
        read_records(p)


def test_require_columns(tmp_path):
    require_columns(ROWS, ["text", "label"], "x.jsonl")
    with pytest.raises(AttnlabError,
                       match=r"'x.jsonl' record 1 has no column 'label' \(columns: text, label\); set it"):
        require_columns([ROWS[0], {"text": "t"}], ["label"], "x.jsonl", hint="set it")
    with pytest.raises(AttnlabError, match="record 0 has no column 'text'"):
        require_columns([{"text": None}], ["text"], "x.jsonl")


def test_squad(tmp_path):
    p = tmp_path / "squad.json"
    p.write_text(json.dumps(SQUAD))
    rows = read_squad(p)
    assert [r["id"] for r in rows] == ["q1", "q2"] and rows[0]["title"] == "T"
    assert rows[1]["answers"] == {"text": ["1843", "in 1843"], "answer_start": [40, 37]}
    assert read_records(p) == rows  # .json with 'data' is read as SQuAD
    with gzip.open(tmp_path / "squad.json.gz", "wt") as f:
        json.dump(SQUAD, f)
    assert read_squad(tmp_path / "squad.json.gz") == rows


def test_squad_errors(tmp_path):
    bad = json.loads(json.dumps(SQUAD))
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(AttnlabError, match=r"question q1: answer 'Ada Lovelace' is not at answer_start=3"):
        read_squad(p)
    p.write_text(json.dumps({"data": "nope"}))
    with pytest.raises(AttnlabError, match="not in SQuAD format"):
        read_squad(p)
    p.write_text("{broken")
    with pytest.raises(AttnlabError, match="not a readable SQuAD JSON file"):
        read_squad(p)


def test_split_records_is_a_seeded_partition():
    rows = [{"i": i} for i in range(103)]
    parts = split_records(rows, [0.8, 0.1, 0.1], seed=4)
    assert [len(p) for p in parts] == [82, 10, 11]
    assert sorted(r["i"] for p in parts for r in p) == list(range(103))
    assert parts == split_records(rows, [0.8, 0.1, 0.1], seed=4) != split_records(rows, [0.8, 0.1, 0.1], seed=5)


def test_pad_batch_sides():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=9, side="left", length=4)
    assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_write_jsonl_is_atomic_and_unicode(tmp_path):
    p = write_jsonl([{"text": "café ✓"}], tmp_path / "sub" / "out.jsonl")
    assert p.read_text(encoding="utf-8") == '{"text": "café ✓"}\n'
    assert [q.name for q in p.parent.iterdir()] == ["out.jsonl"]
