import pytest

from attnlab import config
from attnlab.config import Config, ConfigError, ModelConfig


def test_presets_load_and_validate():
    names = config.list_presets()
    assert {"gpt-tiny", "gpt2-124m"} <= set(names)
    for name in names:
        cfg = config.load(name)
        assert isinstance(cfg, Config)
        assert isinstance(cfg.model, ModelConfig)


def test_overrides_apply_with_types():
    cfg = config.load("gpt-tiny", ["train.max_steps=7", "model.n_layer=2", "train.lr=3e-4", "model.n_kv_head=null"])
    assert cfg.train.max_steps == 7 and cfg.model.n_layer == 2
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.n_kv_head is None


def test_int_accepted_for_float():
    assert config.load(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.max_step=3", "unknown config key 'train.max_step' (did you mean 'max_steps'?)"),
        ("modle.n_layer=3", "unknown config key 'modle' (did you mean 'model'?)"),
        ("train.max_steps=abc", "train.max_steps must be an integer, got 'abc'"),
        ("model.norm=batchnorm", "model.norm must be one of"),
        ("train.compile=3", "train.compile must be true or false"),
        ("model.n_head=5", "not divisible by model.n_head=5"),
        ("model.n_kv_head=3", "model.n_kv_head=3 must divide model.n_head=4"),
        ("train.max_steps", "must look like section.key=value"),
        ("data.val_fraction=0.9", "data.val_fraction must be in (0, 0.5)"),
    ],
)
def test_bad_overrides_name_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        config.load("gpt-tiny", [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="did you mean 'gpt-tiny'"):
        config.load("gpt-tiyn")


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(p)


def test_roundtrip_through_yaml(tmp_path):
    cfg = config.load("gpt-tiny", ["model.mlp=swiglu", "model.position=rope"])
    cfg.save(tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg


def test_derived_sizes():
    m = ModelConfig(d_model=768, n_head=12)
    assert m.head_dim == 64 and m.kv_heads == 12 and m.ff_dim == 3072
    assert ModelConfig(d_model=768, n_head=12, mlp="swiglu").ff_dim == 2048
    assert ModelConfig(d_model=64, n_head=4, n_kv_head=1).kv_heads == 1


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.attention.window=0"], "model.attention.window must be positive"),
        (["model.attention.global_tokens=4"], "global_tokens needs model.attention.window"),
        (["model.mixer=linear", "model.attention.window=16"], "model.attention.window acts on softmax scores"),
        (["model.mixer=linear", "model.position=alibi"], "model.position=alibi acts on softmax scores"),
        (["model.rope_scaling=linear"], "model.rope_scaling needs model.position=rope"),
        (["model.attention.backnd=eager"], "unknown config key 'model.attention.backnd' (did you mean 'backend'?)"),
    ],
)
def test_attention_section_validation(overrides, needle):
    with pytest.raises(ConfigError) as e:
        config.load("gpt-tiny", overrides)
    assert needle in str(e.value)


def test_attention_section_parses():
    cfg = config.load("gpt-tiny", ["model.attention.window=64", "model.attention.global_tokens=2",
                                   "model.attention.backend=eager", "model.position=alibi"])
    assert cfg.model.attention.window == 64 and cfg.model.attention.global_tokens == 2
    assert cfg.model.attention.backend == "eager" and cfg.model.position == "alibi"


def test_embed_scale_is_refused_outside_encoder_decoders():
    from attnlab.config import ModelConfig
    from attnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="embed_scale applies to model.arch=encoder_decoder only"):
        ModelConfig(arch="encoder", embed_scale=True)
    assert ModelConfig(arch="encoder_decoder", embed_scale=True).embed_scale
