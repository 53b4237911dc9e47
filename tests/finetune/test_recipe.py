"""Recipe loading: typed sections, overrides, lists, the model section and one-line errors."""

from __future__ import annotations

import json

import pytest

from attnlab.config import preset_dir
from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune import load_finetune_config, run
from attnlab.finetune.init import load_backbone
from attnlab.finetune.recipe import finetune_config_from_dict

OURS = ["sentiment-bow", "sentiment-scratch", "sentiment-minilm", "sentiment-minilm-lora", "lm-adapt"]


@pytest.mark.parametrize("name", OURS)
def test_shipped_recipes_load(name):
    cfg = load_finetune_config(name)
    assert cfg.task in ("classify", "lm")
    assert (preset_dir() / "finetune" / f"{name}.yaml").is_file()
    if cfg.task == "classify":
        assert cfg.data.train == "data/sentiment/train.jsonl" and cfg.data.test == "data/sentiment/test.jsonl"
    assert load_finetune_config(preset_dir() / "finetune" / f"{name}.yaml", cfg.task) == cfg


def test_overrides_lists_and_model_section():
    cfg = load_finetune_config("sentiment-minilm-lora", "classify",
                               ["lora.targets=q", "options.labels=[0, 1]", "train.lr=3e-4", "init=hf:/x"])
    assert cfg.lora.targets == ["q"] and cfg.options.labels == ["0", "1"] and cfg.train.lr == 3e-4
    cfg = load_finetune_config("sentiment-scratch", "classify", ["model.n_layer=1", "model.attention.window=8"])
    assert cfg.model == {"n_layer": 1, "attention": {"window": 8}}
    bb = load_backbone(cfg.init, cfg.model)
    assert bb.config.n_layer == 1 and bb.config.attention.window == 8 and bb.config.d_model == 128
    # the saved form reads back the same
    assert finetune_config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, message", [
    (["options.text_colum=x"], "unknown config key 'options.text_colum' (did you mean 'text_column'?)"),
    (["trian.lr=1"], "unknown config key 'trian' (did you mean 'train'?)"),
    (["model.n_layr=2"], "unknown config key 'model.n_layr' (did you mean 'n_layer'?)"),
    (["options.max_length=abc"], "options.max_length must be an integer"),
    (["options.pooling=max"], "options.pooling must be one of 'cls', 'mean'"),
    (["options.labels=[a, {b: c}]"], "options.labels[1] must be"),
    (["options.labels=[a, a]"], "options.labels has duplicates"),
    (["lora.targets=[q, 3]"], "lora.targets[1] must be a string"),
    (["train.batch_size=0"], "train.batch_size must be positive"),
])
def test_bad_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_finetune_config("sentiment-bow", "classify", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_task_and_recipe():
    with pytest.raises(ConfigError, match=r"unknown task 'clasify' \(did you mean 'classify'\?\)"):
        load_finetune_config("sentiment-bow", "clasify")
    with pytest.raises(ConfigError, match=r"recipe 'sentiment-bwo' not found \(did you mean 'sentiment-bow'\?\)"):
        load_finetune_config("sentiment-bwo", "classify")
    with pytest.raises(ConfigError, match="recipe is for task 'classify', not 'lm'"):
        load_finetune_config("sentiment-bow", "lm")


def test_bad_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\noptions: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_finetune_config(p)


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": f"t {i}", "label": "ab"[i % 2]}) + "\n" for i in range(20)))
    return p


def _run(data, tmp_path, recipe, *over):
    cfg = load_finetune_config(recipe, None, [f"data.train={data}", "data.val=", "data.test=",
                                              f"train.out_dir={tmp_path / 'out'}", "train.max_steps=1", *over])
    return run(cfg, progress=False, log=lambda s: None)


def test_missing_init_says_how_to_give_it(data, tmp_path):
    with pytest.raises(ConfigError, match=r"init is not set; use hf:DIR.*init=hf:"):
        _run(data, tmp_path, "sentiment-minilm")
    with pytest.raises(AttnlabError, match="is not a directory"):
        _run(data, tmp_path, "sentiment-minilm", f"init=hf:{tmp_path / 'nope'}")
    with pytest.raises(AttnlabError, match="init '.*nope' not found"):
        _run(data, tmp_path, "sentiment-minilm", f"init={tmp_path / 'nope'}")


def test_missing_and_bad_data_files(data, tmp_path):
    with pytest.raises(AttnlabError, match="data file '.*missing.jsonl' not found"):
        _run(tmp_path / "missing.jsonl", tmp_path, "sentiment-bow")
    with pytest.raises(ConfigError, match="data.train is not set"):
        _run("", tmp_path, "sentiment-bow")
    with pytest.raises(AttnlabError, match=r"record 0 has no column 'review' \(columns: text, label\)"):
        _run(data, tmp_path, "sentiment-bow", "options.text_column=review")


def test_existing_run_folder_is_not_overwritten(data, tmp_path):
    res = _run(data, tmp_path, "sentiment-bow")
    assert res["best_step"] == 1 and (tmp_path / "out" / "results.json").is_file()
    with pytest.raises(AttnlabError, match="already holds a fine-tuning run"):
        _run(data, tmp_path, "sentiment-bow")


def test_epoch_batches_partition_and_bucket():
    from attnlab.finetune.trainer import epoch_batches

    plain = epoch_batches(10, 4, seed=3, epoch=0)
    assert [len(b) for b in plain] == [4, 4, 2] and sorted(sum(plain, [])) == list(range(10))
    assert plain == epoch_batches(10, 4, seed=3, epoch=0) != epoch_batches(10, 4, seed=3, epoch=1)
    lengths = [i % 7 for i in range(700)]
    bucketed = epoch_batches(700, 10, seed=0, epoch=0, lengths=lengths)
    assert sorted(sum(bucketed, [])) == list(range(700))
    assert sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bucketed) <= 2 * len(bucketed)
    starts = [min(b) for b in bucketed]
    assert starts != sorted(starts)  # batch order is shuffled
