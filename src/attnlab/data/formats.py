"""One small reader per document format a ``data.source`` may hold.

Each reader streams ``(name, text)`` documents from one file (or one saved ``datasets``
folder) and never holds more than one batch of records in memory:

- text (``.txt .md .text .rst``, a file without an extension, or an extension that
  ``data.glob`` names): the whole file is one document (refused if it holds a NUL byte:
  a binary or UTF-16 file);
- JSON Lines (``.jsonl .ndjson``, or ``.json`` holding one object per line) and a ``.json``
  array of objects: one document per record's text field;
- Parquet (``.parquet``, read with pyarrow in record batches): one document per row;
- a ``datasets`` folder written by ``save_to_disk``: one document per row.

Text and JSON files may be compressed (``.gz``, ``.zst``). Everything else is refused by
:func:`detect_format`, naming the file and the formats accepted: a Parquet or gzip file
read as UTF-8 is garbage that trains silently.

JSON Lines are parsed with the standard ``json`` module line by line (not
``datasets.load_dataset``, which would copy the corpus into its cache first, nor
``pyarrow.json``, which cannot say which line is broken); Parquet goes straight to
pyarrow. pyarrow, datasets and zstandard are imported only when such a file is read.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from attnlab.errors import AttnlabError

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIX = ".parquet"
COMPRESSIONS = (".gz", ".zst")
BATCH_ROWS = 1024  # records per Parquet / datasets batch

ACCEPTED = (
    "text (.txt .md .text .rst, or no extension), JSON Lines or JSON (.jsonl .ndjson .json), "
    "each optionally .gz or .zst, Parquet (.parquet), or a datasets folder from save_to_disk"
)

Doc = tuple[str, str]


def _split_compression(name: str) -> tuple[str, str]:
    """``("data.jsonl", ".gz")`` for ``"data.jsonl.gz"``; ``(name, "")`` when not compressed."""
    for c in COMPRESSIONS:
        if name.endswith(c):
            return name[: -len(c)], c
    return name, ""


def glob_extension(glob: str) -> str:
    """The extension a glob pattern names literally (``"**/*.py"`` -> ``".py"``), or ``""``."""
    m = re.search(r"\*(\.[^*?\[\]/]+)$", glob)
    return m.group(1).lower() if m else ""


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
        or (path / "dataset_dict.json").is_file()
    )


def detect_format(path: Path, text_extension: str = "") -> str:
    """The format of one file: ``"text"``, ``"json"`` or ``"parquet"``.

    Args:
        path: the file.
        text_extension: an extra extension to read as text (the one ``data.glob`` names).

    Raises:
        AttnlabError: the extension is none of the known ones.
    """
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIX):
        return "parquet"
    base, _ = _split_compression(name)
    if base.endswith(JSON_SUFFIXES):
        return "json"
    if base.endswith(TEXT_SUFFIXES) or "." not in base.lstrip("."):
        return "text"
    if text_extension and text_extension not in (PARQUET_SUFFIX, *COMPRESSIONS) and name.endswith(text_extension):
        return "text"
    ext = name[name.rfind(".", 0, len(base)):]
    raise AttnlabError(
        f"unknown extension '{ext}' for '{path}': accepted are {ACCEPTED}; "
        f"to read other files as text, give their folder with a glob naming the extension (data.glob='**/*{ext}')"
    )


def open_text(path: Path, encoding: str = "utf-8", newline: str | None = None, errors: str = "replace") -> IO[str]:
    """``path`` opened for reading text, decompressing ``.gz`` / ``.bz2`` / ``.zst`` by its name.

    The one opener of data files: corpora (bad bytes become U+FFFD) and task files
    (``errors="strict"``, ``encoding="utf-8-sig"``: a spreadsheet's byte-order mark is not part of the
    first column's name). ``newline=""`` keeps line endings as they are (``\\r\\n`` stays).
    """
    name = path.name.lower()
    compression = ".bz2" if name.endswith(".bz2") else _split_compression(name)[1]  # .bz2: task files only
    if compression == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors=errors, newline=newline)
    if compression == ".bz2":
        return bz2.open(path, "rt", encoding=encoding, errors=errors, newline=newline)
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise AttnlabError(
                f"'{path}' is zstandard-compressed; install the data extra (pip install 'attnlab[data]')"
            ) from None
        return zstandard.open(path, "rt", encoding=encoding, errors=errors, newline=newline)
    return open(path, encoding=encoding, errors=errors, newline=newline)


def read_text(path: Path, name: str) -> Iterator[Doc]:
    """The whole file as one document (UTF-8; bad bytes become U+FFFD).

    Raises:
        AttnlabError: the file holds a NUL byte: it is binary (or UTF-16), not UTF-8 text.
    """
    try:
        with open_text(path, newline="") as f:
            text = f.read()
    except (OSError, EOFError) as e:
        raise AttnlabError(f"cannot read '{path}': {e}") from None
    if "\x00" in text:
        raise AttnlabError(
            f"'{path}' holds NUL bytes, so it is not UTF-8 text (a binary file, or UTF-16); "
            "convert it to UTF-8 or leave it out of data.glob"
        )
    yield name, text


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number"}


def _type_name(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _text_of(record: Any, where: str, text_field: str) -> str:
    if not isinstance(record, dict):
        raise AttnlabError(f"{where}: a record must be a JSON object, got {_type_name(record)}")
    if text_field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise AttnlabError(
            f"{where}: no field '{text_field}' (fields: {fields}); set data.text_field to the field holding the text"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise AttnlabError(f"{where}: field '{text_field}' is {_type_name(text)}, not a string")
    return text


def _first_char(path: Path) -> str:
    with open_text(path, "utf-8-sig") as f:
        while chunk := f.read(4096):
            if stripped := chunk.lstrip():
                return stripped[0]
    return ""


def read_json(path: Path, name: str, text_field: str) -> Iterator[Doc]:
    """JSON Lines (one object per line; documents ``name:LINE``, from 1), or a ``.json`` file holding one
    array of objects (documents ``name:ROW``, from 0; parsed whole: use JSON Lines for big corpora).

    Raises:
        AttnlabError: invalid JSON (naming the line), a record that is not an object, or
            one without a string ``text_field``.
    """
    try:
        is_json = _split_compression(path.name.lower())[0].endswith(".json")
        what = "a .json source holds" if is_json else "JSON Lines hold"
        if is_json and _first_char(path) == "[":
            with open_text(path, "utf-8-sig") as f:
                try:
                    records = json.load(f)
                except json.JSONDecodeError as e:
                    raise AttnlabError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None
            for i, record in enumerate(records):
                yield f"{name}:{i}", _text_of(record, f"{path} item {i}", text_field)
            return
        with open_text(path, "utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    raise AttnlabError(
                        f"{path} line {n}: invalid JSON ({e.msg} at column {e.pos + 1}); {what} one JSON object "
                        "per line" + (" or one array of objects" if is_json else "")
                    ) from None
                yield f"{name}:{n}", _text_of(record, f"{path} line {n}", text_field)
    except (OSError, EOFError) as e:
        raise AttnlabError(f"cannot read '{path}': {e}") from None


def _check_column(schema: Any, path: Path, text_field: str) -> None:
    """Refuse a missing or non-string column of an Arrow schema."""
    import pyarrow as pa

    if text_field not in schema.names:
        raise AttnlabError(
            f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)}); "
            "set data.text_field to the column holding the text"
        )
    typ = schema.field(text_field).type
    values = typ.value_type if pa.types.is_dictionary(typ) else typ  # pandas categoricals are dictionaries
    is_view = getattr(pa.types, "is_string_view", lambda t: False)  # pyarrow >= 16
    if not (pa.types.is_string(values) or pa.types.is_large_string(values) or is_view(values)):
        raise AttnlabError(f"{path}: column '{text_field}' holds {typ}, not strings")


def _batch_docs(column: Any, name: str, path: Path, text_field: str, start: int) -> Iterator[Doc]:
    """The documents of one Arrow string column; a null value is refused, naming its row."""
    if column.null_count:
        row = start + column.is_null().to_pylist().index(True)
        raise AttnlabError(f"{path} row {row}: column '{text_field}' is null, not a string")
    for i, text in enumerate(column.to_pylist(), start):
        yield f"{name}:{i}", text


def read_parquet(path: Path, name: str, text_field: str) -> Iterator[Doc]:
    """One document per row (``name:ROW``, from 0), read in record batches of ``text_field`` only."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AttnlabError(
            f"reading '{path}' needs pyarrow; install the data extra (pip install 'attnlab[data]')"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged file
        raise AttnlabError(f"'{path}' is not a readable Parquet file: {e}") from None
    with pf:
        _check_column(pf.schema_arrow, path, text_field)
        row = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[text_field]):
            yield from _batch_docs(batch.column(0), name, path, text_field, row)
            row += batch.num_rows


