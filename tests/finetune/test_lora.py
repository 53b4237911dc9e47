"""LoRA injection: exactness at init, frozen base, merge/unmerge, adapters on disk."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from attnlab.config import ModelConfig
from attnlab.errors import CheckpointError, ConfigError
from attnlab.finetune import (
    LoRAConfig,
    LoRALinear,
    base_fingerprint,
    count_parameters,
    inject_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    parameter_summary,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from attnlab.models import DecoderLM

V, T, L, D = 97, 16, 2, 32


def tiny(seed: int = 0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=T, n_layer=L, n_head=4, d_model=D, bias=True, tie_embeddings=True)
    cfg.update(kw)
    return DecoderLM(ModelConfig(**cfg)).eval()


def ids(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (2, 12), generator=g)


def randomize_b(model: nn.Module, seed: int = 3) -> None:
    """Give every adapter a non-zero update, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def train_steps(model: nn.Module, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = ids(5)
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_config_validation():
    for bad in (dict(rank=0), dict(rank=2.5), dict(alpha=0), dict(dropout=1.0), dict(targets=[]),
                dict(targets=["re:("]), dict(targets=[""])):
        with pytest.raises(ConfigError, match="lora"):
            LoRAConfig(**bad)
    assert LoRAConfig(targets="q").targets == ["q"]
    assert LoRAConfig(rank=4, alpha=8).scale == 2.0


def test_injection_leaves_outputs_unchanged_and_ties_intact():
    model, ref = tiny(), tiny()
    names = inject_lora(model, LoRAConfig())
    assert names == [f"blocks.{i}.attn.{p}" for i in range(L) for p in ("q_proj", "v_proj")]
    assert torch.equal(model(ids()), ref(ids()))
    assert model.lm_head.weight is model.tok_emb.weight
    # the base names are kept, so a base checkpoint still loads into the injected model
    base_keys = set(ref.state_dict())
    assert base_keys <= set(model.state_dict())
    assert {k for k in model.state_dict() if k not in base_keys} == {f"{n}.lora_{x}" for n in names for x in "AB"}


def test_only_adapters_get_grads_and_change():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, LoRAConfig(rank=4, targets=["q", "v"]))
    lora_b0 = {n: m.lora_B.detach().clone() for n, m in lora_modules(model)}
    model.train()
    x = ids(5)
    loss = nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    model.zero_grad()
    train_steps(model, 3)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"base tensor {k} changed"
    for n, m in lora_modules(model):
        assert not torch.equal(m.lora_B, lora_b0[n]), f"{n}.lora_B did not train"
    assert model.lm_head.weight is model.tok_emb.weight


def test_trainable_extra_keeps_head_trainable_and_tied():
    model = tiny()
    inject_lora(model, LoRAConfig(rank=2), trainable_extra=["lm_head"])
    assert model.lm_head.weight.requires_grad and model.lm_head.weight is model.tok_emb.weight
    assert count_parameters(model)[0] == V * D + L * 2 * 2 * (2 * D)
    with pytest.raises(ConfigError, match="matched no module"):
        inject_lora(tiny(), LoRAConfig(), trainable_extra=["classifier"])


def test_counts_match_hand_computation():
    model = tiny()
    per_block = 2 * 2 * D + 4 * (D * D + D) + (D * 4 * D + 4 * D) + (4 * D * D + D)  # 2 LNs, q/k/v/o, up, down
    total = V * D + T * D + L * per_block + 2 * D  # tied embedding/head, learned positions, final LN
    assert count_parameters(model) == (total, total)
    r = 8
    inject_lora(model, LoRAConfig(rank=r, targets=["q", "v"]))
    lora = L * 2 * (r * D + D * r)
    assert count_parameters(model) == (lora, total + lora)
    assert parameter_summary(model) == f"trainable {lora:,} / {total + lora:,} ({100 * lora / (total + lora):.2f}%)"


def test_patterns_shorthands_regex_and_full_names():
    m = tiny(mlp="swiglu")
    got = inject_lora(m, LoRAConfig(targets=["mlp", "re:blocks\\.0\\.attn\\.[ko]_proj"]))
    mlp = [f"blocks.{i}.mlp.{p}" for i in range(L) for p in ("gate_proj", "up_proj", "down_proj")]
    assert got == ["blocks.0.attn.k_proj", "blocks.0.attn.o_proj"] + mlp
    got = inject_lora(tiny(), LoRAConfig(targets=["blocks.1.attn.*"]))
    assert got == [f"blocks.1.attn.{p}_proj" for p in "qkvo"]
    with pytest.raises(ConfigError, match="already has LoRA"):
        inject_lora(m, LoRAConfig())


def test_no_match_names_available_modules():
    with pytest.raises(ConfigError) as e:
        inject_lora(tiny(), LoRAConfig(targets=["query"]))
    msg = str(e.value)
    assert "\n" not in msg and "matched no linear layer" in msg
    assert "blocks.*.attn.q_proj" in msg and "blocks.*.mlp.up_proj" in msg and "lm_head" in msg


def test_tied_head_cannot_be_a_target():
    with pytest.raises(ConfigError, match="tied to 'tok_emb.weight'"):
        inject_lora(tiny(), LoRAConfig(targets=["lm_head"]))
    untied = tiny(tie_embeddings=False)
    assert inject_lora(untied, LoRAConfig(targets=["lm_head"])) == ["lm_head"]


