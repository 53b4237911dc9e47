"""Every architecture pretrains through loop.train with its objective: clm, mlm, span."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from attnlab import config
from attnlab.data import IGNORE_INDEX, Tokenizer
from attnlab.data.dataset import seeded_generator
from attnlab.errors import AttnlabError, ConfigError
from attnlab.train import load_model, train
from attnlab.train.objectives import (
    MASK_TOKEN,
    N_SENTINELS,
    CausalLM,
    MaskedLM,
    SpanCorruption,
    build_objective,
    sentinel_token,
    token_loss,
)

pytestmark = pytest.mark.slow

# Shrunk presets: 2 layers of width 48 (1 decoder layer for the encoder-decoders), 32-token windows.
SHRINK = {"model.n_layer": 2, "model.d_model": 48, "model.n_head": 2, "model.d_ff": 96, "model.dropout": 0.0,
          "train.batch_size": 8, "train.seq_len": 32, "train.max_steps": 30, "train.warmup_steps": 3,
          "train.lr": 3e-3, "train.min_lr": 3e-4, "train.eval_batches": 2, "train.log_every": 1}
SEQ2SEQ = {"model.n_decoder_layer": 1}
PRESETS = {"gpt-tiny": ("clm", {}), "bert-tiny": ("mlm", {}), "t5-tiny": ("span", SEQ2SEQ),
           "transformer-base-tiny": ("span", SEQ2SEQ)}


def quiet(s):
    pass


def losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture
def preset_cfg(tmp_path, tiny_overrides):
    def make(preset, out="run", **extra):
        return config.load(preset, tiny_overrides(tmp_path / out, **{**SHRINK, **PRESETS[preset][1], **extra}))

    return make


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_architecture_trains_with_its_objective(preset, preset_cfg, tmp_path):
    objective = PRESETS[preset][0]
    cfg = preset_cfg(preset)
    s = train(cfg, progress=False, log=quiet)
    assert s["objective"] == objective and s["step"] == 30
    curve = losses(tmp_path / "run")
    assert sum(curve[-5:]) / 5 < curve[0] - 0.4, curve  # falls clearly below the ~ln(V) start
    assert s["val_loss"] < curve[0]
    assert ("val_ppl" in s) == ("val_bpb" in s) == (objective == "clm")  # perplexity only for next-token loss
    val = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert val[-1]["objective"] == objective and ("val_ppl" in val[-1]) == (objective == "clm")

    # The checkpoint carries the tokenizer with the objective's extra tokens and the model sized for it.
    model, ckpt = load_model(tmp_path / "run")
    tok = Tokenizer.load(ckpt.tokenizer_file)
    assert ckpt.config.model.vocab_size == tok.vocab_size == model_vocab(model)
    text_vocab = tok.vocab_size - {"clm": 0, "mlm": 1, "span": N_SENTINELS}[objective]
    if objective == "mlm":
        assert tok.token_id(MASK_TOKEN) == text_vocab
    if objective == "span":
        assert tok.token_id(sentinel_token(0)) == tok.vocab_size - 1  # <|extra_id_0|> is the highest id
        assert tok.token_id(sentinel_token(N_SENTINELS - 1)) == text_vocab
        assert tok.decode([tok.token_id(sentinel_token(0))]) == "<|extra_id_0|>"


def model_vocab(model: nn.Module) -> int:
    return max(m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding))


def test_encoder_resume_is_bit_exact(preset_cfg, tmp_path):
    extra = {"model.dropout": 0.1, "train.max_steps": 10, "train.ckpt_every": 4, "train.grad_accum": 2}
    run = tmp_path / "run"
    train(preset_cfg("bert-tiny", **extra), progress=False, log=quiet)
    reference = losses(run)
    final = load_file(str(run / "checkpoints" / "step_0000010" / "model.safetensors"))
    # Pretend the run died after step 8: drop the last checkpoint and point 'latest' back.
    shutil.rmtree(run / "checkpoints" / "step_0000010")
    (run / "checkpoints" / "latest").write_text("step_0000008\n")
    train(preset_cfg("bert-tiny", **extra), resume=True, progress=False, log=quiet)
    assert losses(run) == reference  # steps 9-10 recomputed with the same masks, dropout and batches
    resumed = load_file(str(run / "checkpoints" / "step_0000010" / "model.safetensors"))
    assert all(torch.equal(final[k], resumed[k]) for k in final)


@pytest.mark.parametrize("preset, objective, arch", [
    ("gpt-tiny", "mlm", "decoder"), ("gpt-tiny", "span", "decoder"), ("bert-tiny", "span", "encoder"),
    ("bert-tiny", "clm", "encoder"), ("t5-tiny", "mlm", "encoder_decoder"), ("t5-tiny", "clm", "encoder_decoder"),
])
def test_objective_that_does_not_fit_the_arch_is_refused(preset, objective, arch, preset_cfg, tmp_path):
    cfg = preset_cfg(preset, **{"train.objective": objective})
    with pytest.raises(ConfigError, match=f"train.objective={objective} needs model.arch=.*but model.arch={arch}"):
        train(cfg, progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


def test_vocab_too_small_for_the_extra_tokens(preset_cfg):
    cfg = preset_cfg("bert-tiny", **{"model.vocab_size": 512})  # the bpe:512 text tokens, no room for <|mask|>
    with pytest.raises(AttnlabError, match=r"smaller than the tokenizer's 513 tokens \(1 of them added by the mlm"):
        train(cfg, progress=False, log=quiet)


def test_span_settings_needing_too_many_sentinels(preset_cfg):
    cfg = preset_cfg("t5-tiny", **{"model.block_size": 1024, "train.seq_len": 1024, "train.span_mean_length": 1.0})
    with pytest.raises(ConfigError, match="more than the 99 sentinels allow"):
        build_objective(cfg, Tokenizer.train_bpe(["a b c"], 300))


# ---------------------------------------------------------------------------- objectives on their own


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe(["to be or not to be, that is the question " * 20], 300)


def test_extra_tokens_appended_after_the_text_vocabulary(tok):
    mlm, span = MaskedLM(tok), SpanCorruption(tok)
    v = tok.vocab_size
    assert mlm.tokenizer.vocab_size == v + 1 and mlm.mask_id == v and tok.vocab_size == v  # original untouched
    assert span.tokenizer.vocab_size == v + N_SENTINELS
    assert span.sentinel_ids == list(range(v + N_SENTINELS - 1, v - 1, -1))
    again = MaskedLM(mlm.tokenizer)  # a tokenizer that already has <|mask|> keeps its id
    assert again.mask_id == v and again.tokenizer.vocab_size == v + 1
    assert CausalLM(tok).tokenizer is tok


def test_mlm_batch(tok):
    mlm = MaskedLM(tok, mlm_probability=0.3)
    x = torch.randint(1, tok.vocab_size, (16, 64))
    x[:, ::7] = tok.eos_id
    batch = mlm.make_batch(x, x, seeded_generator(1, "t"))
    (inputs,), labels = batch.inputs, batch.labels
    picked = labels != IGNORE_INDEX
    assert torch.equal(labels[picked], x[picked]) and not (x[picked] == tok.eos_id).any()
    assert abs(picked.float().mean().item() - 0.3 * 6 / 7) < 0.04
    assert (inputs[picked] == mlm.mask_id).float().mean() > 0.7 and not (inputs[~picked] == mlm.mask_id).any()


def test_span_batch_teacher_forcing(tok):
    span = SpanCorruption(tok, decoder_start_id=7)
    x = torch.randint(1, tok.vocab_size, (4, 32))
    batch = span.make_batch(x, x, seeded_generator(1, "t"))
    enc, dec = batch.inputs
    assert enc.shape == (4, 32 - 5 + 2 + 1) and batch.labels.shape == (4, 5 + 2 + 2)
    assert (dec[:, 0] == 7).all() and torch.equal(dec[:, 1:], batch.labels[:, :-1])
    assert (batch.labels[:, 0] == span.sentinel_ids[0]).all() and (batch.labels[:, -1] == tok.eos_id).all()


class Fixed(nn.Module):
    """A stand-in model returning given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, *inputs):
        return self.logits


