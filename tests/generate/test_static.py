"""The fast decode path: a static (preallocated) KV cache and a compiled decode step (attnlab.generate.fast)."""

from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

import attnlab.cli._common as common
from attnlab import config
from attnlab.attention.cache import StaticKVCache
from attnlab.cli import main
from attnlab.generate import FastDecoder, fast_generate, generate, stream
from attnlab.models import build
from attnlab.models.rnn import RNNLanguageModel, RNNLMConfig

VOCAB = 37
SMALL = ["model.block_size=64", "model.n_layer=2", "model.d_model=32", "model.dropout=0.0", f"model.vocab_size={VOCAB}"]
VARIANTS = {  # name: (preset, extra overrides)
    "gpt": ("gpt-tiny", ["model.n_head=2"]),  # learned positions, causal
    "llama": ("llama-tiny", ["model.n_head=4", "model.n_kv_head=2"]),  # RoPE, GQA, RMSNorm, SwiGLU
    "window": ("gpt-tiny-window", ["model.n_head=2", "model.attention.window=4", "model.attention.global_tokens=2"]),
    "relative-softcap": ("gpt-tiny", ["model.n_head=2", "model.position=relative", "model.attention.softcap=5.0"]),
}


def make(variant: str, seed: int = 0, **extra) -> torch.nn.Module:
    preset, overrides = VARIANTS[variant]
    torch.manual_seed(seed)
    more = [f"model.{k}={v}" for k, v in extra.items()]
    return build(config.load(preset, SMALL + overrides + more)).eval()


def prompt(batch: int = 2, length: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_static_cache_logits_match_dynamic_cache_and_no_cache(variant):
    model, ids = make(variant), prompt()
    static, dynamic = model.make_static_cache(2, 20), model.make_cache()
    seq = ids
    with torch.no_grad():
        new = ids
        for step in range(8):  # prefill, then 7 one-token steps (past the window of 4)
            s, d = model(new, cache=static)[:, -1], model(new, cache=dynamic)[:, -1]
            full = model(seq)[:, -1]
            assert (s - d).abs().max() <= 1e-5, step
            assert (s - full).abs().max() <= 1e-5, step
            new = s.argmax(-1, keepdim=True)
            seq = torch.cat((seq, new), dim=1)
    assert static.length == seq.shape[1] - 1 == dynamic.length


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_eager_static_path_gives_the_greedy_tokens_of_generate(variant):
    model, ids = make(variant), prompt()
    expected = generate(model, ids, 12, temperature=0.0)
    out = fast_generate(model, ids, 12, temperature=0.0, compile=False)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("variant", ["llama", "window"])
def test_left_padded_rows_decode_as_if_alone(variant):
    model = make(variant, **{"attention.global_tokens": 0} if variant == "window" else {})
    short, long = prompt(1, 3, seed=2), prompt(1, 6, seed=3)
    ids = torch.cat((torch.cat((torch.zeros(1, 3, dtype=torch.long), short), dim=1), long))  # (2, 6) left-padded
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    out = fast_generate(model, ids, 10, temperature=0.0, attention_mask=mask, compile=False)
    assert torch.equal(out[0, 3:], generate(model, short, 10, temperature=0.0)[0])
    assert torch.equal(out[1], generate(model, long, 10, temperature=0.0)[0])
    assert torch.equal(out, generate(model, ids, 10, temperature=0.0, attention_mask=mask))


def test_sampling_and_eos_follow_generate():
    model, ids = make("gpt"), prompt()
    kw = dict(temperature=0.9, top_k=10, top_p=0.9, seed=5, repetition_penalty=1.3)
    assert torch.equal(fast_generate(model, ids, 10, compile=False, **kw), generate(model, ids, 10, **kw))
    greedy = generate(model, ids, 10, temperature=0.0)
    eos = int(greedy[0, 7])  # the first row meets it: it is padded with eos after that
    assert torch.equal(fast_generate(model, ids, 10, temperature=0.0, eos_token_id=eos, compile=False),
                       generate(model, ids, 10, temperature=0.0, eos_token_id=eos))


def test_generate_and_stream_take_a_fast_decoder():
    model, ids = make("gpt"), prompt()
    dec = FastDecoder(model, batch_size=2, max_len=20, compile=False)
    want = generate(model, ids, 8, temperature=0.0)
    assert torch.equal(generate(model, ids, 8, temperature=0.0, decoder=dec), want)
    assert torch.equal(torch.stack(list(stream(model, ids, 8, temperature=0.0, decoder=dec)), dim=1), want[:, 5:])
    with pytest.raises(ValueError, match="does not run beam search"):
        generate(model, ids, 8, num_beams=2, decoder=dec)
    with pytest.raises(ValueError, match="FastDecoder of another model"):
        generate(make("gpt", seed=1), ids, 8, decoder=dec)


def test_reorder_keeps_rows_like_the_dynamic_cache():
    model, ids = make("llama"), prompt(3)
    static, dynamic = model.make_static_cache(3, 10), model.make_cache()
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        model(ids, cache=static), model(ids, cache=dynamic)
        static.reorder(index), dynamic.reorder(index)
        nxt = prompt(3, 1, seed=4)
        assert (model(nxt, cache=static) - model(nxt, cache=dynamic)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="keeps its 3 rows"):
        static.reorder(torch.tensor([0, 1]))


def test_unsupported_models_and_misuse_are_refused():
    linear = make("gpt", mixer="linear")
    with pytest.raises(ValueError, match="mixer=linear"):
        FastDecoder(linear, batch_size=1, max_len=8, compile=False)
    rnn = RNNLanguageModel(RNNLMConfig(VOCAB, d_emb=8, d_hidden=8, n_layers=1, block_size=16))
    with pytest.raises(ValueError, match="no static KV cache"):
        fast_generate(rnn, prompt(), 2)
    pytest.importorskip("attnlab.models.seq2seq")
    t5 = build(config.load("t5-tiny", SMALL + ["model.n_head=2", "model.d_ff=32", "model.n_decoder_layer=1"]))
    with pytest.raises(ValueError, match="decoder-only"):
        fast_generate(t5, prompt(), 2)
    model = make("gpt")
    with pytest.raises(ValueError, match="max_len 65"):
        model.make_static_cache(1, 65)
    dec = FastDecoder(model, batch_size=2, max_len=7, compile=False)
    with pytest.raises(ValueError, match="B = 2"):
        dec.prefill(prompt(1))
    with pytest.raises(ValueError, match="prefill"):
        dec.decode_step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len=7"):
        dec.generate(prompt(2, 5), 4)
    dec.prefill(prompt(2, 6))
    dec.decode_step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="cache is full"):
        dec.decode_step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not fit"):
        model(prompt(2, 1), cache=dec.cache)


