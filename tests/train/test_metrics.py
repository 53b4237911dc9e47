import json

import pytest
import torch

from attnlab import config
from attnlab.train.metrics import MetricsFile, flops_per_token, peak_flops, plot_losses


def test_flops_per_token_gpt2():
    cfg = config.load("gpt2-124m").model
    # 6 N for the matmuls + 12 L d T for attention (PaLM appendix B).
    assert flops_per_token(cfg, 1024, 124_439_808) == 6 * 124_439_808 + 12 * 12 * 768 * 1024


def test_peak_flops_unknown_on_cpu():
    assert peak_flops(torch.device("cpu")) is None


def test_metrics_truncate_and_plot(tmp_path):
    m = MetricsFile(tmp_path / "m.jsonl")
    for s in range(1, 11):
        m.write({"step": s, "loss": 10.0 - s})
        if s % 5 == 0:
            m.write({"step": s, "val_loss": 10.5 - s})
    m.truncate_after(6)
    assert [r["step"] for r in m.read()] == [1, 2, 3, 4, 5, 5, 6]
    png = plot_losses(m.read(), tmp_path / "loss.png", title="t", baseline=7.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncate_missing_file_is_noop(tmp_path):
    m = MetricsFile(tmp_path / "none.jsonl")
    m.truncate_after(3)
    assert m.read() == []
    with pytest.raises(FileNotFoundError):
        (tmp_path / "none.jsonl").read_text()


def test_mfu_is_logged_and_summarised_when_the_peak_is_known(tmp_path, tiny_cfg, monkeypatch, one_thread):
    import attnlab.train.loop as loop
    from attnlab.train import train
    from attnlab.train.metrics import flops_per_token

    peak = 1e12  # pretend FLOP/s of this CPU
    monkeypatch.setattr(loop, "peak_flops", lambda device: peak)
    cfg = tiny_cfg(tmp_path / "run", **{"train.max_steps": 3})
    summary = train(cfg, progress=False, log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "mfu" in r]
    assert len(logged) == 3
    n_params = loop.build(cfg).num_params()
    for r in logged:  # achieved model FLOP/s over the peak
        assert r["mfu"] == pytest.approx(
            flops_per_token(cfg.model, cfg.train.seq_len, n_params) * r["tokens_per_s"] / peak)
    assert summary["mfu"] == pytest.approx(logged[-1]["mfu"])
    monkeypatch.setattr(loop, "peak_flops", lambda device: None)
    assert train(tiny_cfg(tmp_path / "cpu"), progress=False, log=lambda s: None)["mfu"] is None