def test_label_smoothing():
    v, eps = 10, 0.1
    labels = torch.tensor([[3, 1, IGNORE_INDEX]])
    uniform = torch.zeros(1, 3, v)
    for ls in (0.0, eps):
        torch.testing.assert_close(token_loss(uniform, labels, ls), torch.tensor(v * 1.0).log())
    confident = torch.full((1, 3, v), -10.0)
    confident[0, 0, 3] = confident[0, 1, 1] = 10.0
    plain, smooth = token_loss(confident, labels), token_loss(confident, labels, eps)
    logp = confident.log_softmax(-1)[0, :2]  # (2, V): the two counted positions
    expected = ((1 - eps) * -logp[[0, 1], [3, 1]] + eps * -logp.mean(-1)).mean()
    assert plain < 1e-6 and smooth > 1.0
    torch.testing.assert_close(smooth, expected)
    # The objective's loss is the smoothed one; validation is the plain NLL.
    clm = CausalLM(Tokenizer.train_bpe(["ab"], 300), label_smoothing=eps)
    batch = clm.make_batch(torch.zeros(1, 3, dtype=torch.long), labels, seeded_generator(0))
    torch.testing.assert_close(clm.loss(Fixed(confident), batch), expected)
    assert token_loss(confident, torch.full_like(labels, IGNORE_INDEX)) == 0  # nothing to predict: 0, not NaN
