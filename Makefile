# spkemb: set-up, demo, tests. `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint docs bench clean typecheck

install: $(STAMP)

# torch 2.14.1 (a CUDA build that also runs on the CPU) and torchaudio 2.11.0 are pinned in pyproject.toml.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

docs: install
	$(BIN)/python -m spkemb.cli.gendocs

bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash benchmarks/run.sh

clean:
	rm -rf demo build *.egg-info .pytest_cache .ruff_cache

typecheck: install
	$(BIN)/mypy spkemb
