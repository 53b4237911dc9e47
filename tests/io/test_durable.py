"""attnlab.io: folders written atomically with a sha256 manifest, verified on read; strict weight loading."""

import json
import os

import pytest
import torch
from torch import nn

from attnlab.errors import CheckpointError
from attnlab.io import durable
from attnlab.io.weights import load_weights, read_weights_file, weights_state_dict

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no such process


def fill_with(files):
    def fill(tmp):
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            durable.write_file(tmp / name, data)

    return fill


def hidden(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


def test_write_folder_records_every_file_and_verify_checks_them(tmp_path):
    final = tmp_path / "out" / "model"
    durable.write_folder(final, fill_with({"a.bin": b"abc", "sub/b.txt": b"hello"}))
    sums = json.loads((final / durable.MANIFEST).read_text())
    assert sums == {name: durable.sha256_file(final / name) for name in ("a.bin", "sub/b.txt")}
    assert durable.verify(final) == sums and hidden(final) == []

    (final / "a.bin").write_bytes(b"abd")
    with pytest.raises(CheckpointError, match=r"a\.bin' is missing or corrupt \(checksum mismatch\); fix it$"):
        durable.verify(final, fix="; fix it")
    (final / "a.bin").unlink()
    with pytest.raises(CheckpointError, match=r"a\.bin' is missing or corrupt"):
        durable.verify(final)
    (final / durable.MANIFEST).write_bytes(b"\xff not json")
    with pytest.raises(CheckpointError, match="checksums.json' is corrupt"):
        durable.verify(final)
    (final / durable.MANIFEST).unlink()
    assert durable.verify(final) == {}, "a folder from before manifests passes unchecked"


def test_a_failed_write_leaves_the_previous_folder_and_no_temporary_one(tmp_path):
    final = tmp_path / "model"
    durable.write_folder(final, fill_with({"w": b"old"}))

    def fails(tmp):
        durable.write_file(tmp / "w", b"new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        durable.write_folder(final, fails)
    assert (final / "w").read_bytes() == b"old" and hidden(final) == []
    durable.write_folder(final, fill_with({"w": b"new"}))  # replacing works, nothing left aside
    assert (final / "w").read_bytes() == b"new" and hidden(final) == []
    assert durable.verify(final) == {"w": durable.sha256_file(final / "w")}


def test_leftovers_of_a_killed_writer_are_cleaned_up_or_restored(tmp_path):
    final = tmp_path / "model"
    durable.write_folder(final, fill_with({"w": b"old"}))
    os.replace(final, tmp_path / f".old-model-{DEAD_PID}")  # killed between moving aside and renaming in
    (tmp_path / f".tmp-model-{DEAD_PID}").mkdir()
    alive = tmp_path / f".tmp-model-{os.getppid()}"  # another writer still at work: left alone
    alive.mkdir()
    tmp = durable.stage(final)
    assert (final / "w").read_bytes() == b"old", "the copy set aside is put back"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, tmp.name, "model"])


def test_manifest_written_by_the_caller(tmp_path):
    def describe(folder, sha256, sizes):
        durable.write_file(folder / "meta.json", json.dumps({"sha256": sha256, "bytes": sizes}).encode())

    final = durable.write_folder(tmp_path / "f", fill_with({"x": b"12345"}), manifest=describe)
    meta = json.loads((final / "meta.json").read_text())
    assert meta["bytes"] == {"x": 5}
    (final / "x").write_bytes(b"123")
    with pytest.raises(CheckpointError, match=r"is corrupt \(truncated: 3 bytes instead of 5\)"):
        durable.check_files(final, meta["sha256"], meta["bytes"])
    (final / "x").unlink()
    with pytest.raises(CheckpointError, match="x' is missing from the adapter; it is incomplete; save it again"):
        durable.check_files(final, meta["sha256"], kind="the adapter", fix="; save it again")


def test_atomic_write_text_replaces_whole(tmp_path):
    p = tmp_path / "latest"
    durable.atomic_write_text(p, "step_1\n")
    durable.atomic_write_text(p, "step_2\n")
    assert p.read_text() == "step_2\n" and [q.name for q in tmp_path.iterdir()] == ["latest"]


class Tied(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.emb = nn.Embedding(8, d)
        self.head = nn.Linear(d, 8, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.ones(d))


def test_load_weights_is_strict_and_takes_tied_tensors_once(tmp_path):
    torch.manual_seed(0)
    src, dst = Tied(), Tied()
    weights = weights_state_dict(src)
    assert sorted(weights) == ["emb.weight", "scale"]
    load_weights(dst, weights)
    assert torch.equal(dst.head.weight, src.emb.weight)
    with pytest.raises(CheckpointError, match=r"missing 'emb\.weight', 1 missing, 0 unexpected.*; re-save$"):
        load_weights(dst, {"scale": weights["scale"]}, fix="re-save")
    with pytest.raises(CheckpointError, match="unexpected 'extra'"):
        load_weights(dst, {**weights, "extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"'emb\.weight' has shape \(8, 3\), the model expects \(8, 4\)"):
        load_weights(dst, {**weights, "emb.weight": torch.zeros(8, 3)})


def test_read_weights_file_refuses_anything_but_tensors(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.bin")
    assert torch.equal(read_weights_file(tmp_path / "ok.bin")["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "f": print}, tmp_path / "code.bin")
    with pytest.raises(CheckpointError, match=r"holds more than plain tensors: print is refused"):
        read_weights_file(tmp_path / "code.bin")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors' cannot be read .*; the file is corrupt"):
        read_weights_file(tmp_path / "bad.safetensors")
