"""Shared fixtures: a small corpus and a tiny, fast training config."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab import config
from attnlab.data import read_documents

# A skip whose reason says a test dependency is missing (a package, a browser, data files). In CI
# (CI=true) it is a failure, so a broken install cannot hide tests; locally it stays a skip. Skips
# for hardware or privileges (no CUDA device, no mount) are not dependencies and stay skips.
MISSING_DEPENDENCY = re.compile(r"could not import|not installed|pip install|apt-get install|npm ", re.I)


def strict_ci() -> bool:
    """True when running in CI (``CI`` is true/1/yes, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing_dependency(report) -> str | None:
    """The skip reason of ``report`` when it names a missing dependency, else None."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    if "cuda" in reason.lower() or not MISSING_DEPENDENCY.search(reason):
        return None
    return reason


def _fail_in_ci(report) -> None:
    reason = _missing_dependency(report) if strict_ci() else None
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"missing test dependency (CI=true turns this skip into a failure): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("cuda") is None:
        _fail_in_ci(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_in_ci(outcome.get_result())  # a module-level pytest.importorskip


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same random state, whatever ran before it (a failure reproduces alone).

    Tests that need randomness still seed it themselves; this covers weights initialised and
    tensors drawn without an explicit seed or generator.
    """
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """~60 kB of the embedded Shakespeare as a plain text file."""
    text = read_documents("builtin:shakespeare")[0][1][:60_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One tokenized-data cache shared by the whole session (tokenize once)."""
    return tmp_path_factory.mktemp("data-cache")


def _tiny_overrides(out_dir: Path, corpus: Path, cache: Path, **extra) -> list[str]:
    """Dotted overrides for a tiny model on the small corpus (seconds on a CPU)."""
    base = {
        "model.vocab_size": 0, "model.block_size": 64, "model.n_layer": 2, "model.n_head": 2,
        "model.d_model": 64, "data.source": str(corpus), "data.tokenizer": "bpe:512",
        "data.cache_dir": str(cache), "train.out_dir": str(out_dir), "train.batch_size": 4,
        "train.seq_len": 32, "train.max_steps": 8, "train.warmup_steps": 2, "train.lr": 3e-3,
        "train.eval_every": 0, "train.eval_batches": 2, "train.ckpt_every": 0, "train.log_every": 1,
        "train.device": "cpu", "train.threads": 1,
        # gpt-tiny's own recipe is Muon since issue 15; the tiny runs keep the AdamW one they were written for
        "train.optimizer": "adamw", "train.min_lr": 1e-4, "train.muon_lr": 0.02,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_cfg(tmp_path, small_corpus, data_cache):
    """A function building the tiny config, with extra overrides as keyword args."""

    def make(out_dir: Path | None = None, **extra):
        return config.load("gpt-tiny", _tiny_overrides(out_dir or tmp_path / "run", small_corpus, data_cache, **extra))

    return make


@pytest.fixture
def tiny_overrides(small_corpus, data_cache):
    """A function ``(out_dir, **extra) -> ["section.key=value", ...]`` for CLI runs."""
    return lambda out_dir, **extra: _tiny_overrides(out_dir, small_corpus, data_cache, **extra)


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnlab", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_cli():
    """A function running ``python -m attnlab ARGS`` in a subprocess (text output captured)."""
    return _run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_corpus, data_cache) -> Path:
    """A finished tiny training run (checkpoint + tokenizer) shared by generate/eval/CLI tests."""
    from attnlab.train import train

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = config.load("gpt-tiny", _tiny_overrides(out, small_corpus, data_cache, **{"train.max_steps": 30}))
    train(cfg, progress=False, log=lambda s: None)
    return out


@pytest.fixture
def one_line_error():
    """A check that a CLI call failed with exit code 2 and one stderr line containing ``needle``."""

    def check(capsys, code, needle):
        out = capsys.readouterr()
        assert code == 2
        lines = [line for line in out.err.splitlines() if line.strip()]
        assert len(lines) == 1, out.err
        assert "Traceback" not in out.err
        assert needle in lines[0], lines[0]
        return lines[0]

    return check


@pytest.fixture(scope="session")
def trained_archs(tmp_path_factory, small_corpus, data_cache) -> dict[str, Path]:
    """Tiny finished runs of bert-tiny (MLM) and t5-tiny (span corruption), by preset name."""
    from attnlab.train import train

    out = {}
    for preset, extra in (("bert-tiny", {}), ("t5-tiny", {"model.n_decoder_layer": 1})):
        run = tmp_path_factory.mktemp(preset) / "run"
        cfg = config.load(preset, _tiny_overrides(run, small_corpus, data_cache, **{"model.d_ff": 128, **extra}))
        train(cfg, progress=False, log=lambda s: None)
        out[preset] = run
    return out


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny ops on a shared 2-core machine only lose to contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture
def fresh_dynamo():
    """Start the test with torch.compile's graph caches empty.

    Dynamo keeps at most ``recompile_limit`` (8) graphs per function, and the suite compiles
    the same model classes in many shapes in one process; a test that counts compiles, or
    trains with ``train.compile`` (which refuses to run past the limit), must not inherit
    the graphs of the tests before it.
    """
    import torch

    torch._dynamo.reset()
    yield
