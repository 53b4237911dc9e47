"""Document formats: the same text as .txt files, JSON Lines (.gz/.zst), a JSON array, Parquet (one
file or a glob over shards) and a saved ``datasets`` folder gives the same documents and token stream;
bad input (an unknown extension, a missing or non-string field, bad JSON) is a one-line error."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.config import DataConfig
from attnlab.data.corpus import iter_documents, read_documents
from attnlab.data.dataset import prepare
from attnlab.errors import AttnlabError

WORDS = "the king queen sword crown night blood speak lord heaven death love fair café 王 夜".split()


def _doc(i: int) -> str:
    rng = np.random.default_rng(i)
    return "".join(" ".join(rng.choice(WORDS, size=7)) + ".\n" for _ in range(30 + 5 * i))


DOCS = [_doc(i) for i in range(5)]
DOCS[2] = DOCS[2].replace("\n", "\r\n")  # line endings are kept as they are, in every format


def _write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _zst_open(path, mode, encoding, newline):
    zstandard = pytest.importorskip("zstandard")
    return zstandard.open(path, mode, encoding=encoding, newline=newline)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """The five documents in every format, by format name -> data.source."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("formats")
    records = [{"id": i, "text": t} for i, t in enumerate(DOCS)]
    txt = root / "txt"
    txt.mkdir()
    for i, t in enumerate(DOCS):
        (txt / f"doc{i}.txt").write_bytes(t.encode())
    (txt / "blank.txt").write_text(" \n\n")  # whitespace-only: skipped everywhere
    out = {"txt": str(txt)}
    _write_jsonl(root / "c.jsonl", records[:2] + [{"id": 9, "text": "  \n"}] + records[2:])
    out["jsonl"] = str(root / "c.jsonl")
    _write_jsonl(root / "c.jsonl.gz", records, gzip.open)
    out["jsonl.gz"] = str(root / "c.jsonl.gz")
    _write_jsonl(root / "c.jsonl.zst", records, _zst_open)
    out["jsonl.zst"] = str(root / "c.jsonl.zst")
    (root / "c.json").write_text(json.dumps(records, indent=2), newline="")
    out["json array"] = str(root / "c.json")
    table = pa.table({"id": list(range(5)), "text": DOCS})
    pq.write_table(table, root / "c.parquet", row_group_size=2)  # several row groups
    out["parquet"] = str(root / "c.parquet")
    (root / "shards").mkdir()
    for k, (a, b) in enumerate([(0, 2), (2, 4), (4, 5)]):
        pq.write_table(table.slice(a, b - a), root / "shards" / f"train-{k:05d}.parquet")
    out["parquet glob"] = str(root / "shards" / "*.parquet")
    datasets.Dataset.from_dict({"text": DOCS, "id": list(range(5))}).save_to_disk(str(root / "saved"))
    out["datasets"] = str(root / "saved")
    return out


