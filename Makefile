# Two commands matter: `make run` (the whole stack locally) and `make test`.
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKERS ?= 1
PORT ?= 8000
export HF_HUB_OFFLINE := 1

.PHONY: install lock system-deps run test check bench eval loadtest clean

# torch is installed first, pinned, and left out of the hashed lock files: PyPI's
# torch 2.13.0 for Linux x86_64 is the CUDA build (other hashes, ~15 nvidia-* deps), so
# the lock is resolved against the CPU wheel (2.13.0+cpu, found through TORCH_FIND_LINKS)
# with `--no-emit-package torch`: torch's own deps (sympy, filelock, ...) are locked, no
# nvidia-* package is. `pip install torch==2.13.0` picks 2.13.0+cpu from pip's configured
# find-links (/opt/wheels on the dev machines); images use the PyTorch CPU index. Then
# the lock, hash-checked and --no-deps (it is complete), then the project itself.
TORCH := torch==2.13.0
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -c 'import torch; assert torch.version.cuda is None, "CUDA torch: " + torch.version.cuda'
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

# Refresh requirements/*.txt after changing dependencies in pyproject.toml (needs uv:
# `pip install uv`). Versions already locked are kept unless pyproject.toml rules them
# out; `make lock UPGRADE=--upgrade` moves everything to the newest allowed. runtime.txt
# (the images) is the dev lock's subset for the runtime deps, with the same versions.
UV ?= uv
TORCH_FIND_LINKS ?= /opt/wheels
LOCK_FLAGS = --generate-hashes --no-emit-package torch --find-links $(TORCH_FIND_LINKS) \
	--python-version 3.11.7 --python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' $(UPGRADE)
lock:
	$(UV) pip compile pyproject.toml --extra dev -o requirements/dev.txt $(LOCK_FLAGS)
	$(UV) pip compile pyproject.toml -o requirements/runtime.txt -c requirements/dev.txt $(LOCK_FLAGS)

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

# Retrieval quality (recall@10, MRR, HNSW vs exact) per EMBEDDING_BACKEND.
eval: install
	$(PY) loadtests/eval_retrieval.py

loadtest: install
	$(PY) loadtests/local_proof.py --workers $(WORKERS)

clean:
	rm -rf $(VENV) .sluice .pytest_cache