def test_lora_linear_against_float64_formula_and_dropout_only_in_training():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    layer = LoRALinear(base, rank=3, alpha=6.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 5, 12)
    w, b, a, bb = (t.detach().double() for t in (base.weight, base.bias, layer.lora_A, layer.lora_B))
    ref = x.double() @ (w + 2.0 * bb @ a).T + b  # (4, 5, 10)
    layer.eval()
    torch.testing.assert_close(layer(x).double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(layer(x), layer(x))
    layer.train()
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2) and not torch.allclose(y1.double(), ref, atol=1e-3)
    layer.merge()  # merged: the delta is in the weight, forward is one matmul (no dropout)
    torch.testing.assert_close(layer(x).double(), ref, atol=1e-5, rtol=1e-5)


def test_merge_unmerge_and_remove():
    model = tiny()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, LoRAConfig(rank=4, targets=["q", "k", "v", "o", "mlp"]))
    randomize_b(model)
    x = ids()
    unmerged = model(x)
    assert not torch.allclose(unmerged, tiny()(x), atol=1e-4)  # the update does something
    assert len(merge_lora(model)) == L * 6
    assert all(m.merged for _, m in lora_modules(model))
    merged = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    for k, v in w0.items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), unmerged, atol=1e-6, rtol=0)

    plain = copy.deepcopy(model)
    remove_lora(plain, merge=True)
    assert not list(lora_modules(plain)) and isinstance(plain.blocks[0].attn.q_proj, nn.Linear)
    assert set(plain.state_dict()) == set(w0)
    torch.testing.assert_close(plain(x), merged, atol=1e-5, rtol=1e-5)
    assert plain.lm_head.weight is plain.tok_emb.weight
    restored = copy.deepcopy(model)
    remove_lora(restored, merge=False)
    for k, v in w0.items():
        torch.testing.assert_close(restored.state_dict()[k], v, atol=1e-6, rtol=0)


def test_gqa_model():
    model = tiny(n_kv_head=1, mlp="swiglu", position="rope")
    ref = copy.deepcopy(model)
    names = inject_lora(model, LoRAConfig(rank=4, targets=["q", "k", "v", "o", "mlp"]))
    assert len(names) == L * 7
    k = model.blocks[0].attn.k_proj
    assert k.lora_B.shape == (D // 4, 4) and k.lora_A.shape == (4, D)
    x = ids()
    assert torch.equal(model(x), ref(x))
    train_steps(model, 2)
    out = model(x)
    assert not torch.allclose(out, ref(x), atol=1e-4)
    merge_lora(model)
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)


def test_adapter_round_trip(tmp_path):
    cfg = LoRAConfig(rank=4, alpha=8, targets=["q", "v", "mlp"])
    model = tiny()
    inject_lora(model, cfg)
    train_steps(model, 3)
    x = ids()
    want = model(x)
    folder = save_adapter(model, tmp_path / "adapter", cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]
    meta = json.loads((folder / "adapter.json").read_text())
    assert meta["config"]["rank"] == 4 and meta["base_fingerprint"] == base_fingerprint(tiny())
    from safetensors.torch import load_file

    assert set(load_file(str(folder / "adapter.safetensors"))) == {
        f"{n}.lora_{ab}" for n, _ in lora_modules(model) for ab in "AB"
    }
    fresh = tiny()
    assert load_adapter(fresh, folder) == cfg
    assert torch.equal(fresh(x), want)
    assert count_parameters(fresh)[0] == count_parameters(model)[0]
    # onto a model already injected (and merged), and saving again over the folder
    merge_lora(fresh)
    load_adapter(fresh, folder)
    torch.testing.assert_close(fresh(x), want, atol=1e-5, rtol=1e-5)
    save_adapter(fresh, folder, cfg)
    other = tiny()
    load_adapter(other, folder)
    torch.testing.assert_close(other(x), want, atol=1e-6, rtol=0)


def test_adapter_errors(tmp_path):
    cfg = LoRAConfig(rank=2)
    model = tiny()
    inject_lora(model, cfg)
    folder = save_adapter(model, tmp_path / "a", cfg)
    with pytest.raises(CheckpointError, match="another base model") as e:
        load_adapter(tiny(d_model=48), folder)
    assert "\n" not in str(e.value) and "'blocks.0.attn.q_proj' is [32, 32] there, [48, 48] here" in str(e.value)
    with pytest.raises(CheckpointError, match="another base model"):  # same targets, other architecture
        load_adapter(tiny(n_layer=3), folder)
    with pytest.raises(CheckpointError, match="not found"):
        load_adapter(tiny(), tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no LoRA layers"):
        save_adapter(tiny(), tmp_path / "b", cfg)
    data = (folder / "adapter.safetensors").read_bytes()
    (folder / "adapter.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one flipped byte
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_adapter(tiny(), folder)
    (folder / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_adapter(tiny(), folder)
    (folder / "adapter.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_adapter(tiny(), folder)
    (folder / "adapter.json").unlink()
    with pytest.raises(CheckpointError, match="adapter.json' not found"):
        load_adapter(tiny(), folder)