# -- compiled (once, on the smallest model) ---------------------------------------------


@pytest.fixture(scope="module")
def compiled():
    """A compiled FastDecoder (batch 2) on a 1-layer model, and the model."""
    model = make("gpt", n_layer=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield FastDecoder(model, batch_size=2, max_len=24), model
    torch.set_num_threads(threads)


def test_compiled_step_matches_eager_and_compiles_once(compiled):
    dec, model = compiled
    graphs = counters["stats"]["unique_graphs"]
    for seed in (1, 2):  # two prompts: the second reuses the compiled step
        ids = prompt(seed=seed)
        assert torch.equal(dec.generate(ids, 12, temperature=0.0), generate(model, ids, 12, temperature=0.0))
    assert dec.path == "static-cache+compile(default)"
    assert dec.compiles == 1  # 22 decode steps at 22 positions, one graph
    assert counters["stats"]["unique_graphs"] - graphs == 1


def test_compiled_step_with_left_padding(compiled):
    dec, model = compiled
    short, long = prompt(1, 2, seed=6), prompt(1, 5, seed=7)
    ids = torch.cat((torch.cat((torch.ones(1, 3, dtype=torch.long), short), dim=1), long))
    mask = torch.tensor([[0, 0, 0, 1, 1], [1] * 5])
    out = dec.generate(ids, 9, temperature=0.0, attention_mask=mask)
    assert torch.equal(out[0, 3:], generate(model, short, 9, temperature=0.0)[0])
    assert torch.equal(out[1], generate(model, long, 9, temperature=0.0)[0])
    assert dec.compiles == 1


def test_recompile_limit_is_an_error_not_a_silent_eager_fallback(compiled):
    dec, model = compiled
    dec.generate(prompt(), 2, temperature=0.0)  # the step's code holds dec's graph
    other = FastDecoder(model, batch_size=1, max_len=8)  # needs a second graph for the same code
    with torch._dynamo.config.patch(recompile_limit=1), pytest.raises(RuntimeError, match="recompile_limit=1"):
        other.generate(prompt(1), 3, temperature=0.0)


def test_static_cache_is_exported():
    assert isinstance(make("gpt").make_static_cache(1, 4), StaticKVCache)


# -- CLI ----------------------------------------------------------------------------------


def test_cli_compile_prints_the_plain_greedy_text(capsys, trained_run, monkeypatch):
    # Inductor's code generation is covered above; here dynamo traces the step (fullgraph) and
    # runs it without generating kernels, to keep the test fast.
    compiled, real_compile = [], torch.compile

    def dynamo_only(fn, **kw):
        compiled.append(kw)
        return real_compile(fn, fullgraph=kw["fullgraph"], dynamic=kw["dynamic"], backend="eager")

    monkeypatch.setattr(torch, "compile", dynamo_only)
    args = ["generate", str(trained_run), "--prompt", "ROMEO.", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--compile"]) == 0
    out = capsys.readouterr()
    assert out.out == plain
    assert "decode path: static-cache+compile(default), compiled 1x" in out.err
    assert len(plain) > len("ROMEO.\n")
    assert compiled == [{"mode": "default", "fullgraph": True, "dynamic": False}]


@pytest.mark.parametrize("extra", [["--num-beams", "2"], ["--no-cache"]])
def test_cli_compile_refuses_beams_and_no_cache(capsys, trained_run, one_line_error, extra):
    code = main(["generate", str(trained_run), "--compile", *extra])
    one_line_error(capsys, code, "--compile")


def test_cli_compile_refuses_an_encoder_decoder_checkpoint(capsys, monkeypatch, one_line_error):
    pytest.importorskip("attnlab.models.seq2seq")
    cfg = config.load("t5-tiny", SMALL + ["model.n_head=2", "model.d_ff=32", "model.n_decoder_layer=1"])
    t5 = build(cfg).eval()
    tok = SimpleNamespace(encode=lambda text: [1, 2, 3], eos_id=None)
    ckpt = SimpleNamespace(config=cfg, path="t5-run")
    monkeypatch.setattr(common, "load_for_inference", lambda path, device: (t5, tok, ckpt, torch.device("cpu")))
    code = main(["generate", "t5-run", "--compile", "--max-new-tokens", "4"])
    one_line_error(capsys, code, "decoder-only")
