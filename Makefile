# attnlab: `make demo` and `make test` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
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

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
