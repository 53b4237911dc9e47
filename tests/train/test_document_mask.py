"""Sequence packing with document masks (``train.document_mask``): ids, model mask, objective, training."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from attnlab import config
from attnlab.config import AttentionConfig, ModelConfig
from attnlab.data.dataset import prepare
from attnlab.data.packing import document_ids
from attnlab.errors import ConfigError
from attnlab.models import DecoderLM
from attnlab.train import load_model, train
from attnlab.train.loop import _rows
from attnlab.train.objectives import CausalLM, Objective, ObjectiveBatch, build_objective

EOS = 0


def test_document_ids_count_eos_strictly_before():
    x = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 4],
                      [EOS, EOS, 3, 3, 3, 3, 3, EOS]])  # (2, 8)
    assert document_ids(x, EOS).tolist() == [[0, 0, 0, 1, 1, 1, 1, 2],
                                             [0, 1, 2, 2, 2, 2, 2, 2]]
    no_eos = torch.tensor([[1, 2, 3, 4]])
    ids = document_ids(no_eos, EOS)
    assert ids.dtype == torch.long and torch.equal(ids, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        document_ids(torch.tensor([1, EOS, 2]), EOS)


# -- the model's mask --------------------------------------------------------------------


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=50, block_size=32, n_layer=2, n_head=2, d_model=32, dropout=0.0)
    return ModelConfig(**{**base, **kw})


MODELS = {
    "learned": {},
    "alibi": dict(position="alibi"),
    "rope-window": dict(position="rope", attention=AttentionConfig(window=4)),
    "relative-global": dict(position="relative", attention=AttentionConfig(window=6, global_tokens=2)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_documents_do_not_see_each_other(name, one_thread):
    torch.manual_seed(0)
    model = DecoderLM(tiny(**MODELS[name])).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(1, 50, (2, 20), generator=gen)  # (B, T), no EOS yet
    x[0, 7], x[1, 3] = EOS, EOS  # row 0: document 1 is 0..7; row 1: 0..3
    changed = x.clone()
    changed[0, 2], changed[1, 1] = (changed[0, 2] % 49) + 1, (changed[1, 1] % 49) + 1  # a token of document 1
    later = document_ids(x, EOS) >= 1  # (B, T): positions after the first document
    with torch.no_grad():
        masked = model(x, document_ids=document_ids(x, EOS))  # (B, T, V)
        masked_changed = model(changed, document_ids=document_ids(changed, EOS))
        plain, plain_changed = model(x), model(changed)
    assert torch.equal(masked[later], masked_changed[later])
    assert not torch.equal(plain[later], plain_changed[later])  # without the mask, document 1 leaks
    assert not torch.equal(masked[~later], masked_changed[~later])  # document 1 itself did change
    one_doc = torch.zeros_like(x)  # one document per row: the mask is plain causal attention
    torch.testing.assert_close(model(x, document_ids=one_doc), plain, rtol=0, atol=1e-6)


def test_document_ids_refused_outside_training_windows():
    model = DecoderLM(tiny())
    x = torch.randint(1, 50, (2, 6))
    ids = document_ids(x, EOS)
    with pytest.raises(ValueError, match="cache"):
        model(x, document_ids=ids, cache=model.make_cache())
    with pytest.raises(ValueError, match="attention_mask"):
        model(x, document_ids=ids, attention_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(x, document_ids=ids[:, :5])
    with pytest.raises(ValueError, match="mixer=linear"):
        DecoderLM(tiny(mixer="linear"))(x, document_ids=ids)


# -- objective and training ----------------------------------------------------------------


def test_clm_batch_carries_document_ids(tiny_cfg):
    cfg = tiny_cfg(**{"train.document_mask": "true"})
    assert cfg.train.document_mask is True

    class Tok:  # the objective reads eos_id only
        eos_id = EOS

    objective = build_objective(cfg, Tok())
    x = torch.tensor([[3, EOS, 4, 5], [6, 7, EOS, 8]])
    batch = objective.make_batch(x, x, torch.Generator())
    assert batch.kwargs["document_ids"].tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]
    half = _rows(batch, slice(1, 2))  # a process's rows under DDP: the ids follow
    assert half.kwargs["document_ids"].tolist() == [[0, 0, 0, 1]] and half.labels.tolist() == [[6, 7, EOS, 8]]
    assert build_objective(tiny_cfg(), Tok()).make_batch(x, x, torch.Generator()).kwargs == {}
    assert isinstance(batch.to("cpu"), ObjectiveBatch) and "document_ids" in batch.to("cpu").kwargs

    class NoEos:
        eos_id = None

    with pytest.raises(ConfigError, match="train.document_mask"):
        CausalLM(NoEos(), document_mask=True)


@pytest.fixture(scope="module")
def short_docs(tmp_path_factory, small_corpus):
    """A directory of 300 short documents (~50 tokens each): most 32-token windows span two or three."""
    folder = tmp_path_factory.mktemp("short-docs")
    text = small_corpus.read_text()
    for i in range(300):
        (folder / f"{i:03d}.txt").write_text(text[i * 200:(i + 1) * 200])
    return folder


def curve(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_training_with_document_mask(tiny_cfg, tmp_path, short_docs, one_thread):
    # fp32: the run's validation is recomputed below without autocast and compared at rel 1e-6
    extra = {"train.max_steps": 12, "train.eval_every": 6, "data.source": str(short_docs), "train.dtype": "float32"}
    cfg = tiny_cfg(tmp_path / "doc", **extra, **{"train.document_mask": "true"})
    masked = train(cfg, progress=False, log=lambda s: None)
    plain = train(tiny_cfg(tmp_path / "plain", **extra), progress=False, log=lambda s: None)
    losses = curve(tmp_path / "doc")
    assert sum(losses[-3:]) < sum(losses[:3])
    assert losses != curve(tmp_path / "plain") and masked["val_loss"] != plain["val_loss"]

    # validation masks documents as training does: the run's val loss is the masked one
    model, _ = load_model(tmp_path / "doc")
    data = prepare(cfg.data, progress=False)
    objective = build_objective(cfg, data.tokenizer)
    kw = dict(batch_size=4, seq_len=32, max_batches=2)
    val = objective.evaluate(model, data, **kw)["loss"]
    assert val == pytest.approx(masked["val_loss"], rel=1e-6)
    assert Objective.evaluate(objective, model, data, **kw)["loss"] == pytest.approx(val, rel=1e-6)  # = make_batch
    assert build_objective(tiny_cfg(), data.tokenizer).evaluate(model, data, **kw)["loss"] != pytest.approx(val)
    assert not model.training  # the evaluation wrapper restored the mode it found
    saved = yaml.safe_load((tmp_path / "doc" / "config.yaml").read_text())
    assert saved["train"]["document_mask"] is True
    assert config.from_dict(config.Config, saved).train.document_mask is True


def test_document_mask_config_errors(tiny_cfg, one_line_error, capsys, tiny_overrides, tmp_path):
    from attnlab.cli import main

    code = main(["train", "bert-tiny", *tiny_overrides(tmp_path / "bert", **{"train.document_mask": "true"})])
    line = one_line_error(capsys, code, "train.document_mask")
    assert "train.document_mask=false" in line
    with pytest.raises(ConfigError, match="train.document_mask.*objective=mlm"):
        tiny_cfg(**{"train.document_mask": "true", "train.objective": "mlm"})
    with pytest.raises(ConfigError, match="mixer=linear"):
        train(tiny_cfg(**{"train.document_mask": "true", "model.mixer": "linear"}), progress=False)
