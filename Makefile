# Two commands matter: `make run` (the whole stack locally) and `make test`.
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKERS ?= 1
PORT ?= 8000
export HF_HUB_OFFLINE := 1

.PHONY: install system-deps run test check bench bench-encoder eval compare owui-proof loadtest clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/install-system-deps.sh

run: install
	$(VENV)/bin/sluice up --workers $(WORKERS) --port $(PORT)

test: install system-deps
	$(PY) -m pytest

check: install
	$(VENV)/bin/ruff check src tests loadtests
	$(VENV)/bin/mypy src

bench: install
	$(PY) loadtests/bench_pipeline.py

# The encoder alone: backend x (processes x threads), several rounds, medians, load recorded.
bench-encoder: install
	$(PY) loadtests/bench_encoder.py

# Retrieval quality (recall@10, MRR, HNSW vs exact) per EMBEDDING_BACKEND.
eval: install
	$(PY) loadtests/eval_retrieval.py

# The same burst against Open WebUI (own venv, built on first use) and Sluice; not in `make test`.
compare: install
	$(PY) loadtests/compare_owui.py $(COMPARE_ARGS)

# Open WebUI wired to Sluice through every integration point, then the burst; not in `make test`.
owui-proof: install
	$(PY) loadtests/owui_proof.py $(PROOF_ARGS)

loadtest: install
	$(PY) loadtests/local_proof.py --workers $(WORKERS)

clean:
	rm -rf $(VENV) .sluice .pytest_cache