def read_saved_dataset(path: Path, name: str, text_field: str) -> Iterator[Doc]:
    """One document per row (``name:ROW``, from 0) of a ``Dataset.save_to_disk`` folder.

    The folder is memory-mapped by ``datasets.load_from_disk`` (local only: attnlab sets
    ``HF_DATASETS_OFFLINE=1`` unless the user set it); a ``DatasetDict`` folder is refused,
    naming its splits, since reading them all would train on the test split.
    """
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise AttnlabError(
            f"'{path}' is a DatasetDict with splits {', '.join(splits)}; point data.source at one split's "
            f"folder, e.g. {path / (splits[0] if splits else 'train')}"
        )
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise AttnlabError(
            f"reading the datasets folder '{path}' needs datasets; install the data extra (pip install 'attnlab[data]')"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError / ValueError / ArrowInvalid for a damaged folder
        raise AttnlabError(f"cannot load the datasets folder '{path}': {e}") from None
    _check_column(ds.data.schema, path, text_field)
    table = ds.select_columns([text_field]).with_format("arrow")
    row = 0
    for batch in table.iter(batch_size=BATCH_ROWS):
        yield from _batch_docs(batch.column(0), name, path, text_field, row)
        row += batch.num_rows


def read_file(path: Path, name: str, fmt: str, text_field: str) -> Iterator[Doc]:
    """The documents of one file of format ``fmt`` (from :func:`detect_format`), or of a datasets folder."""
    if fmt == "text":
        return read_text(path, name)
    if fmt == "json":
        return read_json(path, name, text_field)
    if fmt == "parquet":
        return read_parquet(path, name, text_field)
    if fmt == "datasets":
        return read_saved_dataset(path, name, text_field)
    raise ValueError(f"unknown format {fmt!r}")
