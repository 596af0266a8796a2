# spkemb: set-up, demo, tests. `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint docs bench clean typecheck loop

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
	$(BIN)/ruff format --check .
	$(BIN)/mypy spkemb
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: install
	$(BIN)/python -m spkemb.cli.gendocs

bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash benchmarks/run.sh

clean:
	rm -rf demo build *.egg-info .pytest_cache .ruff_cache

typecheck: install
	$(BIN)/mypy spkemb

# The pseudo-label loop on the demo's synthetic corpus (a few steps per stage; see the script for settings).
loop: install
	test -f demo/manifest.tsv || PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" ROUNDS=$${ROUNDS:-2} PRETRAIN_METHOD=$${PRETRAIN_METHOD:-cel} \
	  PRETRAIN_STEPS=$${PRETRAIN_STEPS:-60} FINETUNE_STEPS=$${FINETUNE_STEPS:-60} \
	  TRIALS=demo/trials.txt TEST=demo/manifest.tsv PT_ARGS="$${PT_ARGS:---encoder-opt channels=128}" \
	  bash examples/pseudo_label_loop.sh demo/manifest.tsv demo/loop
