"""The gpt2-124m-32k preset: it builds, and a shrunk copy trains through the windowed attention path."""

import math

import torch

from attnlab.attention import dispatch_log
from attnlab.config import load
from attnlab.models import build
from attnlab.train.objectives import token_loss
from attnlab.train.optim import build_optimizer

T, WINDOW, LAYERS = 2048, 256, 2


def _shrunk(window=WINDOW):
    overrides = [f"model.n_layer={LAYERS}", "model.d_model=64", "model.n_head=2", "model.vocab_size=256",
                 f"model.block_size={T}", f"model.attention.window={'null' if window is None else window}",
                 f"train.seq_len={T}"]
    return load("gpt2-124m-32k", overrides)


def _tokens(seed=0):
    return torch.randint(0, 256, (1, T + 1), generator=torch.Generator().manual_seed(seed))  # (1, T + 1)


def test_preset_is_gpt2_small_at_32k_with_rope_and_a_window():
    cfg = load("gpt2-124m-32k")
    base = load("gpt2-124m")
    m = cfg.model
    assert (m.block_size, m.position, m.attention.window, m.attention.backend) == (32768, "rope", 1024, "auto")
    assert (cfg.train.batch_size, cfg.train.seq_len, cfg.train.compile, cfg.train.dtype) == (1, 32768, True, "auto")
    for name in ("vocab_size", "n_layer", "n_head", "d_model", "norm", "mlp", "bias", "tie_embeddings"):
        assert getattr(m, name) == getattr(base.model, name), name
    with torch.device("meta"):  # count without allocating 0.5 GB
        n, n_base = build(cfg).num_params(), build(base).num_params()
    assert n_base == 124_439_808
    assert n == n_base - 1024 * 768 == 123_653_376  # RoPE: no position table


def test_shrunk_copy_trains_one_step_on_the_windowed_path(one_thread):
    cfg = _shrunk()
    torch.manual_seed(0)
    model = build(cfg)
    opt = build_optimizer(model, cfg.train, "cpu")
    w = _tokens()
    dispatch_log(clear=True)
    loss = token_loss(model(w[:, :-1]), w[:, 1:])
    loss.backward()
    ran = {r["backend"] for r in dispatch_log(clear=True) if r["q_shape"][-2] == T}
    assert ran == {"chunked"}  # a window, long, with gradients on CPU: auto's blockwise path
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(256)) < 0.5
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=False))


def _last_logits(model, x):
    return model(x)[0, -1].detach()  # (V,), with gradients on: the training path


def test_window_hides_tokens_beyond_its_reach(one_thread):
    torch.manual_seed(0)
    windowed = build(_shrunk().model)
    full = build(_shrunk(window=None).model)
    full.load_state_dict(windowed.state_dict())
    x = _tokens()[:, :-1]  # (1, T)
    reach = LAYERS * (WINDOW - 1)  # the last token sees this far back through the layers
    far, near = T - 1 - reach - 1, T - 1 - WINDOW // 2

    def change(model, pos):  # max |Δ logits| of the last token when the token at pos changes
        y = x.clone()
        y[0, pos] = (y[0, pos] + 1) % 256
        return (_last_logits(model, x) - _last_logits(model, y)).abs().max().item()

    assert change(windowed, far) == 0.0 and change(windowed, 0) == 0.0  # exactly: masked keys weigh 0
    assert change(windowed, far + 1) > 0  # the first position within reach
    assert change(windowed, near) > 1e-3
    assert change(windowed, T - 1 - WINDOW - 10) > 0  # out of the last layer's window, within its reach
    assert change(full, far) > 1e-5 and change(full, 0) > 1e-5  # each far key weighs ~1/T at init
