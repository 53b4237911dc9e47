import json

import pytest
import torch

from attnlab.errors import AttnlabError, CheckpointError
from attnlab.models import build
from attnlab.train import load_checkpoint, load_model, train
from attnlab.train.checkpoint import FORMAT_VERSION, find_checkpoint, load_weights, save_checkpoint, weights_state_dict
from attnlab.train.schedule import lr_at


def quiet(s):
    pass


def test_checkpoint_roundtrip_tied_weights_stored_once(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    cfg.model.vocab_size = 300
    model = build(cfg)
    assert "lm_head.weight" not in weights_state_dict(model)
    path = save_checkpoint(tmp_path, 7, model, cfg, state={"x": torch.ones(2)})
    assert path.name == "step_0000007"
    assert find_checkpoint(tmp_path) == path
    loaded, ckpt = load_model(tmp_path)
    assert ckpt.step == 7 and ckpt.config == cfg
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=False):
        assert torch.equal(a, b), n
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert torch.equal(ckpt.training_state()["x"], torch.ones(2))


def test_keep_last_rotation_and_no_temp_left(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    cfg.model.vocab_size = 300
    model = build(cfg)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, cfg, state={}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_0000004", "step_0000005"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_checkpoint_is_detected(tmp_path, tiny_cfg, damage):
    cfg = tiny_cfg()
    cfg.model.vocab_size = 300
    path = save_checkpoint(tmp_path, 1, build(cfg), cfg, state={})
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 3]))
    else:
        f.unlink()
    with pytest.raises(CheckpointError, match="corrupt|missing"):
        load_checkpoint(path)


def test_format_version_sizes_and_older_meta(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    cfg.model.vocab_size = 300
    model = build(cfg)
    save_checkpoint(tmp_path, 1, model, cfg, state={})
    newest = save_checkpoint(tmp_path, 2, model, cfg, state={})
    meta_file = newest / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["format_version"] == FORMAT_VERSION and len(meta["meta_sha256"]) == 64
    assert set(meta["sha256"]) == set(meta["bytes"]) == {"model.safetensors", "state.pt", "config.yaml"}
    assert meta["bytes"]["state.pt"] == (newest / "state.pt").stat().st_size
    old = {k: meta[k] for k in ("format_version", "step", "sha256")}  # as first released: no sizes, no self-check
    meta_file.write_text(json.dumps(old))
    assert load_checkpoint(newest).step == 2
    meta_file.write_text(json.dumps({**old, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError,
                       match=f"format {FORMAT_VERSION + 1}, newer than this attnlab understands .*upgrade"):
        load_checkpoint(newest)
    lines = []  # a run folder falls back to the older checkpoint, saying why
    assert load_checkpoint(tmp_path, log=lines.append).step == 1
    assert len(lines) == 1 and "step_0000002" in lines[0] and "upgrade attnlab" in lines[0]


def test_architecture_mismatch_is_a_clear_error(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    cfg.model.vocab_size = 300
    weights = weights_state_dict(build(cfg))
    cfg.model.d_model = 32
    with pytest.raises(CheckpointError, match="does not match this model's architecture.*shape"):
        load_weights(build(cfg), weights)
    cfg.model.n_layer = 3
    cfg.model.d_model = 64
    with pytest.raises(CheckpointError, match="missing 'blocks.2"):
        load_weights(build(cfg), weights)


def test_missing_checkpoint_paths(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_checkpoint(tmp_path)


def test_train_writes_everything_and_refuses_to_overwrite(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    s = train(tiny_cfg(out, **{"train.eval_every": 4, "train.ckpt_every": 4}), progress=False, log=quiet)
    assert s["step"] == 8 and not s["interrupted"]
    assert s["val_loss"] < s["unigram_entropy"] + 1.0
    assert (out / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(AttnlabError, match="already holds a training run; pass --resume"):
        train(tiny_cfg(out), progress=False, log=quiet)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_resume_with_another_model_is_refused(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    train(tiny_cfg(out), progress=False, log=quiet)
    with pytest.raises(CheckpointError, match=r"different model \(model.n_layer: 2 there, 3 now\)"):
        train(tiny_cfg(out, **{"model.n_layer": 3, "train.max_steps": 12}), resume=True, progress=False, log=quiet)
    with pytest.raises(AttnlabError, match="nothing to resume"):
        train(tiny_cfg(tmp_path / "empty"), resume=True, progress=False, log=quiet)


def test_grad_accumulation_logs_mean_of_micro_batches(tmp_path, tiny_cfg):
    import torch.nn.functional as F

    from attnlab.data import prepare

    cfg = tiny_cfg(tmp_path / "a", **{"train.grad_accum": 2, "train.max_steps": 1})
    train(cfg, progress=False, log=quiet)
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in logged if r["step"] == 1 and "loss" in r)
    # Recompute step 1 by hand: same init (seeded), same two micro-batches.
    data = prepare(cfg.data, progress=False)
    torch.manual_seed(cfg.train.seed)
    model = build(cfg)
    tc = cfg.train
    micro = []
    for m in range(2):
        x, y = data.get_batch("train", 0, tc.batch_size, tc.seq_len, tc.seed, m)
        micro.append(F.cross_entropy(model(x).view(-1, cfg.model.vocab_size), y.view(-1)).item())
    assert micro[0] != micro[1]
    assert first == pytest.approx(sum(micro) / 2, rel=1e-5)


def test_lr_schedule(tiny_cfg):
    tc = tiny_cfg(**{"train.max_steps": 100, "train.warmup_steps": 10, "train.lr": 1.0, "train.min_lr": 0.1}).train
    assert lr_at(0, tc) == pytest.approx(0.1)
    assert lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(55, tc) == pytest.approx(0.55)
    assert lr_at(100, tc) == pytest.approx(0.1)
    assert all(lr_at(s, tc) >= lr_at(s + 1, tc) for s in range(10, 100))