FORMATS = ["txt", "jsonl", "jsonl.gz", "jsonl.zst", "json array", "parquet", "parquet glob", "datasets"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_documents(sources, fmt):
    docs = read_documents(sources[fmt])
    assert [t for _, t in docs] == DOCS
    assert len({n for n, _ in docs}) == 5


def test_document_names(sources):
    names = lambda fmt: [n for n, _ in read_documents(sources[fmt])]  # noqa: E731
    assert names("txt") == [f"doc{i}.txt" for i in range(5)]
    assert names("jsonl") == ["c.jsonl:1", "c.jsonl:2", "c.jsonl:4", "c.jsonl:5", "c.jsonl:6"]  # lines from 1
    assert names("parquet") == [f"c.parquet:{i}" for i in range(5)]  # rows from 0
    assert names("json array") == [f"c.json:{i}" for i in range(5)]
    assert names("parquet glob") == ["train-00000.parquet:0", "train-00000.parquet:1", "train-00001.parquet:0",
                                     "train-00001.parquet:1", "train-00002.parquet:0"]
    assert names("datasets") == [f"saved:{i}" for i in range(5)]


@pytest.fixture(scope="module")
def streams(sources, tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cache = tmp_path_factory.mktemp("cache")
    out = {}
    for fmt in FORMATS:
        data = prepare(DataConfig(source=sources[fmt], tokenizer="bpe:300", val_fraction=0.1),
                       cache_root=cache / fmt.replace(" ", "-"), progress=False)
        out[fmt] = (np.asarray(data.train).copy(), np.asarray(data.val).copy())
    return out


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_every_format_gives_the_same_token_stream(streams, fmt):
    train, val = streams["txt"]
    assert len(train) > 1000 and len(val) > 50
    assert np.array_equal(streams[fmt][0], train) and np.array_equal(streams[fmt][1], val)


def test_text_field_reaches_prepare(streams, tmp_path):
    _write_jsonl(tmp_path / "b.jsonl", [{"body": t, "text": "decoy"} for t in DOCS])
    data = prepare(DataConfig(source=str(tmp_path / "b.jsonl"), tokenizer="bpe:300", val_fraction=0.1,
                              text_field="body"), cache_root=tmp_path / "cache", progress=False)
    assert np.array_equal(np.asarray(data.train), streams["txt"][0])


def test_documents_are_streamed(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "one"}\n{"text": "two"}\nnot json\n')
    docs = iter_documents(str(f))
    assert next(docs) == ("c.jsonl:1", "one") and next(docs) == ("c.jsonl:2", "two")
    with pytest.raises(AttnlabError, match=r"c.jsonl line 3: invalid JSON"):
        next(docs)


# -- text files -----------------------------------------------------------------------------


def test_text_extensions_compression_and_no_extension(tmp_path):
    for name in ("a.md", "b.text", "c.rst", "d.TXT"):
        (tmp_path / name).write_text(f"{name}\n")
    with gzip.open(tmp_path / "e.txt.gz", "wt") as f:
        f.write("zipped\n")
    (tmp_path / "README").write_text("no extension\n")
    assert read_documents(str(tmp_path / "e.txt.gz")) == [("e.txt.gz", "zipped\n")]
    assert read_documents(str(tmp_path / "README")) == [("README", "no extension\n")]
    assert [n for n, _ in read_documents(str(tmp_path), glob="*")] == ["README", "a.md", "b.text", "c.rst",
                                                                       "d.TXT", "e.txt.gz"]


def test_glob_naming_an_extension_reads_it_as_text(tmp_path):
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("hi\n")
    assert read_documents(str(tmp_path), glob="**/*.py") == [("m.py", "x = 1\n")]
    assert read_documents(str(tmp_path / "*.py")) == [("m.py", "x = 1\n")]
    with pytest.raises(AttnlabError, match=r"unknown extension '.py' for '.*m.py'.*data.glob='\*\*/\*.py'"):
        read_documents(str(tmp_path), glob="*")  # "*" names no extension: .py is not declared text


# -- one-line errors ---------------------------------------------------------------------------


def _error(source, **kw) -> str:
    with pytest.raises(AttnlabError) as e:
        read_documents(str(source), **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_unknown_extension_is_refused_before_reading(tmp_path):
    (tmp_path / "rows.csv").write_text("text\nhello\n")
    msg = _error(tmp_path / "rows.csv")
    assert msg.startswith(f"unknown extension '.csv' for '{tmp_path / 'rows.csv'}'")
    assert ".jsonl" in msg and ".parquet" in msg and "save_to_disk" in msg
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("fine\n")
    (tmp_path / "d" / "z.tar.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(AttnlabError, match=r"unknown extension '.tar.gz' for '.*z.tar.gz'"):
        iter_documents(str(tmp_path / "d"), glob="*")  # refused when called, before a.txt is read


def test_missing_text_field(tmp_path):
    f = tmp_path / "c.jsonl"
    _write_jsonl(f, [{"text": "ok"}, {"body": "no text", "id": 1}])
    assert _error(f) == (f"{f} line 2: no field 'text' (fields: body, id); "
                         "set data.text_field to the field holding the text")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    assert "p.parquet: no column 'text' (columns: body); set data.text_field" in _error(tmp_path / "p.parquet")


def test_non_string_field(tmp_path):
    f = tmp_path / "c.jsonl"
    _write_jsonl(f, [{"text": "ok"}, {"text": 5}])
    assert _error(f) == f"{f} line 2: field 'text' is a number, not a string"
    _write_jsonl(f, [{"text": None}])
    assert _error(f) == f"{f} line 1: field 'text' is null, not a string"
    (tmp_path / "l.jsonl").write_text('["a list"]\n')
    assert _error(tmp_path / "l.jsonl").endswith("line 1: a record must be a JSON object, got a list")
    (tmp_path / "a.json").write_text('[{"text": "a"}, "b"]')
    assert _error(tmp_path / "a.json").endswith("a.json item 1: a record must be a JSON object, got a string")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    assert _error(tmp_path / "n.parquet").endswith("n.parquet: column 'text' holds int64, not strings")
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "null.parquet")
    assert _error(tmp_path / "null.parquet").endswith("null.parquet row 1: column 'text' is null, not a string")


def test_arrow_string_types_and_nulls(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    pq.write_table(pa.table({"text": pa.array(["a", "b", "a"]).dictionary_encode()}), tmp_path / "cat.parquet")
    pq.write_table(pa.table({"text": pa.array(["a", "b"], pa.large_string())}), tmp_path / "large.parquet")
    assert [t for _, t in read_documents(str(tmp_path / "*.parquet"))] == ["a", "b", "a", "a", "b"]
    datasets.Dataset.from_dict({"text": ["a", None], "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert _error(tmp_path / "ds").endswith("ds row 1: column 'text' is null, not a string")
    assert _error(tmp_path / "ds", text_field="n").endswith("ds: column 'n' holds int64, not strings")


def test_bad_json_names_the_line(tmp_path):
    f = tmp_path / "c.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write('{"text": "a"}\n\n{"text": "b",}\n')
    assert _error(f).startswith(f"{f} line 3: invalid JSON (")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    pytest.importorskip("pyarrow")
    assert "is not a readable Parquet file" in _error(tmp_path / "x.parquet")


def test_binary_text_and_json_object_files(tmp_path):
    (tmp_path / "blob").write_bytes(b"PK\x03\x04\x00\x00binary")  # no extension: text, unless it is binary
    assert "holds NUL bytes, so it is not UTF-8 text" in _error(tmp_path / "blob")
    (tmp_path / "utf16.txt").write_text("hello", encoding="utf-16")
    assert "holds NUL bytes" in _error(tmp_path / "utf16.txt")
    (tmp_path / "squad.json").write_text('{\n  "data": []\n}\n')  # one pretty-printed object
    assert _error(tmp_path / "squad.json").startswith(
        f"{tmp_path / 'squad.json'} line 1: invalid JSON (Expecting property name enclosed in double quotes at "
        "column 2); a .json source holds one JSON object per line or one array of objects")


def test_folder_without_matches_names_what_it_holds(tmp_path):
    for name in ("a.jsonl.gz", "b.jsonl.gz", "LICENSE"):
        (tmp_path / name).write_bytes(b"x")
    assert _error(tmp_path) == (f"no files matching '**/*.txt' under directory '{tmp_path}'; it holds 2 .jsonl.gz, "
                                "1 (no extension) files: change data.glob (e.g. data.glob='**/*.jsonl.gz')")


def test_datasetdict_folder_names_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                              "test": datasets.Dataset.from_dict({"text": ["b"]})})
    d.save_to_disk(str(tmp_path / "dd"))
    assert "is a DatasetDict with splits train, test; point data.source at one split" in _error(tmp_path / "dd")
    assert read_documents(str(tmp_path / "dd" / "train")) == [("train:0", "a")]


def test_glob_matching_nothing(tmp_path):
    assert _error(tmp_path / "shards" / "*.parquet").startswith("no files match the pattern")


def test_cli_errors_are_one_line(capsys, tmp_path, one_line_error):
    (tmp_path / "rows.csv").write_text("text\nhello\n")
    code = main(["train", "gpt-tiny", f"data.source={tmp_path}/rows.csv", f"train.out_dir={tmp_path}/r"])
    one_line_error(capsys, code, "unknown extension '.csv'")
    _write_jsonl(tmp_path / "c.jsonl", [{"body": "x"}])
    code = main(["tokenizer", "train", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "t.json")])
    one_line_error(capsys, code, "no field 'text' (fields: body)")


def test_tokenizer_cli_text_field(capsys, tmp_path):
    _write_jsonl(tmp_path / "c.jsonl", [{"body": t} for t in DOCS])
    code = main(["tokenizer", "train", str(tmp_path / "c.jsonl"), "--text-field", "body", "--vocab-size", "300",
                 "--out", str(tmp_path / "t.json")])
    assert code == 0 and "trained on 5 document(s)" in capsys.readouterr().out
