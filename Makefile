# attnlab: `make demo` and `make test` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench venv clean docs docs-check

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,serve,data,track]'
	@touch $(STAMP)

venv: $(STAMP)

DEMO_DIR := runs/demo

# The demo starts a fresh run each time (it removes $(DEMO_DIR) first).
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/attnlab train gpt-tiny train.out_dir=$(DEMO_DIR)
	@echo
	@echo "=== a sample from the trained model ==="
	$(VENV)/bin/attnlab generate $(DEMO_DIR) --prompt "ROMEO." --max-new-tokens 100 --temperature 0.8 --top-k 100 --seed 1

test: $(STAMP)
	$(PY) -m pytest

# The inner-loop tier: everything not marked slow (end-to-end training, subprocesses, browsers).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Lint is part of the build (rules in pyproject.toml's [tool.ruff]); .ci/run calls it.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

# The documentation site (mkdocs.yml) into site/: strict, so any warning (a broken link or
# anchor, an unknown API symbol, a missing page) fails the build. Open site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Re-run every tutorial chapter (its figures land in docs/tutorial/figures, the ones the pages
# show), then the strict build into a temporary folder and a parse check of every documented
# command. `make test` runs the chapters too, writing their figures to a temporary folder.
docs-check: $(STAMP)
	for f in docs/tutorial/code/ch*.py; do echo "== $$f"; $(PY) $$f || exit 1; done
	$(PY) -m pytest tests/docs

clean:
	rm -rf $(VENV) runs site .pytest_cache
